"""Progress of a pre-training run on the console, in log files and in TensorBoard: loss, lr, images/s, image
grids of what the method sees, and one summary line at the end of the run."""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Mapping
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from ignite.handlers import ProgressBar

from medssl_monai.utils.distributed import is_main_process
from medssl_monai.utils.options import as_bool

__all__ = ["TrainingLogger", "format_duration"]

logger = logging.getLogger(__name__)


def _scalar(loss: torch.Tensor | float) -> float:
    """A loss as a float (MONAI's trainers keep the tensor, still attached to its graph)."""
    return float(loss.detach()) if torch.is_tensor(loss) else float(loss)


def format_duration(seconds: float) -> str:
    """``1 h 02 min``, ``7 min 54 s`` or ``12 s``."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


class TrainingLogger:
    """Attach progress, TensorBoard logging and a summary line to a trainer (the pre-training engine or MONAI's
    SupervisedTrainer; on rank 0).

    Args:
        summary_writer: the run's TensorBoard writer (see :func:`~medssl_monai.utils.summary_writer`).
        optimizer: its first group's lr is logged.
        image_interval: iterations between image grids (0: none). Grids show the output keys present among
            ``images``, ``second_view``, ``masked_input`` and ``reconstruction`` (first 4 samples, first channel;
            the middle axial slice of 3D patches).
        progress: show progress within epochs: tqdm's bar when standard error is a terminal, else (a log file,
            nohup, a batch scheduler) a plain log line every ``line_percent`` of an epoch or ``line_seconds``,
            whichever comes first, with no carriage returns.
        outputs: name -> path of what the run writes (encoder, checkpoints, logs), named in the summary line.
        line_percent, line_seconds: spacing of the plain progress lines.

    Besides loss, lr and images/s, every scalar tensor of the output (MoCo's positive similarity, BYOL's tau,
    SwAV's prototype freeze) is logged as ``train/<name>``. At the end of the run one line gives the wall time,
    mean images/s, the first and last epoch's mean loss, the last k-NN accuracy with its interval (from
    ``engine.state.metrics``, see :class:`~medssl_monai.handlers.RepresentationMonitor`) and ``outputs``;
    a run stopped by an error or a kill logs what it had done and re-raises. Attach it after the handlers whose
    work the summary reports (the monitor, the encoder export).
    """

    IMAGE_KEYS = ("images", "second_view", "masked_input", "reconstruction")

    def __init__(self, summary_writer: Any, optimizer: torch.optim.Optimizer, image_interval: int = 50,
                 progress: bool = True, outputs: Mapping[str, str] | None = None, line_percent: float = 10.0,
                 line_seconds: float = 60.0) -> None:
        self.writer, self.optimizer = summary_writer, optimizer
        self.image_interval, self.progress = image_interval, as_bool(progress, "progress")
        self.outputs = dict(outputs or {})
        self.line_percent, self.line_seconds = line_percent, line_seconds
        self._tick = 0.0
        self._started = self._last_line = 0.0
        self._images = self._window_images = 0  # images this process trained on: in all, since the last line
        self._first_iteration = 0
        self._epoch_losses: list[float] = []
        self._epoch_means: list[tuple[int, float]] = []  # (epoch, mean loss) of the epochs this process finished

    def attach(self, engine: Engine) -> None:
        if not is_main_process():
            return
        engine.add_event_handler(Events.STARTED, self._on_start)
        engine.add_event_handler(Events.ITERATION_STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._log)
        if self.progress and sys.stderr.isatty():
            ProgressBar(persist=True).attach(engine, output_transform=lambda out: {"loss": _scalar(out["loss"])})
        elif self.progress:
            engine.add_event_handler(Events.ITERATION_COMPLETED, self._progress_line)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_mean)
        engine.add_event_handler(Events.COMPLETED, self._summary)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self._stopped)

    def _on_start(self, engine: Engine) -> None:
        self._started = self._last_line = time.perf_counter()
        self._first_iteration = engine.state.iteration  # > 0 when resumed

    def _start(self, engine: Engine) -> None:
        self._tick = time.perf_counter()

    def _log(self, engine: Engine) -> None:
        step, out = engine.state.iteration, engine.state.output
        seconds = max(time.perf_counter() - self._tick, 1e-9)
        batch = out["images"] if "images" in out else out["image"]  # the pre-training engine's, MONAI's trainers'
        images = batch.shape[0] * idist.get_world_size()
        loss = _scalar(out["loss"])
        self._images += images
        self._window_images += images
        self._epoch_losses.append(loss)
        self.writer.add_scalar("train/loss", loss, step)
        self.writer.add_scalar("train/lr", self.optimizer.param_groups[0]["lr"], step)
        self.writer.add_scalar("train/images_per_s", images / seconds, step)
        for name, value in out.items():
            if torch.is_tensor(value) and value.ndim == 0 and name != "loss":
                self.writer.add_scalar(f"train/{name}", value.item(), step)
        if self.image_interval and (step % self.image_interval == 0 or step == 1):
            # each (n, 1, H, W); of volume patches (n, 1, H, W, D) the middle slice
            rows = [out[k][:4, :1].float().cpu() for k in self.IMAGE_KEYS if k in out]
            rows = [r[..., r.shape[-1] // 2] if r.ndim == 5 else r for r in rows]
            grid = torch.cat(rows).clamp(0, 1)
            from torchvision.utils import make_grid

            self.writer.add_image("train/" + "_".join(k for k in self.IMAGE_KEYS if k in out),
                                  make_grid(grid, nrow=rows[0].shape[0]), step)

    def _progress_line(self, engine: Engine) -> None:
        """One plain line every ``line_percent`` of an epoch or ``line_seconds``, and at the epoch's end."""
        state = engine.state
        length = state.epoch_length
        done = (state.iteration - 1) % length + 1  # iterations of this epoch
        every = max(1, math.floor(length * self.line_percent / 100))
        now = time.perf_counter()
        if done % every and done != length and now - self._last_line < self.line_seconds:
            return
        rate = self._window_images / max(now - self._last_line, 1e-9)
        per_iteration = (now - self._started) / max(state.iteration - self._first_iteration, 1)
        left = state.max_epochs * length - state.iteration
        logger.info(
            f"epoch {state.epoch}/{state.max_epochs} iteration {done}/{length} ({100 * done / length:.0f}%): "
            f"loss {self._epoch_losses[-1]:.4f} (epoch mean {sum(self._epoch_losses) / len(self._epoch_losses):.4f}), "
            f"{rate:.1f} images/s, ETA epoch {format_duration((length - done) * per_iteration)}, "
            f"run {format_duration(left * per_iteration)}"
        )
        self._last_line, self._window_images = now, 0

    def _epoch_mean(self, engine: Engine) -> None:
        if self._epoch_losses:
            self._epoch_means.append((engine.state.epoch, sum(self._epoch_losses) / len(self._epoch_losses)))
        self._epoch_losses = []

    def _facts(self, engine: Engine) -> str:
        """What this process did: wall time, images/s, loss, k-NN accuracy, and where the outputs are."""
        seconds = time.perf_counter() - self._started
        iterations = engine.state.iteration - self._first_iteration
        parts = [f"{format_duration(seconds)} for {iterations} iterations, "
                 f"{self._images / max(seconds, 1e-9):.1f} images/s"]
        if self._epoch_means:
            (e0, l0), (e1, l1) = self._epoch_means[0], self._epoch_means[-1]
            parts.append(f"mean loss {l0:.4f} (epoch {e0}) -> {l1:.4f} (epoch {e1})")
        metrics = engine.state.metrics
        if "knn/accuracy" in metrics:
            parts.append(f"k-NN {metrics['knn/accuracy']:.3f} [{metrics['knn/accuracy_low']:.3f}, "
                         f"{metrics['knn/accuracy_high']:.3f}] (n={int(metrics['knn/queries'])})")
        parts += [f"{name} {path}" for name, path in self.outputs.items()]
        return "; ".join(parts)

    def _summary(self, engine: Engine) -> None:
        self.writer.flush()
        logger.info(f"run finished, epoch {engine.state.epoch}/{engine.state.max_epochs}: {self._facts(engine)}")

    def _stopped(self, engine: Engine, error: BaseException) -> None:
        """Ignite hands exceptions to this handler instead of raising them: log, then raise again."""
        self.writer.flush()
        logger.error(f"run stopped at epoch {engine.state.epoch}, iteration {engine.state.iteration} by "
                     f"{type(error).__name__}: {self._facts(engine)}")
        raise error
