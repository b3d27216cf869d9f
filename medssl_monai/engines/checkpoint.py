"""The project's one checkpoint format, and the handlers that write it and resume from it.

A training checkpoint is ``checkpoint_<iteration>.pt`` holding the state_dicts of everything a resume needs
(``network``, ``optimizer``, ``trainer`` with epoch and iteration, ``scaler``, ``rng``, and each method's own
buffers inside ``network``), written atomically by ignite's DiskSaver. It holds tensors, numbers and lists
only, so it loads with ``torch.load(weights_only=True)``. Its ``identity`` entry (a
:class:`~medssl_monai.engines.identity.RunIdentity`) says which run wrote it; a resume with other settings is
refused before anything is loaded.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver

from medssl_monai.engines.identity import RunIdentity
from medssl_monai.utils import as_bool

__all__ = ["CheckpointWriter", "ResumeFromCheckpoint", "latest_checkpoint", "load_checkpoint"]

_NAME = re.compile(r"^checkpoint_(\d+)\.pt$")
logger = logging.getLogger(__name__)


def latest_checkpoint(ckpt_dir: str | os.PathLike) -> Path | None:
    """The training checkpoint of the highest iteration in ``ckpt_dir``, or None."""
    found = [(int(m.group(1)), p) for p in Path(ckpt_dir).glob("checkpoint_*.pt") if (m := _NAME.match(p.name))]
    return max(found)[1] if found else None


def load_checkpoint(path: str | os.PathLike, trust_checkpoint: bool = False, map_location: str = "cpu") -> dict:
    """Load a checkpoint file; arbitrary pickles only with ``trust_checkpoint=True``. A ``.safetensors`` file
    (tensors only, nothing to unpickle) is read with safetensors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(path, device=map_location)
        except Exception as err:
            raise ValueError(f"{path}: not a readable safetensors file ({type(err).__name__}: {err})") from None
    try:
        return torch.load(path, map_location=map_location, weights_only=not trust_checkpoint)
    except Exception as err:
        if not trust_checkpoint and "This file can still be loaded" in str(err):  # torch: a disallowed global
            raise ValueError(
                f"{path}: holds Python objects beyond tensors and plain containers; load it only if you trust its "
                "source, with trust_checkpoint=True"
            ) from None
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({type(err).__name__}: {err})") from None


class CheckpointWriter:
    """Write ``checkpoint_<iteration>.pt`` every ``interval`` iterations (or epochs) and at the end, keeping
    ``n_saved``.

    Args:
        ckpt_dir: output folder (created).
        save_dict: name -> object with ``state_dict``; include the trainer as ``trainer`` and the run's
            :class:`~medssl_monai.engines.identity.RunIdentity` as ``identity``.
        interval: iterations between checkpoints, or epochs with ``epoch_level``.
        epoch_level: save at the end of every ``interval`` epochs, after the handlers attached before this one
            (validation and best-model bookkeeping), so a resume restores them as they were.
    """

    def __init__(self, ckpt_dir: str | os.PathLike, save_dict: Mapping, interval: int = 100, n_saved: int = 2,
                 epoch_level: bool = False) -> None:
        self.interval, self.epoch_level = interval, epoch_level
        self.checkpoint = Checkpoint(
            dict(save_dict), DiskSaver(ckpt_dir, atomic=True, require_empty=False), filename_prefix="checkpoint",
            n_saved=n_saved, global_step_transform=lambda engine, _: engine.state.iteration,
            filename_pattern="{filename_prefix}_{global_step}.{ext}",
        )

    def attach(self, engine: Engine) -> None:
        every = (Events.EPOCH_COMPLETED if self.epoch_level else Events.ITERATION_COMPLETED)(every=self.interval)
        engine.add_event_handler(every | Events.COMPLETED, self._save)

    def _save(self, engine: Engine) -> None:
        last = self.checkpoint.last_checkpoint
        if last is not None and Path(str(last)).name == f"checkpoint_{engine.state.iteration}.pt":
            return  # COMPLETED right after an interval save: that state is already written
        self.checkpoint(engine)


class ResumeFromCheckpoint:
    """At start, restore ``load_dict`` from ``path``, or from the latest checkpoint in ``ckpt_dir``, when the
    checkpoint is this run's.

    Args:
        ckpt_dir: searched when ``path`` is not given; nothing to resume is fine (a fresh run).
        load_dict: as the writer's ``save_dict``; its ``identity`` is compared with the checkpoint's first, and a
            difference stops with :class:`~medssl_monai.engines.identity.RunMismatchError`.
        path: an explicit checkpoint; it must exist.
        enabled: ``False`` starts over: the training checkpoints in ``ckpt_dir`` are removed (and listed).
        trust_checkpoint: allow arbitrary pickles (see :func:`load_checkpoint`).
    """

    def __init__(
        self,
        ckpt_dir: str | os.PathLike,
        load_dict: Mapping,
        path: str | os.PathLike | None = None,
        enabled: bool = True,
        trust_checkpoint: bool = False,
    ) -> None:
        self.ckpt_dir, self.load_dict, self.path = ckpt_dir, dict(load_dict), path
        self.enabled, self.trust = as_bool(enabled, "resume"), as_bool(trust_checkpoint, "trust_checkpoint")

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        if not self.enabled:
            self._start_over()
            return
        path = self.path or latest_checkpoint(self.ckpt_dir)
        if path is None:
            return
        checkpoint = load_checkpoint(path, self.trust)
        identity = self.load_dict.get("identity")
        if isinstance(identity, RunIdentity):
            identity.check(checkpoint.get("identity"), f"checkpoint {path}")
        missing = [k for k in self.load_dict if k not in checkpoint]
        if missing:
            raise ValueError(f"{path}: not a training checkpoint of this method, missing {', '.join(missing)}")
        max_epochs = engine.state.max_epochs
        Checkpoint.load_objects(to_load=self.load_dict, checkpoint=checkpoint)
        state = engine.state
        state.max_epochs = max_epochs  # equal under a run identity; without one, the new run's length wins
        if state.iteration >= state.max_epochs * state.epoch_length:
            logger.info(f"this run is already finished ({path}: epoch {state.epoch}/{state.max_epochs}, iteration "
                        f"{state.iteration}): nothing left to train; --resume false trains it again from scratch")
        else:
            logger.info(f"resumed from {path} at epoch {state.epoch}, iteration {state.iteration}")

    def _start_over(self) -> None:
        """Remove this folder's training checkpoints, so that a later resume cannot pick up the old run."""
        old = sorted(Path(self.ckpt_dir).glob("checkpoint_*.pt"))
        for p in old:
            p.unlink(missing_ok=True)  # every rank of a distributed run does this
        if old:
            logger.info(f"resume false: starting over; removed {len(old)} old checkpoint(s) from {self.ckpt_dir}: "
                        + ", ".join(p.name for p in old))
