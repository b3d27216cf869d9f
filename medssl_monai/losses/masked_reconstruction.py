"""SparK's loss: mean squared error of per-patch-normalised pixels, over the masked patches only."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["MaskedPatchLoss", "normalise_patches"]


def normalise_patches(patches: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(normalised patches, mean, std) of patches (B, L, P), each patch to zero mean and unit variance."""
    mean = patches.mean(dim=-1, keepdim=True)
    std = (patches.var(dim=-1, keepdim=True) + eps) ** 0.5
    return (patches - mean) / std, mean, std


class MaskedPatchLoss(nn.Module):
    """``forward(prediction, target, hidden)``: predicted patches (B, L, P) in normalised-patch space, the
    input's patches (B, L, P), and (B, L) True where a patch was masked; the mean over masked patches of each
    patch's mean squared error against the normalised target."""

    def forward(self, prediction: torch.Tensor, target: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        per_patch = ((prediction - normalise_patches(target)[0]) ** 2).mean(dim=-1)  # (B, L)
        hidden = hidden.float()
        return (per_patch * hidden).sum() / hidden.sum().clamp_min(1.0)
