"""2D axial-slice datasets for pre-training and segmentation, on MONAI's caching datasets.

:class:`AxialSliceDataset` serves every axial slice of a list of CT volumes (NIfTI from ``prepare-dicom`` or
the demo generator), with its label map where the volumes have label volumes: each volume is loaded and
reoriented once, then kept in HU by a MONAI ``CacheDataset``
(in memory) or a :class:`~medssl_monai.data.slice_store.SliceStore` (on disk, read a slice at a time); a
sample is one slice, windowed, followed by the random transforms. :func:`png_slice_dataset` serves a folder of
PNG slices (the authors' preprocessed LIDC layout) the same way.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.data import CacheDataset, Dataset, PersistentDataset
from monai.transforms import Compose, Lambdad

from medssl_monai.data.sampling import seeded
from medssl_monai.data.slice_store import SliceStore, int16_slices
from medssl_monai.data.transforms import ct_intensity, ct_loading, resolve_spacing

__all__ = ["AxialSliceDataset", "png_slice_dataset", "read_datalist", "cached_dataset", "check_label_grid",
           "patient_subset"]

CACHE_MODES = ("memory", "disk", "none")


def read_datalist(path: str | os.PathLike, key: str = "training") -> list[dict]:
    """Entries of ``key`` in a MONAI datalist JSON, with image (and label volume) paths made absolute against the
    file's folder."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"datalist not found: {path}")
    try:
        content = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if key not in content:
        raise ValueError(f"{path}: no list {key!r} (has {', '.join(content) or 'nothing'})")
    entries = []
    for entry in content[key]:
        entry = dict(entry)
        for field in ("image", "label"):
            if isinstance(entry.get(field), str):  # a label may also be a class index
                file = Path(entry[field])
                entry[field] = str(file if file.is_absolute() else path.parent / file)
        entries.append(entry)
    return entries


def cached_dataset(
    data: Sequence[dict], transform: Callable, cache: str = "memory", cache_dir: str | os.PathLike | None = None,
    num_workers: int = 0, copy_cache: bool = True,
) -> Dataset:
    """A MONAI dataset that caches the deterministic ``transform``: in memory, on disk, or not at all."""
    if cache == "memory":
        return CacheDataset(data, transform, num_workers=num_workers, copy_cache=copy_cache, progress=False)
    if cache == "disk":
        if cache_dir is None:
            raise ValueError("cache='disk' needs a cache_dir")
        return PersistentDataset(data, transform, cache_dir=cache_dir)
    if cache == "none":
        return Dataset(data, transform)
    raise ValueError(f"unknown cache mode {cache!r}; expected one of {CACHE_MODES}")


def _header(path: str) -> nib.Nifti1Image:
    """A volume's NIfTI image (header only read), or an error naming the file."""
    try:
        image = nib.load(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"volume listed in the datalist does not exist: {path}") from None
    except Exception as err:  # nibabel raises several types for damaged files
        raise ValueError(f"{path}: cannot read as NIfTI ({type(err).__name__}: {err})") from None
    if len(image.shape) != 3:
        raise ValueError(f"{path}: expected a 3D volume, found shape {image.shape}")
    return image


def _num_axial_slices(path: str) -> int:
    """Number of axial slices of a volume, from its header alone."""
    image = _header(path)
    codes = nib.aff2axcodes(image.affine)
    return int(image.shape[[c in ("S", "I") for c in codes].index(True)])


def check_label_grid(entry: dict) -> None:
    """Raise unless ``entry``'s label volume lies on its image's voxel grid (same shape and affine)."""
    if not isinstance(entry.get("label"), str):
        raise ValueError(f"{entry['image']}: the datalist entry has no label volume ('label': path)")
    image, label = _header(entry["image"]), _header(entry["label"])
    if image.shape != label.shape or not np.allclose(image.affine, label.affine, atol=1e-3):
        raise ValueError(f"{entry['label']}: the label volume is not on the grid of its image {entry['image']} "
                         f"(shape {label.shape} vs {image.shape}, affine {label.affine.round(3).tolist()} vs "
                         f"{image.affine.round(3).tolist()})")


def patient_subset(volumes: Sequence[dict], fraction: float, seed: int = 0) -> list[dict]:
    """The volumes of ``fraction`` of the patients (an entry's ``patient``, else its image: one volume a
    patient), at least one patient, drawn with ``seed``. The subsets of one seed are nested (a smaller fraction
    keeps some of a larger one's patients), as a label-fraction study needs."""
    if not 0 < fraction <= 1:
        raise ValueError(f"label_fraction must be in (0, 1], got {fraction}")
    patients = list(dict.fromkeys(str(v.get("patient", v["image"])) for v in volumes))
    order = np.random.default_rng(seed).permutation(len(patients))
    kept = {patients[i] for i in order[: max(1, round(fraction * len(patients)))]}
    return [v for v in volumes if str(v.get("patient", v["image"])) in kept]


class _CachedSlices:
    """int16 HU slices of volumes held by a MONAI dataset (``CacheDataset`` in memory, or none)."""

    def __init__(self, volumes: Sequence[dict], loading: Callable, cache: str, num_workers: int) -> None:
        steps = Compose([*loading.transforms, Lambdad("image", int16_slices)])
        self.volumes = cached_dataset(volumes, steps, cache, num_workers=num_workers, copy_cache=False)

    def read(self, volume: int, index: int) -> torch.Tensor:
        return self.volumes[volume]["image"][index][None].float()  # (1, X, Y) HU


class AxialSliceDataset(torch.utils.data.Dataset):
    """Every axial slice of CT volumes as a dict sample ``{"image": (C, X, Y) float in [0, 1], ...}``.

    Volumes are read once (reoriented, in HU as int16, 2 bytes a voxel whatever ``in_channels``); each sample
    is one slice, windowed and replicated to ``in_channels``, then ``transform``. With ``labels``, each entry's
    label volume (on its image's grid) is stored the same way and the sample has ``"label"``: the slice's
    (1, X, Y) label map.

    Args:
        data: a datalist JSON path (its ``datalist_key`` list is used) or a list of ``{"image": path}``.
        window: HU window preset, ``[lower, upper]`` (see :data:`~medssl_monai.data.transforms.HU_WINDOWS`),
            or ``minmax`` (per slice).
        in_channels: 1, or 3 to replicate the channel.
        transform: random per-slice transforms (augmentation, cropping), applied after slicing.
        cache: ``memory`` (a MONAI CacheDataset of every volume), ``disk`` (a :class:`SliceStore` in
            ``cache_dir``, read a slice at a time: memory stays flat however large the archive) or ``none``
            (each sample reads its whole volume: only for tiny data).
        slice_step: keep every n-th slice (thick-slab sampling for large collections).
        datalist_key: the datalist's list to read (``training``, ``validation``, ``test``).
        num_workers: threads that fill the memory cache.
        labels: also serve each entry's ``label`` volume (segmentation).
        label_fraction, seed: keep the volumes of this share of the patients (see :func:`patient_subset`).
        spacing: resample each volume in plane to this pixel spacing in mm (label maps by nearest neighbour),
            slices kept; ``None`` keeps the stored grid (see :func:`~medssl_monai.data.transforms.ct_loading`).
    """

    def __init__(
        self,
        data: str | os.PathLike | Sequence[dict],
        window: str | Sequence[float] = "full",
        in_channels: int = 1,
        transform: Callable | None = None,
        cache: str = "memory",
        cache_dir: str | os.PathLike | None = None,
        slice_step: int = 1,
        datalist_key: str = "training",
        num_workers: int = 0,
        labels: bool = False,
        label_fraction: float = 1.0,
        seed: int = 0,
        spacing: float | Sequence[float] | None = None,
    ) -> None:
        volumes = read_datalist(data, datalist_key) if isinstance(data, (str, os.PathLike)) else list(data)
        if not volumes:
            raise ValueError(f"no volumes in {data if isinstance(data, (str, os.PathLike)) else 'the data list'}")
        if spacing is not None and resolve_spacing(spacing)[2] > 0:
            raise ValueError(f"spacing {spacing!r}: axial slices keep their thickness; give the in-plane spacing "
                             "(one value or [x, y])")
        volumes = patient_subset(volumes, label_fraction, seed) if label_fraction != 1 else volumes
        counts = [_num_axial_slices(v["image"]) for v in volumes]
        # (volume index, slice index) of every sample
        self.index = [(v, k) for v, n in enumerate(counts) for k in range(0, n, slice_step)]
        if cache == "disk" and cache_dir is None:
            raise ValueError("cache='disk' needs a cache_dir")
        self.slices = self._slices(volumes, cache, cache_dir, num_workers, spacing, "bilinear")
        self.labels = None
        if labels:
            for entry in volumes:
                check_label_grid(entry)
            self.labels = self._slices([{"image": v["label"]} for v in volumes], cache, cache_dir, num_workers,
                                       spacing, "nearest")
        self.volumes = volumes
        self.intensity = ct_intensity("image", "hu", window, in_channels)
        self.transform = transform

    @staticmethod
    def _slices(volumes: Sequence[dict], cache: str, cache_dir, num_workers: int, spacing, mode: str
                ) -> SliceStore | _CachedSlices:
        """The int16 slices of ``{"image": path}`` volumes, reoriented and resampled to ``spacing`` with ``mode``
        (a label volume exactly as its image)."""
        # (1, X, Y, Z), values as stored
        loading = ct_loading("image", "hu", window=None, volume=True, spacing=spacing, spacing_mode=mode)
        if cache == "disk":
            grid = "" if spacing is None else f"spacing {resolve_spacing(spacing)} {mode}"
            return SliceStore(volumes, cache_dir, loading, grid)
        return _CachedSlices(volumes, loading, cache, num_workers)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item: int | tuple[int, int]) -> dict:
        """Slice ``item``, or ``(index, sample_seed)`` from a :class:`ResumableSampler` (seeded augmentation)."""
        i, seed = item if isinstance(item, tuple) else (item, None)
        v, k = self.index[i]
        sample = self.intensity({"image": self.slices.read(v, k)})  # (C, X, Y) in [0, 1]
        if self.labels is not None:
            sample["label"] = self.labels.read(v, k)  # (1, X, Y) label values
        sample.update(volume=v, slice=k)
        return seeded(seed, self.transform, sample) if self.transform is not None else sample


def png_slice_dataset(
    root: str | os.PathLike,
    encoding: str = "uint8",
    window: str | Sequence[float] = "full",
    in_channels: int = 1,
    transform: Callable | None = None,
    cache: str = "memory",
    cache_dir: str | os.PathLike | None = None,
    num_workers: int = 0,
) -> Dataset:
    """Every ``*.png`` under ``root`` as a dict sample ``{"image": (C, X, Y) float in [0, 1]}``.

    ``encoding="uint8"`` reads the authors' 8-bit slices (min-max scaled per slice; no HU left to window),
    ``"hu16"`` reads 16-bit slices of HU + 1024 and applies ``window``.
    """
    files = sorted(Path(root).rglob("*.png"))
    if not files:
        raise FileNotFoundError(f"no PNG slices under {root}")
    loading = ct_loading("image", encoding, window, in_channels)
    steps = [loading] if transform is None else [loading, transform]
    return cached_dataset([{"image": str(f)} for f in files], Compose(steps), cache, cache_dir, num_workers)
