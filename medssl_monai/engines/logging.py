"""Progress on the console and in TensorBoard: loss, lr, images/s, and image grids of what the method sees."""

from __future__ import annotations

import os
import time

import torch
from ignite.handlers import ProgressBar
from ignite.engine import Engine, Events

from medssl_monai.engines.trainer import is_main_process

__all__ = ["TrainingLogger"]


class TrainingLogger:
    """Attach a tqdm progress bar and TensorBoard logging to a trainer.

    Args:
        log_dir: TensorBoard folder.
        optimizer: its first group's lr is logged.
        image_interval: iterations between image grids (0: none). Grids show the output keys present among
            ``images``, ``second_view``, ``masked_input`` and ``reconstruction`` (first 4 samples, first channel).

    Besides loss, lr and images/s, every scalar tensor of the output (MoCo's positive similarity, BYOL's tau,
    SwAV's prototype freeze) is logged as ``train/<name>``.
        progress: show the console progress bar.
    """

    IMAGE_KEYS = ("images", "second_view", "masked_input", "reconstruction")

    def __init__(self, log_dir: str | os.PathLike, optimizer: torch.optim.Optimizer, image_interval: int = 50,
                 progress: bool = True) -> None:
        self.log_dir, self.optimizer = str(log_dir), optimizer
        self.image_interval, self.progress = image_interval, progress
        self.writer = None
        self._tick = 0.0

    def attach(self, engine: Engine) -> None:
        if not is_main_process():
            return
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(self.log_dir)
        if self.progress:
            ProgressBar(persist=True).attach(engine, output_transform=lambda out: {"loss": out["loss"]})
        engine.add_event_handler(Events.ITERATION_STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._log)
        engine.add_event_handler(Events.COMPLETED | Events.EXCEPTION_RAISED, lambda _: self.writer.flush())

    def _start(self, engine: Engine) -> None:
        self._tick = time.perf_counter()

    def _log(self, engine: Engine) -> None:
        step, out = engine.state.iteration, engine.state.output
        seconds = max(time.perf_counter() - self._tick, 1e-9)
        self.writer.add_scalar("train/loss", out["loss"], step)
        self.writer.add_scalar("train/lr", self.optimizer.param_groups[0]["lr"], step)
        self.writer.add_scalar("train/images_per_s", out["images"].shape[0] / seconds, step)
        for name, value in out.items():
            if torch.is_tensor(value) and value.ndim == 0:
                self.writer.add_scalar(f"train/{name}", value.item(), step)
        if self.image_interval and (step % self.image_interval == 0 or step == 1):
            rows = [out[k][:4, :1].float().cpu() for k in self.IMAGE_KEYS if k in out]  # each (n, 1, H, W)
            grid = torch.cat(rows).clamp(0, 1)
            from torchvision.utils import make_grid

            self.writer.add_image("train/" + "_".join(k for k in self.IMAGE_KEYS if k in out),
                                  make_grid(grid, nrow=rows[0].shape[0]), step)
