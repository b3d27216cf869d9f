"""Inverse-frequency class weights for the fine-tuning cross-entropy, from a labelled dataset."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["class_weights"]


def class_weights(dataset: Sequence[dict] | object, num_classes: int) -> torch.Tensor:
    """Inverse-frequency cross-entropy weights (mean 1) from the labels of a MONAI dataset's ``data``."""
    labels = torch.tensor([int(d["label"]) for d in getattr(dataset, "data", dataset)])
    counts = torch.bincount(labels, minlength=num_classes).float()
    if (counts == 0).any():
        raise ValueError(f"class weighting: classes {torch.nonzero(counts == 0).view(-1).tolist()} have no "
                         "training samples")
    weights = counts.sum() / (num_classes * counts)
    return weights / weights.mean()
