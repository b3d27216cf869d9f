"""Writing a pre-training run's encoder for other people's networks when it finishes (see
:func:`~medssl_monai.checkpoints.write_encoder_files`)."""

from __future__ import annotations

import os
from pathlib import Path

from ignite.engine import Engine, Events
from torch import nn

from medssl_monai.checkpoints import write_encoder_files
from medssl_monai.utils.distributed import is_main_process

__all__ = ["EncoderExporter"]


class EncoderExporter:
    """At the end of training, write ``encoder.pt``, ``encoder.safetensors`` (3-channel stem),
    ``encoder_1ch.pt`` and the release layouts ``encoder_<layout>.pth`` (with the stem the run trained); for a
    3D run ``encoder.pt`` and ``encoder.safetensors`` for MONAI's 3D ResNet.

    Args:
        network: the method (DDP-wrapped or not).
        out_dir: folder of the encoder files.
        method: which method it is (:mod:`~medssl_monai.checkpoints` knows where each keeps its backbone).
        layouts: release layouts written besides ``encoder.pt`` (2D only).
    """

    def __init__(self, network: nn.Module, out_dir: str | os.PathLike, method: str, layouts: tuple = ()) -> None:
        self.network, self.out_dir, self.method, self.layouts = network, Path(out_dir), method, tuple(layouts)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if is_main_process():
            write_encoder_files(self.network.state_dict(), self.method, self.out_dir, self.layouts)
