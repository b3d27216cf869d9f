"""Axial slices of CT volumes on disk, read one slice at a time: pre-training on archives larger than memory.

Each volume is loaded once (reoriented, in HU), rounded to int16 and written as a slice-major ``.npy`` file
(``(Z, X, Y)``), so that slice ``k`` is one contiguous block that a plain ``seek`` + ``read`` returns. No file
is memory-mapped: pages read stay in the operating system's page cache and out of the process, so the resident
memory of a run does not grow with the archive. The file name is a hash of the source path, size and
modification time: a changed volume is stored again, an unchanged one is reused by every run. Files are
written atomically, so a killed run leaves no half-written slice file.

int16 HU is exact for CT, whose values are integers (a resampled volume loses under 0.5 HU to rounding), and
windowing happens per slice after reading, so one store serves every window and channel count.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from monai.utils import convert_to_tensor

from medssl_monai.utils import atomic_path

__all__ = ["SliceStore", "int16_slices"]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1  # part of every file name: a change of layout never reads an old store
HU_RANGE = (-32768, 32767)


def int16_slices(volume: torch.Tensor) -> torch.Tensor:
    """``(1, X, Y, Z)`` HU as ``(Z, X, Y)`` int16, slice-major (rounded, clipped to the int16 range)."""
    volume = convert_to_tensor(volume, track_meta=False)
    if volume.ndim != 4 or volume.shape[0] != 1:
        raise ValueError(f"expected one channel of a 3D volume, got shape {tuple(volume.shape)}")
    return volume[0].permute(2, 0, 1).round().clamp(*HU_RANGE).to(torch.int16).contiguous()


def _store_name(path: str, grid: str = "") -> str:
    """The store file of a source volume: a hash of what identifies its content cheaply, and of ``grid``, the
    resampling its slices had (none when empty)."""
    source = Path(path).resolve()
    stat = source.stat()
    key = f"{FORMAT_VERSION}|{source}|{stat.st_size}|{stat.st_mtime_ns}" + (f"|{grid}" if grid else "")
    return hashlib.sha256(key.encode()).hexdigest()[:32] + ".npy"


def _read_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, byte offset of the data) of a ``.npy`` file, from its header alone."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = read(f)
        if fortran_order:
            raise ValueError(f"{path}: not a slice store file (Fortran order)")
        return shape, dtype, f.tell()


class SliceStore:
    """int16 HU slices of ``volumes`` under ``cache_dir``; missing volumes are stored on construction.

    Args:
        volumes: ``{"image": path}`` entries.
        cache_dir: folder of the store, shared by runs on the same data.
        loading: turns an entry into ``{"image": (1, X, Y, Z) HU}`` (reoriented so that Z is axial).
        grid: names the resampling ``loading`` does, if any, so that each grid has its own store files.

    Under ``torch.distributed`` each rank stores its share of the missing volumes, then all wait for each other.
    """

    def __init__(self, volumes: Sequence[dict], cache_dir: str | os.PathLike, loading: Callable, grid: str = "") -> None:
        self.cache_dir = Path(cache_dir)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.files = [self.cache_dir / _store_name(v["image"], grid) for v in volumes]
        rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        # each rank stores the missing volumes of its fixed share (by index, whatever the others have done)
        missing = [i for i in range(rank, len(volumes), world) if not self.files[i].is_file()]
        if missing:
            logger.info(f"slice store {self.cache_dir}: storing {len(missing)} of {len(volumes)} volumes"
                        + (f" (rank {rank} of {world})" if world > 1 else ""))
        for i in missing:
            self._store(volumes[i], loading, self.files[i])
        if world > 1:
            dist.barrier()
            unseen = [str(f) for f in self.files if not f.is_file()]
            if unseen:  # stored by another rank on a disk this one does not see (a node-local cache_dir)
                raise FileNotFoundError(
                    f"slice store {self.cache_dir}: rank {rank} does not see {len(unseen)} of {len(volumes)} files "
                    f"the other ranks stored (first: {unseen[0]}); under multi-node torchrun cache_dir must be on "
                    "a filesystem every node mounts")
        self.headers = [_read_header(f) for f in self.files]
        size = sum(f.stat().st_size for f in self.files)
        logger.info(f"slice store {self.cache_dir}: {len(volumes)} volumes, {self.num_slices} slices, "
                    f"{size / 2**30:.2f} GiB")

    @staticmethod
    def _store(entry: dict, loading: Callable, target: Path) -> None:
        try:
            volume = loading(dict(entry))["image"]  # (1, X, Y, Z)
        except RuntimeError as err:  # MONAI's Compose wraps the failing transform's error, which names the file
            cause: BaseException = err
            while cause.__cause__ is not None:
                cause = cause.__cause__
            raise cause from None
        try:
            slices = int16_slices(volume)  # (Z, X, Y)
        except ValueError as err:
            raise ValueError(f"{entry['image']}: {err}") from None
        with atomic_path(target) as tmp, open(tmp, "wb") as f:
            np.save(f, slices.numpy())

    @property
    def num_slices(self) -> int:
        return sum(shape[0] for shape, _, _ in self.headers)

    def read(self, volume: int, index: int) -> torch.Tensor:
        """Axial slice ``index`` of volume ``volume`` as ``(1, X, Y)`` float32 HU."""
        (depth, x, y), dtype, offset = self.headers[volume]
        if not 0 <= index < depth:
            raise IndexError(f"{self.files[volume]}: slice {index} of {depth}")
        count = x * y * dtype.itemsize
        with open(self.files[volume], "rb") as f:
            f.seek(offset + index * count)
            block = f.read(count)
        if len(block) != count:
            raise ValueError(f"{self.files[volume]}: truncated slice store file (delete it to store it again)")
        return torch.from_numpy(np.frombuffer(block, dtype=dtype).reshape(1, x, y).astype(np.float32))
