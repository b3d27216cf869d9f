"""DataLoader workers that give the cores back to a training step running on the same CPU.

A step on the CPU runs on every core (torch's intra-op threads), in parallel regions that wait for their slowest
thread. A loader worker at the same priority takes a core from one of those threads for a few milliseconds at a
time, and the whole region waits: on 2 cores, two workers doing about 3 % of the machine's work cost MoCo v2 about
11 % of its step rate (``docs/performance.md``). At idle priority (Linux ``SCHED_IDLE``; ``nice 19`` where the
platform has no such policy) a worker runs on the cycles the step leaves, the moments it waits for a batch
included, so loading overlaps the step without preempting its threads. On a GPU the step waits on the device and
the workers are what keeps it fed: they stay at normal priority there.
"""

from __future__ import annotations

import logging
import os

import torch
from monai.data.utils import worker_init_fn

__all__ = ["PRIORITIES", "WorkerInit", "resolve_loader_priority"]

PRIORITIES = ("auto", "idle", "normal")

logger = logging.getLogger(__name__)


def resolve_loader_priority(priority: str, device: torch.device | str) -> str:
    """The ``loader_priority`` id as ``idle`` or ``normal``: ``auto`` is ``idle`` when the step runs on the CPU."""
    choice = str(priority).strip().lower()
    if choice not in PRIORITIES:
        raise ValueError(f"loader_priority must be one of {', '.join(PRIORITIES)}, got {priority!r}")
    if choice == "auto":
        return "idle" if torch.device(device).type == "cpu" else "normal"
    return choice


def _lower_priority() -> str:
    """Put this process at the lowest CPU priority the platform offers; what it did, in words."""
    if hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_IDLE"):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        return "SCHED_IDLE"
    if hasattr(os, "nice"):
        os.nice(19 - os.nice(0))
        return "nice 19"
    return "unchanged (this platform has no way to lower it)"


class WorkerInit:
    """A DataLoader ``worker_init_fn``: MONAI's (each worker's random transforms seeded from the worker's seed),
    then the worker's CPU priority from ``priority`` (``auto``, ``idle`` or ``normal``, see the module).

    Args:
        priority: the ``loader_priority`` id.
        device: where the training step runs (``auto`` chooses from it).
    """

    def __init__(self, priority: str = "auto", device: torch.device | str = "cpu") -> None:
        self.requested = priority
        self.priority = resolve_loader_priority(priority, device)

    def __call__(self, worker_id: int) -> None:
        worker_init_fn(worker_id)
        if self.priority == "idle":
            how = _lower_priority()
            if worker_id == 0:
                logger.info(f"data loader workers at idle CPU priority ({how}; loader_priority {self.requested})")
