"""Encoder export: the pre-trained backbone as a plain torchvision state_dict, or in a method's release layout.

``torchvision``: ``{name: tensor}`` that ``torchvision.models.resnet50().load_state_dict(sd, strict=False)``
accepts with only ``fc.weight`` and ``fc.bias`` missing, with a stock 3-channel stem whatever ``in_channels``
the run used: a 1-channel stem becomes three copies of the grey filter / 3, so a grey slice copied to 3
channels gives the same features. The end of a run writes it as ``encoder.pt`` and ``encoder.safetensors``
(the format model hubs expect), and the native 1-channel stem as ``encoder_1ch.pt``. The release layouts of the reference study's
checkpoints, for the authors' downstream code and other tools that read them: ``spark``
``{"module": state_dict}``; ``moco``, ``byol`` and ``swav`` ``{"state_dict": {prefix + name: tensor}}`` with the
prefixes ``encoder_q.``, ``online_network.encoder.`` and ``model.`` of their Lightning checkpoints.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from ignite.engine import Engine, Events
from torch import nn

from medssl_monai.engines.checkpoint import load_checkpoint
from medssl_monai.engines.trainer import is_main_process
from medssl_monai.networks.backbones import adapt_stem
from medssl_monai.utils import atomic_path

__all__ = ["LAYOUTS", "ENCODER_FILES", "backbone_state_dict", "save_encoder", "export_encoder", "EncoderExporter",
           "RunInfo"]

RELEASE_PREFIXES = {"moco": "encoder_q.", "byol": "online_network.encoder.", "swav": "model."}
LAYOUTS = ("torchvision", "spark", *RELEASE_PREFIXES)
# the stock-network files of a run: name -> stem input channels
ENCODER_FILES = {"encoder.pt": 3, "encoder.safetensors": 3, "encoder_1ch.pt": 1}


class RunInfo:
    """What a checkpoint was trained as (method, backbone, in_channels, backbone_prefix), saved beside it."""

    def __init__(self, **info: object) -> None:
        self.info = dict(info)

    def state_dict(self) -> dict:
        return dict(self.info)

    def load_state_dict(self, state: dict) -> None:
        self.info.update(state)


def backbone_state_dict(network_state: dict, prefix: str) -> dict[str, torch.Tensor]:
    """The tensors of ``network_state`` under ``prefix``, renamed to torchvision's names (no ``fc``)."""
    network_state = {k.removeprefix("module."): v for k, v in network_state.items()}  # DDP's wrapper
    sd = {k[len(prefix):]: v for k, v in network_state.items() if k.startswith(prefix)}
    if not sd:
        raise ValueError(f"no backbone tensors under prefix {prefix!r}")
    return {k: v for k, v in sd.items() if not k.startswith("fc.")}


def save_encoder(state: dict[str, torch.Tensor], out: str | os.PathLike, layout: str = "torchvision",
                 in_channels: int | None = None) -> Path:
    """Write a backbone state_dict in ``layout``, atomically.

    ``in_channels`` converts the stem (see :func:`~medssl_monai.networks.backbones.adapt_stem`); ``None`` keeps
    it. A ``.safetensors`` file name writes safetensors (torchvision layout only), anything else ``torch.save``.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
    if in_channels is not None:
        state = {**state, "conv1.weight": adapt_stem(state["conv1.weight"], in_channels)[0]}
    if Path(out).suffix == ".safetensors":
        if layout != "torchvision":
            raise ValueError(f"{out}: safetensors holds a flat state_dict, the torchvision layout, not {layout!r}")
        from safetensors.torch import save_file

        with atomic_path(out) as tmp:
            save_file({k: v.detach().contiguous().clone() for k, v in state.items()}, str(tmp),
                      metadata={"format": "pt"})
        return Path(out)
    if layout == "torchvision":
        payload = state
    elif layout == "spark":
        payload = {"module": state}
    else:
        payload = {"state_dict": {RELEASE_PREFIXES[layout] + k: v for k, v in state.items()}}
    with atomic_path(out) as tmp:
        torch.save(payload, tmp)
    return Path(out)


def export_encoder(checkpoint: str | os.PathLike, out: str | os.PathLike, layout: str = "torchvision",
                   in_channels: int | None = None) -> Path:
    """Export the backbone of a saved training checkpoint (``checkpoint_<iteration>.pt``); ``in_channels`` as
    in :func:`save_encoder`."""
    ckpt = load_checkpoint(checkpoint)
    if "network" not in ckpt or "info" not in ckpt:
        raise ValueError(f"{checkpoint}: not a medssl-monai training checkpoint (needs 'network' and 'info', "
                         f"has {', '.join(map(str, ckpt)) or 'nothing'})")
    state = backbone_state_dict(ckpt["network"], ckpt["info"]["backbone_prefix"])
    return save_encoder(state, out, layout, in_channels)


class EncoderExporter:
    """At the end of training, write the stock-network files (:data:`ENCODER_FILES`: ``encoder.pt`` and
    ``encoder.safetensors`` with a 3-channel stem, ``encoder_1ch.pt``) and the release layouts beside them
    (``encoder_<layout>.pth``, with the stem the run trained).

    Args:
        network: the method (its backbone lives under ``prefix``).
        out_dir: folder of the encoder files.
        prefix: the backbone's prefix in ``network.state_dict()``.
        layouts: release layouts written besides ``encoder.pt``.
    """

    def __init__(self, network: nn.Module, out_dir: str | os.PathLike, prefix: str, layouts: tuple = ("spark",)):
        self.network, self.out_dir, self.prefix, self.layouts = network, Path(out_dir), prefix, layouts

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if not is_main_process():
            return
        state = backbone_state_dict(self.network.state_dict(), self.prefix)
        for name, channels in ENCODER_FILES.items():
            save_encoder(state, self.out_dir / name, in_channels=channels)
        for layout in self.layouts:
            save_encoder(state, self.out_dir / f"encoder_{layout}.pth", layout)
