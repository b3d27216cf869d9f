"""Fine-tuning with a truly frozen backbone for the first epochs (warm-up of the new head or decoder)."""

from __future__ import annotations

import logging

from ignite.engine import Engine, Events
from torch import nn

from medssl_monai.networks.backbones import in_backbone, split_backbone_head

__all__ = ["BackboneFreezer"]

logger = logging.getLogger(__name__)


class BackboneFreezer:
    """Freeze the pre-trained backbone (all but a classifier's ``fc``, a U-Net's encoder) for the first
    ``freeze_epochs`` epochs, then train it all.

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
        backbone, _ = split_backbone_head(self.network)
        for p in backbone:
            p.requires_grad_(not freeze)
        if freeze:
            norms = [m for n, m in self.network.named_modules()
                     if isinstance(m, nn.modules.batchnorm._BatchNorm) and in_backbone(self.network, n)]
            self._hooks = [m.register_forward_pre_hook(lambda module, _: setattr(module, "training", False))
                           for m in norms]
        else:
            for hook in self._hooks:
                hook.remove()
            self._hooks = []
        logger.info(f"epoch {engine.state.epoch}: backbone {'frozen' if freeze else 'trained'}")
