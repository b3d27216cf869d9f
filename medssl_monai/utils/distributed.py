"""torch.distributed helpers that work the same in a single process: rank checks and gathers."""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["is_main_process", "world_size", "gather"]


def world_size() -> int:
    """Processes in the torch.distributed group (1 without one)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    """True on rank 0 of a distributed run, and always in a single process."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


@torch.no_grad()
def gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (B, ...) from every rank along dim 0, in rank order (no gradient); ``x`` alone in one
    process."""
    if world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)
