"""Resuming a run from its latest training checkpoint, only when the checkpoint is this run's.

A checkpoint's ``identity`` entry (a :class:`~medssl_monai.utils.identity.RunIdentity`) says which run wrote
it; a resume with other settings is refused before anything is loaded.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint

from medssl_monai.checkpoints import latest_checkpoint, load_checkpoint, training_checkpoints
from medssl_monai.utils.identity import RunIdentity
from medssl_monai.utils.options import as_bool

__all__ = ["ResumeFromCheckpoint"]

logger = logging.getLogger(__name__)


class ResumeFromCheckpoint:
    """At start, restore ``load_dict`` from ``path``, or from the latest checkpoint in ``ckpt_dir``, when the
    checkpoint is this run's.

    Args:
        ckpt_dir: searched when ``path`` is not given; nothing to resume is fine (a fresh run).
        load_dict: as the writer's ``save_dict``; its ``identity`` is compared with the checkpoint's first, and a
            difference stops with :class:`~medssl_monai.utils.identity.RunMismatchError`.
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
        old = training_checkpoints(self.ckpt_dir)
        for p in old:
            p.unlink(missing_ok=True)  # every rank of a distributed run does this
        if old:
            logger.info(f"resume false: starting over; removed {len(old)} old checkpoint(s) from {self.ckpt_dir}: "
                        + ", ".join(p.name for p in old))
