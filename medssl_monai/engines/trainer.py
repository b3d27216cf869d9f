"""The one training loop of every self-supervised method, on MONAI's ignite-based Trainer.

A method is an ``nn.Module`` that maps a batch of images to a dict with a scalar ``loss`` (and whatever it
wants logged, such as SparK's reconstruction). The trainer owns the step: per-iteration schedules, mixed
precision, gradient clipping, a finite-loss check, the momentum update after the optimiser step (for methods
with ``update_momentum``), and the states a resume needs.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence

import numpy as np
import torch
import torch.distributed as dist
from monai.engines import Trainer
from monai.engines.workflow import Workflow
from monai.inferers import Inferer, SimpleInferer
from torch import nn

from medssl_monai.handlers.finite_loss_check import check_finite_loss
from medssl_monai.handlers.iteration_schedule import IterationSchedule
from medssl_monai.utils.distributed import world_size
from medssl_monai.utils.memory_format import channels_last_format
from medssl_monai.utils.options import BOOL_WORDS, as_bool
from medssl_monai.utils.precision import resolve_amp

__all__ = ["SelfSupervisedTrainer", "RNGState"]


class RNGState:
    """Python, NumPy and torch (CPU and CUDA) random states of every rank as a checkpointable object (tensors
    and lists only, so ``torch.load(weights_only=True)`` reads it).

    Under torch.distributed each rank draws its own random numbers (SparK's masks, for one: the ranks are
    seeded apart), so :meth:`state_dict` gathers all ranks' states (every rank calls it, rank 0 writes) and
    :meth:`load_state_dict` gives each rank its own: a resumed run draws what the killed one would have.
    """

    @staticmethod
    def _own() -> dict:
        np_state = np.random.get_state()
        return {
            "python": list(random.getstate()[1]),
            "numpy": torch.from_numpy(np_state[1].astype(np.int64)),
            "numpy_pos": int(np_state[2]),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def state_dict(self) -> dict:
        if world_size() == 1:
            return {"ranks": [self._own()]}
        ranks: list = [None] * world_size()
        dist.all_gather_object(ranks, self._own())
        return {"ranks": ranks}

    def load_state_dict(self, state: dict) -> None:
        ranks = state["ranks"] if "ranks" in state else [state]  # checkpoints before per-rank states: one
        rank = dist.get_rank() if world_size() > 1 else 0
        if rank >= len(ranks):
            raise ValueError(f"the checkpoint holds the random states of {len(ranks)} process(es), not of rank {rank}")
        own = ranks[rank]
        random.setstate((3, tuple(own["python"]), None))
        np.random.set_state(("MT19937", own["numpy"].numpy().astype(np.uint32), own["numpy_pos"], 0, 0.0))
        torch.set_rng_state(own["torch"])
        if own["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(own["cuda"])


class SelfSupervisedTrainer(Trainer):
    """Train a self-supervised method.

    Args:
        device: where the method runs.
        max_epochs: epochs over ``train_data_loader``.
        train_data_loader: yields dict batches with ``image_key``.
        network: the method; ``network(images)`` returns a dict with a scalar ``loss``.
        optimizer: built with :func:`~medssl_monai.optimizers.build_optimizer`.
        schedule: per-iteration lr and weight decay; attached to this trainer.
        grad_clip: maximum gradient norm (``None`` or 0: no clipping).
        amp: mixed precision: bf16 autocast on CPU, fp16 (with a gradient scaler) or bf16 on GPU; ``auto``: on
            where it is faster (a GPU, a CPU with bf16 arithmetic), see :func:`~medssl_monai.utils.resolve_amp`.
        amp_dtype: ``float16`` or ``bfloat16`` on GPU.
        image_key: batch key of the images: a (B, C, H, W) batch, or a list of such batches (views), which
            the method receives as a list.
        channels_last: feed the inputs channels-last (``channels_last_3d`` for volumes); the network's weights
            are put in that layout by :func:`~medssl_monai.utils.place` before DDP wraps it.
        compile: run the method's forward (and so its backward) through ``torch.compile``: ``True`` for
            inductor, or the name of a backend. The checkpointed network is the uncompiled module itself.
        foreach: the multi-tensor kernels for gradient clipping (``None``: torch's choice, on GPUs only).
        inferer: unused in training; present for MONAI's train-workflow properties.
        train_handlers: MONAI/ignite handlers to attach.
    """

    def __init__(
        self,
        device: torch.device | str,
        max_epochs: int,
        train_data_loader: Iterable,
        network: nn.Module,
        optimizer: torch.optim.Optimizer,
        schedule: IterationSchedule | None = None,
        grad_clip: float | None = 5.0,
        amp: bool | str = False,
        amp_dtype: str = "float16",
        image_key: str = "image",
        inferer: Inferer | None = None,
        epoch_length: int | None = None,
        train_handlers: Sequence | None = None,
        channels_last: bool = False,
        compile: bool | str = False,
        foreach: bool | None = None,
    ) -> None:
        # no decollation: the output is one dict per batch, read by the logging and checkpoint handlers
        requested, amp = amp, resolve_amp(amp, device)
        super().__init__(device=device, max_epochs=max_epochs, data_loader=train_data_loader,
                         epoch_length=epoch_length, handlers=None, amp=amp, decollate=False)
        self.network, self.optimizer = network, optimizer
        self.grad_clip, self.image_key = grad_clip, image_key
        self.channels_last = as_bool(channels_last, "channels_last")
        self.foreach = None if foreach is None else as_bool(foreach, "foreach")
        named = isinstance(compile, str) and compile.lower() not in BOOL_WORDS  # a backend's name
        backend = compile if named else ("inductor" if as_bool(compile, "compile") else None)
        self.run_network = torch.compile(network, backend=backend) if backend else network  # same parameters
        self.inferer = inferer or SimpleInferer()
        device_type = torch.device(device).type
        self.autocast_dtype = torch.bfloat16 if device_type == "cpu" else getattr(torch, amp_dtype)
        self.device_type = device_type
        self.grad_scaler = torch.amp.GradScaler(device_type, enabled=amp and self.autocast_dtype == torch.float16)
        precision = f"{str(self.autocast_dtype).removeprefix('torch.')} autocast" if amp else "off, fp32"
        self.logger.info(f"mixed precision (amp {str(requested).lower()}): {precision}")
        self.rng = RNGState()
        if hasattr(getattr(train_data_loader, "sampler", None), "attach"):  # a ResumableSampler
            train_data_loader.sampler.attach(self)
        if schedule is not None:
            schedule.attach(self)
        if train_handlers:
            self.add_handlers(train_handlers)

    def run(self) -> None:
        """Train from where the state stands. The step scales losses with :attr:`grad_scaler`, made for this device;
        MONAI's ``Trainer.run`` would add a CUDA-only scaler, which warns and disables itself on a CPU."""
        Workflow.run(self)

    def add_handlers(self, handlers: Sequence) -> None:
        """Attach handlers that need the trainer itself (its RNG state, its scaler), after construction."""
        self._register_handlers(handlers)

    def _iteration(self, engine: SelfSupervisedTrainer, batchdata: dict) -> dict:
        inputs = batchdata[self.image_key]  # (B, C, H, W), or a list of views for the joint-embedding methods
        views = [v.to(engine.state.device, non_blocking=engine.non_blocking,
                      memory_format=channels_last_format(v.ndim) if self.channels_last else torch.preserve_format)
                 for v in (inputs if isinstance(inputs, (list, tuple)) else [inputs])]
        self.network.train()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device_type, dtype=self.autocast_dtype, enabled=self.amp):
            out = self.run_network(views if isinstance(inputs, (list, tuple)) else views[0])
        loss = out["loss"]
        check_finite_loss(loss, engine.state.epoch, engine.state.iteration)
        self.grad_scaler.scale(loss).backward()
        if self.grad_clip:
            self.grad_scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), self.grad_clip, foreach=self.foreach)
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()
        method = getattr(self.network, "module", self.network)  # DDP's wrapper
        if hasattr(method, "update_momentum"):
            method.update_momentum()  # EMA copies follow the stepped online weights
        output = {k: v.detach() for k, v in out.items() if torch.is_tensor(v)}
        output["loss"] = loss.item()
        output["images"] = views[0].detach()
        if len(views) > 1 and views[1].shape == views[0].shape:
            output["second_view"] = views[1].detach()
        return output
