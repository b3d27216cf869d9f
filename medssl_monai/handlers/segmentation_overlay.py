"""TensorBoard pictures of a segmentation's validation: image, label and prediction of one volume per epoch."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

from medssl_monai.evaluation.plots import axial_overlay

__all__ = ["SegmentationOverlay"]


def _classes(volume: torch.Tensor) -> np.ndarray:
    """(X, Y, Z) class indices of a one-hot (K, X, Y, Z) or index (1, X, Y, Z) volume."""
    volume = torch.as_tensor(volume).detach().cpu()
    return (volume.argmax(0) if volume.shape[0] > 1 else volume[0]).numpy()


class SegmentationOverlay:
    """After the first validation batch of each run, log ``tag``: the middle axial slice of its first volume
    with the label (left) and the prediction (right) in colour, at the trainer's epoch.

    Attach to a validation evaluator whose postprocessed output items hold ``image`` (C, X, Y, Z), ``label``
    and ``pred`` (one-hot or class indices).
    """

    def __init__(self, summary_writer: Any, num_classes: int, tag: str = "val_overlay") -> None:
        self.writer, self.num_classes, self.tag = summary_writer, int(num_classes), tag

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED(once=1), self)

    def __call__(self, engine: Engine) -> None:
        item = engine.state.output[0]
        image = torch.as_tensor(item["image"])[0].detach().cpu().numpy()  # (X, Y, Z) in [0, 1]
        panels = [axial_overlay(image, _classes(item[key]), self.num_classes) for key in ("label", "pred")]
        self.writer.add_image(self.tag, np.concatenate(panels, axis=1), engine.state.epoch, dataformats="HWC")
