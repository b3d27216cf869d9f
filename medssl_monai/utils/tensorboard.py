"""The one TensorBoard writer of a run, shared by every handler that logs to TensorBoard.

Rank 0 gets a ``SummaryWriter``; the other ranks of a distributed run get a writer that discards everything,
so handlers can be attached on every rank and a run still has one event file.
"""

from __future__ import annotations

import os
from typing import Any

from medssl_monai.utils.distributed import is_main_process

__all__ = ["DiscardingWriter", "summary_writer"]


class DiscardingWriter:
    """A stand-in for ``SummaryWriter`` on ranks other than 0: every method accepts anything and does nothing."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return lambda *args, **kwargs: None


def summary_writer(log_dir: str | os.PathLike) -> Any:
    """``SummaryWriter(log_dir)`` on rank 0, a :class:`DiscardingWriter` elsewhere."""
    if not is_main_process():
        return DiscardingWriter()
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(log_dir))
