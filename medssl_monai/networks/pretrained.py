"""Initialising a classifier's backbone from a pre-trained checkpoint, whatever wrote it.

Reads the project's own files (``encoder.pt``, release layouts, training checkpoints) and the four layouts of
the reference study's published checkpoints (SparK ``{"module": sd}``; MoCo v2, BYOL and SwAV Lightning
``.ckpt`` files with ``state_dict`` and the prefixes ``encoder_q.``, ``online_network.encoder.``, ``model.``).
Wrappers and prefixes are stripped, projection heads dropped, and every backbone tensor must be found with
its shape: a mismatch stops with the missing and unexpected keys and the formats tried, never a silent
``strict=False``. A 3-channel stem initialises a 1-channel network by summing over input channels, a
1-channel stem a 3-channel network by replicating and dividing by 3 (the same function of a grey image).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import torch
from torch import nn

from medssl_monai.engines.checkpoint import load_checkpoint
from medssl_monai.networks.backbones import BACKBONES, adapt_stem, resnet

__all__ = ["FORMATS", "BackboneWeights", "read_backbone", "load_pretrained", "detect_backbone"]

logger = logging.getLogger(__name__)

# prefixes under which each format keeps the backbone, tried in order ("" = none)
FORMATS: dict[str, tuple[str, ...]] = {
    "medssl": ("",),  # training checkpoints name their own prefix; encoder.pt is the torchvision layout
    "torchvision": ("",),
    "spark": ("", "model.", "module."),
    "moco": ("encoder_q.",),
    "byol": ("online_network.encoder.",),
    "swav": ("model.",),
}
# what follows the prefix but is not the backbone: classifier and projection heads, prototypes
HEADS = ("fc.", "projection_head.", "prototypes.", "head.")


@dataclass
class BackboneWeights:
    """A backbone state_dict (torchvision names, no heads) and where it came from."""

    state: dict[str, torch.Tensor]
    format: str
    source: str
    notes: list[str] = field(default_factory=list)


# the order in which ``auto`` tries the formats, by the wrapper the file has
AUTO_ORDER = {
    "network": ("medssl",),
    "state_dict": ("moco", "byol", "swav", "spark", "torchvision"),
    "module": ("spark", "torchvision"),
    "model": ("spark", "torchvision"),
    None: ("torchvision", "spark", "moco", "byol", "swav"),
}


def _unwrap(ckpt: dict, path: str) -> tuple[dict, str | None, str | None]:
    """(flat state_dict, the prefix it declares or None, its wrapper key or None)."""
    if "network" in ckpt and "info" in ckpt:  # a medssl-monai training checkpoint
        return ckpt["network"], ckpt["info"].get("backbone_prefix"), "network"
    for wrapper in ("state_dict", "module", "model"):
        if isinstance(ckpt.get(wrapper), dict):
            return ckpt[wrapper], None, wrapper
    if ckpt and all(torch.is_tensor(v) for v in ckpt.values()):
        return ckpt, None, None
    raise ValueError(f"{path}: not a state_dict and no known wrapper (state_dict, module, model, network); "
                     f"top-level keys: {', '.join(map(str, list(ckpt)[:10]))}")


def _strip(state: dict, prefix: str) -> dict[str, torch.Tensor]:
    state = {k.removeprefix("module."): v for k, v in state.items()}  # DDP
    out = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix) and torch.is_tensor(v)}
    return {k: v for k, v in out.items() if not k.startswith(HEADS)}


def _mismatch(candidate: dict, target: dict) -> tuple[list[str], list[str], list[str]]:
    """(missing, unexpected, wrong shape) of a candidate backbone against the target's backbone keys."""
    missing = sorted(set(target) - set(candidate))
    unexpected = sorted(set(candidate) - set(target))
    shapes = sorted(k for k in set(candidate) & set(target)
                    if k != "conv1.weight" and candidate[k].shape != target[k].shape)
    return missing, unexpected, shapes


def _backbone_keys(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}


def read_backbone(path: str | os.PathLike, target: nn.Module, fmt: str = "auto",
                  trust_checkpoint: bool = False) -> BackboneWeights:
    """Find ``target``'s backbone tensors in the checkpoint at ``path``.

    Args:
        target: a torchvision-named ResNet (torchvision's or MONAI's ``ResNet`` with a stride-2 stem).
        fmt: ``auto`` or one of :data:`FORMATS`.
    Raises:
        ValueError: naming the file, the formats tried and, for the closest one, the missing, unexpected and
            wrongly shaped keys.
    """
    if fmt != "auto" and fmt not in FORMATS:
        raise ValueError(f"unknown pretrained_format {fmt!r}; expected auto or one of {', '.join(FORMATS)}")
    ckpt = load_checkpoint(path, trust_checkpoint)
    state, declared, wrapper = _unwrap(ckpt, str(path))
    wanted = _backbone_keys(target)
    tried, best = [], None
    for name in AUTO_ORDER[wrapper] if fmt == "auto" else (fmt,):
        prefixes = (declared,) if declared is not None and name == "medssl" else FORMATS[name]
        for prefix in prefixes:
            candidate = _strip(state, prefix)
            missing, unexpected, shapes = _mismatch(candidate, wanted)
            tried.append(f"{name} (prefix {prefix!r})")
            if candidate and not (missing or unexpected or shapes):
                return BackboneWeights(candidate, name, str(path))
            score = len(missing) + len(unexpected) + len(shapes)
            if candidate and (best is None or score < best[0]):
                best = (score, name, prefix, missing, unexpected, shapes)
    roots = sorted({k.split(".")[0] + ("." if "." in k else "") for k in state})
    detail = f"no backbone tensors under those prefixes; the file's keys begin with {', '.join(roots[:8])}"
    if best is not None:
        _, name, prefix, missing, unexpected, shapes = best
        detail = (f"closest: {name} (prefix {prefix!r}) with {len(missing)} missing keys {missing[:6]}, "
                  f"{len(unexpected)} unexpected keys {unexpected[:6]}, wrong shapes {shapes[:6]}")
    raise ValueError(f"{path}: cannot initialise the backbone; tried {', '.join(tried)}; {detail}. Check the "
                     "backbone id (resnet18/34/50) and pretrained_format")


def load_pretrained(network: nn.Module, path: str | os.PathLike | None, fmt: str = "auto",
                    trust_checkpoint: bool = False) -> BackboneWeights | None:
    """Load the backbone of ``path`` into ``network`` (its ``fc`` stays as initialised); ``None``: from scratch.

    Every backbone tensor is loaded and checked; the log says which format was read and any stem conversion.
    """
    if path is None or str(path) in ("", "None", "none"):
        logger.info("no pretrained_checkpoint: the classifier is trained from scratch (random initialisation)")
        return None
    net = getattr(network, "module", network)
    weights = read_backbone(path, net, fmt, trust_checkpoint)
    state = dict(weights.state)
    state["conv1.weight"], note = adapt_stem(state["conv1.weight"], net.conv1.weight.shape[1])
    if note:
        weights.notes.append(note)
        logger.info(f"{path}: {note}")
    result = net.load_state_dict(state, strict=False)
    if result.unexpected_keys or any(not k.startswith("fc.") for k in result.missing_keys):  # guarded above
        raise RuntimeError(f"{path}: backbone load left {result.missing_keys} missing, {result.unexpected_keys} "
                           "unexpected")
    logger.info(f"loaded {len(state)} backbone tensors from {path} ({weights.format} format); fc is new")
    return weights


def detect_backbone(path: str | os.PathLike, fmt: str = "auto",
                    trust_checkpoint: bool = False) -> tuple[str, int, BackboneWeights]:
    """(architecture, stem input channels, weights) of a checkpoint, trying each known ResNet."""
    errors = []
    for name in BACKBONES:
        try:
            weights = read_backbone(path, resnet(name), fmt, trust_checkpoint)
        except ValueError as err:
            errors.append(str(err))
            continue
        return name, int(weights.state["conv1.weight"].shape[1]), weights
    raise ValueError(min(errors, key=len))
