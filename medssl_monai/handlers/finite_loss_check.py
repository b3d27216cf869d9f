"""Stopping a run whose loss is NaN or infinite, with an error that says where and what to try.

Ignite's ``TerminateOnNan`` ends such a run as a success; here it is an error naming the epoch and iteration.
The self-supervised trainer calls :func:`check_finite_loss` before the backward pass (so no step is taken
on a non-finite loss); fine-tuning attaches :class:`FiniteLossCheck` to MONAI's ``SupervisedTrainer``.
"""

from __future__ import annotations

import numpy as np
import torch
from ignite.engine import Engine, Events

__all__ = ["check_finite_loss", "FiniteLossCheck"]


def check_finite_loss(loss: torch.Tensor | float, epoch: int, iteration: int) -> None:
    """Raise ``FloatingPointError`` naming the epoch and iteration when ``loss`` is NaN or infinite."""
    value = float(loss.detach()) if torch.is_tensor(loss) else float(loss)
    if not np.isfinite(value):
        raise FloatingPointError(
            f"loss is {value} at iteration {iteration} (epoch {epoch}): lower the learning rate, check the data for "
            "NaN, or turn amp off"
        )


class FiniteLossCheck:
    """Stop fine-tuning with an error naming the epoch and iteration when the loss is NaN or infinite, as
    pre-training does. Reads the loss of MONAI's ``SupervisedTrainer`` output (decollated or not)."""

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        output = engine.state.output
        loss = (output[0] if isinstance(output, list) else output)["loss"]
        check_finite_loss(loss, engine.state.epoch, engine.state.iteration)
