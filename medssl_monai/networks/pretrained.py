"""Initialising a classifier's backbone or a U-Net's encoder from a pre-trained checkpoint, whatever wrote it.

The formats (the project's own files, the reference study's published layouts) are read by
:func:`~medssl_monai.checkpoints.read_backbone`; this module loads what it finds into a network, converting
the stem between 1 and 3 input channels, and finds which ResNet a checkpoint holds.
"""

from __future__ import annotations

import logging
import os

from torch import nn

from medssl_monai.checkpoints import BackboneWeights, adapt_stem, read_backbone
from medssl_monai.networks.backbones import BACKBONES, backbone_network
from medssl_monai.networks.unet import encoder_of

__all__ = ["load_pretrained", "detect_backbone"]

logger = logging.getLogger(__name__)


def load_pretrained(network: nn.Module, path: str | os.PathLike | None, fmt: str = "auto",
                    trust_checkpoint: bool = False) -> BackboneWeights | None:
    """Load the backbone of ``path`` into ``network``: a classifier (its ``fc`` stays as initialised) or a
    ``FlexibleUNet`` (every tensor of its encoder; the decoder stays as initialised). ``None``: from scratch.

    Every backbone tensor is loaded and checked; the log says which format was read and any stem conversion.
    """
    if path is None or str(path) in ("", "None", "none"):
        logger.info("no pretrained_checkpoint: the network is trained from scratch (random initialisation)")
        return None
    net = getattr(network, "module", network)
    encoder = encoder_of(net)
    target, new = (net, "fc is new") if encoder is None else (encoder, "the decoder is new")
    weights = read_backbone(path, target, fmt, trust_checkpoint)
    state = dict(weights.state)
    state["conv1.weight"], note = adapt_stem(state["conv1.weight"], target.conv1.weight.shape[1])
    if note:
        weights.notes.append(note)
        logger.info(f"{path}: {note}")
    result = target.load_state_dict(state, strict=False)
    if result.unexpected_keys or any(not k.startswith("fc.") for k in result.missing_keys):  # guarded above
        raise RuntimeError(f"{path}: backbone load left {result.missing_keys} missing, {result.unexpected_keys} "
                           "unexpected")
    logger.info(f"loaded {len(state)} backbone tensors from {path} ({weights.format} format); {new}")
    return weights


def detect_backbone(path: str | os.PathLike, fmt: str = "auto", trust_checkpoint: bool = False,
                    spatial_dims: int = 2) -> tuple[str, int, BackboneWeights]:
    """(architecture, stem input channels, weights) of a checkpoint, trying each known ResNet (2D: torchvision's,
    3D: MONAI's)."""
    errors = []
    for name in BACKBONES:
        try:
            weights = read_backbone(path, backbone_network(name, 1, spatial_dims), fmt, trust_checkpoint)
        except ValueError as err:
            errors.append(str(err))
            continue
        return name, int(weights.state["conv1.weight"].shape[1]), weights
    raise ValueError(min(errors, key=len))
