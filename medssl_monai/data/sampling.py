"""A sampler that lets a killed run continue on exactly the samples, and the augmentations, it would have seen.

Resuming from a checkpoint taken in the middle of an epoch needs two things a plain ``shuffle=True`` loader does
not give: the epoch's order must be a function of (seed, epoch) alone, so that it can be rebuilt and the
batches already trained on skipped; and each sample's random augmentation must not depend on which worker
process drew it or on how far that worker's random stream had run before the interruption. So
:class:`ResumableSampler` yields ``(index, sample_seed)`` pairs, and datasets that accept them (such as
:class:`~medssl_monai.data.AxialSliceDataset`) seed their random transforms with ``sample_seed``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sized

import numpy as np
import torch
from torch.utils.data import Sampler

__all__ = ["ResumableSampler", "SeededDataset", "seeded"]


def seeded(seed: int | None, transform, sample: dict) -> dict:
    """``transform(sample)`` with MONAI's and torch's random streams seeded by ``seed`` (no seed: as they are).

    torch's global CPU stream is forked, so torchvision-based transforms (``RandTorchVisiond``) are reproducible
    too and the caller's stream is left where it was. Only the CPU generator is seeded: ``torch.manual_seed``
    would also reseed the accelerators' generators, which the fork does not restore (and which cost about 2 ms a
    sample to queue on a machine without one).
    """
    if seed is None:
        return transform(sample)
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        if hasattr(transform, "set_random_state"):
            transform.set_random_state(seed=seed)
        return transform(sample)


class ResumableSampler(Sampler):
    """Shuffled (or ordered) epochs that depend on (seed, epoch) only, sharded over distributed ranks.

    Args:
        data_source: the dataset (only its length is used).
        seed: the run's seed; the order of epoch ``e`` and each sample's augmentation seed derive from it.
        shuffle: permute each epoch; ``False`` keeps the dataset order (sample seeds still vary by epoch).
        num_replicas: ranks sharing the epoch (default: the world size, 1 without torch.distributed).
        rank: this process's rank (default: the current rank).
        num_samples: samples an epoch (all ranks together); default the dataset's length. Fewer: each epoch
            draws that many from its own permutation, so successive epochs see different samples (an epoch of
            a few hundred slices out of thousands); more: the permutation is repeated.

    As with torch's ``DistributedSampler``, the epoch is padded by repeating samples so that every rank gets
    the same number. :meth:`attach` makes an ignite engine call :meth:`set_epoch` at each epoch and, when it
    resumes mid-epoch, :meth:`skip`; the pre-training trainer attaches it itself, ct_classification's
    configs in ``initialize``.
    """

    def __init__(self, data_source: Sized, seed: int = 0, shuffle: bool = True, num_replicas: int | None = None,
                 rank: int | None = None, num_samples: int | None = None) -> None:
        import ignite.distributed as idist

        self.size, self.seed, self.shuffle = len(data_source), int(seed), shuffle
        epoch_size = self.size if num_samples is None else int(num_samples)
        if epoch_size < 1:
            raise ValueError(f"num_samples must be at least 1, got {num_samples}")
        self.num_replicas = idist.get_world_size() if num_replicas is None else num_replicas
        self.rank = idist.get_rank() if rank is None else rank
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"rank {self.rank} is outside 0..{self.num_replicas - 1}")
        self.per_rank = -(-epoch_size // self.num_replicas)  # ceil
        self.epoch, self._skip = 1, 0

    def attach(self, engine) -> None:
        """Position this sampler at the start of every epoch of ``engine`` (an ignite engine over it)."""
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_STARTED, self._position)

    def _position(self, engine) -> None:
        state = engine.state
        self.set_epoch(state.epoch)
        done = state.iteration - (state.epoch - 1) * state.epoch_length  # > 0 only when resuming mid-epoch
        self.skip(done * engine.data_loader.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Select the order of ``epoch`` for the next iteration over this sampler."""
        self.epoch = int(epoch)

    def skip(self, samples: int) -> None:
        """Leave out the first ``samples`` of this rank's share, once (the batches a resumed run already did)."""
        self._skip = int(samples)

    def __len__(self) -> int:
        return self.per_rank

    def __iter__(self) -> Iterator[tuple[int, int]]:
        g = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0]))
        order = torch.randperm(self.size, generator=g) if self.shuffle else torch.arange(self.size)
        sample_seeds = torch.randint(0, 2**31 - 1, (self.size,), generator=g)
        padded = order.repeat(-(-self.per_rank * self.num_replicas // self.size))[: self.per_rank * self.num_replicas]
        mine = padded[self.rank :: self.num_replicas]  # (per_rank,)
        start, self._skip = self._skip, 0
        for i in mine[start:].tolist():
            yield i, int(sample_seeds[i])


class SeededDataset(torch.utils.data.Dataset):
    """``transform`` (random augmentation) over the samples of ``dataset`` (deterministic, cached), seeded per
    sample when the sampler yields ``(index, sample_seed)`` (:class:`ResumableSampler`), as drawn otherwise.

    ``data`` is the wrapped dataset's list of samples, as on MONAI datasets.
    """

    def __init__(self, dataset: torch.utils.data.Dataset, transform) -> None:
        self.dataset, self.transform = dataset, transform

    @property
    def data(self) -> list:
        return self.dataset.data

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: int | tuple[int, int]) -> dict:
        i, seed = item if isinstance(item, tuple) else (item, None)
        return seeded(seed, self.transform, self.dataset[i])
