"""Fine-tuning pieces for MONAI's SupervisedTrainer: a truly frozen backbone for the first epochs, the
optimiser with a backbone learning-rate factor, class weights, and a best-validation model that survives a
resume."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from ignite.engine import Engine, Events
from torch import nn

from medssl_monai.engines.trainer import check_finite_loss, is_main_process
from medssl_monai.utils import atomic_path

__all__ = ["finetune_optimizer", "class_weights", "BackboneFreezer", "BestModelSaver", "FiniteLossCheck"]

logger = logging.getLogger(__name__)
HEAD = "fc."


def _split(network: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(backbone, head) parameters of a torchvision-named ResNet classifier."""
    net = getattr(network, "module", network)
    backbone = [p for n, p in net.named_parameters() if not n.startswith(HEAD)]
    head = [p for n, p in net.named_parameters() if n.startswith(HEAD)]
    return backbone, head


def finetune_optimizer(network: nn.Module, lr: float = 1e-4, weight_decay: float = 5e-4,
                       backbone_lr_factor: float = 1.0) -> torch.optim.Adam:
    """Adam (the reference study's downstream optimiser) with the backbone at ``lr * backbone_lr_factor``."""
    backbone, head = _split(network)
    return torch.optim.Adam([{"params": backbone, "lr": lr * backbone_lr_factor}, {"params": head, "lr": lr}],
                            lr=lr, weight_decay=weight_decay)


def class_weights(dataset: Sequence[dict] | object, num_classes: int) -> torch.Tensor:
    """Inverse-frequency cross-entropy weights (mean 1) from the labels of a MONAI dataset's ``data``."""
    labels = torch.tensor([int(d["label"]) for d in getattr(dataset, "data", dataset)])
    counts = torch.bincount(labels, minlength=num_classes).float()
    if (counts == 0).any():
        raise ValueError(f"class weighting: classes {torch.nonzero(counts == 0).view(-1).tolist()} have no "
                         "training samples")
    weights = counts.sum() / (num_classes * counts)
    return weights / weights.mean()


class BackboneFreezer:
    """Freeze everything but ``fc`` for the first ``freeze_epochs`` epochs, then train it all.

    Frozen means unchanged: the backbone's parameters get no gradient (so Adam neither steps nor decays them)
    and its batch norms run in eval mode (running statistics neither used from the batch nor updated), even
    though MONAI's trainer puts the network in train mode every iteration. Decided at every epoch start, so a
    resumed run lands in the right phase.
    """

    def __init__(self, network: nn.Module, freeze_epochs: int = 10) -> None:
        self.network, self.freeze_epochs = getattr(network, "module", network), freeze_epochs
        self.frozen: bool | None = None  # not decided yet
        self._hooks: list = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        freeze = engine.state.epoch <= self.freeze_epochs
        if freeze == self.frozen:
            return
        self.frozen = freeze
        backbone, _ = _split(self.network)
        for p in backbone:
            p.requires_grad_(not freeze)
        if freeze:
            norms = [m for n, m in self.network.named_modules()
                     if isinstance(m, nn.modules.batchnorm._BatchNorm) and not n.startswith(HEAD)]
            self._hooks = [m.register_forward_pre_hook(lambda module, _: setattr(module, "training", False))
                           for m in norms]
        else:
            for hook in self._hooks:
                hook.remove()
            self._hooks = []
        logger.info(f"epoch {engine.state.epoch}: backbone {'frozen' if freeze else 'trained'}")


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


class FiniteLossCheck:
    """Stop fine-tuning with an error naming the epoch and iteration when the loss is NaN or infinite, as
    pre-training does. Reads the loss of MONAI's ``SupervisedTrainer`` output (decollated or not)."""

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        output = engine.state.output
        loss = (output[0] if isinstance(output, list) else output)["loss"]
        check_finite_loss(loss, engine.state.epoch, engine.state.iteration)
