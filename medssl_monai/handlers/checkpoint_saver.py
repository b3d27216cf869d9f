"""Writing the project's training checkpoint (see :mod:`medssl_monai.checkpoints`) atomically, at an interval
and at the end of a run, keeping ``n_saved`` of them across restarts."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver

from medssl_monai.checkpoints import TRAINING_CHECKPOINT_PREFIX, training_checkpoints
from medssl_monai.utils.distributed import is_main_process

__all__ = ["CheckpointWriter"]

logger = logging.getLogger(__name__)


class CheckpointWriter:
    """Write ``checkpoint_<iteration>.pt`` every ``interval`` iterations (or epochs) and at the end, keeping
    ``n_saved``.

    Ignite's ``n_saved`` counts only the files this process wrote; a run killed and started again would leave
    one more checkpoint per restart. So once a new checkpoint is on disk (written atomically), the older
    training checkpoints in ``ckpt_dir`` beyond the newest ``n_saved`` are removed: they belong to this run
    (a resume refuses a folder holding another run's), and the one a resume started from is only removed after
    a newer one exists.

    Args:
        ckpt_dir: output folder (created).
        save_dict: name -> object with ``state_dict``; include the trainer as ``trainer`` and the run's
            :class:`~medssl_monai.utils.identity.RunIdentity` as ``identity``.
        interval: iterations between checkpoints, or epochs with ``epoch_level``; 0 writes none (for runs
            cheaper to redo than to save, such as the study's short fine-tuning runs).
        epoch_level: save at the end of every ``interval`` epochs, after the handlers attached before this one
            (validation and best-model bookkeeping), so a resume restores them as they were.
    """

    def __init__(self, ckpt_dir: str | os.PathLike, save_dict: Mapping, interval: int = 100, n_saved: int = 2,
                 epoch_level: bool = False) -> None:
        self.ckpt_dir, self.n_saved = ckpt_dir, n_saved
        self.interval, self.epoch_level = interval, epoch_level
        self.checkpoint = Checkpoint(
            dict(save_dict), DiskSaver(ckpt_dir, atomic=True, require_empty=False),
            filename_prefix=TRAINING_CHECKPOINT_PREFIX, n_saved=n_saved,
            global_step_transform=lambda engine, _: engine.state.iteration, filename_pattern="{filename_prefix}_{global_step}.{ext}",
        )

    def attach(self, engine: Engine) -> None:
        if self.interval <= 0:
            logger.info("no training checkpoints (interval 0): a killed run starts over")
            return
        if is_main_process():
            self._remove_partial_writes()
        every = (Events.EPOCH_COMPLETED if self.epoch_level else Events.ITERATION_COMPLETED)(every=self.interval)
        engine.add_event_handler(every | Events.COMPLETED, self._save)

    def _remove_partial_writes(self) -> None:
        """Delete the temporary files of writes a killed process left (ignite's atomic ``DiskSaver`` writes
        ``tmp*`` in ``ckpt_dir``, then renames): up to a whole checkpoint each, never to be completed."""
        folder = Path(self.ckpt_dir)
        partial = [p for p in folder.glob("tmp*") if p.is_file()] if folder.is_dir() else []
        for path in partial:
            path.unlink(missing_ok=True)
        if partial:
            logger.info(f"removed {len(partial)} partly written checkpoint file(s) of a killed run from {folder}")

    def _save(self, engine: Engine) -> None:
        last = self.checkpoint.last_checkpoint
        if last is not None and Path(str(last)).name == f"{TRAINING_CHECKPOINT_PREFIX}_{engine.state.iteration}.pt":
            return  # COMPLETED right after an interval save: that state is already written
        self.checkpoint(engine)
        if is_main_process():  # the rank that writes
            for old in training_checkpoints(self.ckpt_dir)[:-self.n_saved]:
                old.unlink(missing_ok=True)
