"""The best-validation model of a fine-tuning run, written whenever the metric improves, surviving a resume."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from ignite.engine import Engine, Events
from torch import nn

from medssl_monai.utils.distributed import is_main_process
from medssl_monai.utils.files import atomic_path

__all__ = ["BestModelSaver"]

logger = logging.getLogger(__name__)


class BestModelSaver:
    """Write the network's state_dict to ``path`` (atomically) whenever the validation ``metric`` improves.

    Attach to the validation evaluator. Its best value is part of the training checkpoint (``state_dict``),
    so a resumed run only replaces ``model.pt`` with something better.
    """

    def __init__(self, network: nn.Module, path: str | os.PathLike, metric: str = "val_auc") -> None:
        self.network, self.path, self.metric = getattr(network, "module", network), Path(path), metric
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
            logger.info(f"new best {self.metric} {value:.4f}: saved {self.path}")

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_epoch = float(state["best"]), int(state["best_epoch"])
