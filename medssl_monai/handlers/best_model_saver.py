"""The best-validation model of a fine-tuning run, written whenever the metric improves, surviving a resume.

Beside ``model.pt`` it writes ``model.json``: the settings the model was trained with (network, input size,
window, encoding, class names) and the metric that chose it, so that inference and MONAI Label serve the model
as it was trained, not with the bundle's defaults.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from torch import nn

from medssl_monai.utils.distributed import is_main_process
from medssl_monai.utils.files import atomic_path, write_json

__all__ = ["BestModelSaver"]

logger = logging.getLogger(__name__)


class BestModelSaver:
    """Write the network's state_dict to ``path`` (atomically) whenever the validation ``metric`` improves.

    Attach to the validation evaluator. Its best value is part of the training checkpoint (``state_dict``),
    so a resumed run only replaces ``model.pt`` with something better.

    Args:
        settings: the ids inference needs to use the model as trained (``backbone``, ``image_size``,
            ``in_channels``, ``window``, ``encoding``, ``class_names``), written with the metric to ``path``
            with the suffix ``.json`` each time the model is.
    """

    def __init__(self, network: nn.Module, path: str | os.PathLike, metric: str = "val_auc",
                 settings: Mapping[str, Any] | None = None) -> None:
        self.network, self.path, self.metric = getattr(network, "module", network), Path(path), metric
        self.settings = dict(settings or {})
        self.best, self.best_epoch = float("-inf"), 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        value = float(engine.state.metrics[self.metric])
        if not value > self.best:
            return
        self.best, self.best_epoch = value, int(engine.state.epoch)  # the evaluator runs at the trainer's epoch
        if is_main_process():
            with atomic_path(self.path) as tmp:
                torch.save(self.network.state_dict(), tmp)
            write_json(self.path.with_suffix(".json"), {"settings": self.settings, "metric": self.metric,
                                                        "value": value, "epoch": self.best_epoch})
            logger.info(f"new best {self.metric} {value:.4f}: saved {self.path}")

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_epoch = float(state["best"]), int(state["best_epoch"])
