"""Whole CT volumes: validation and test (with their label volumes) and inference inputs for segmentation, and
random 3D patches for volumetric pre-training.

A volume is read, reoriented and windowed exactly as :class:`~medssl_monai.data.AxialSliceDataset` prepares the
slices a 2D network trains on, so that a slice-by-slice inferer (MONAI's ``SliceInferer``) sees what training
saw; the image keeps its metadata, so that predictions are inverted to the input's own orientation and written
with its affine.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from monai.data import Dataset
from monai.transforms import Compose, EnsureTyped, RandSpatialCropd, SpatialPadd

from medssl_monai.data.datasets import cached_dataset, check_label_grid, patient_subset, read_datalist
from medssl_monai.data.sampling import SeededDataset
from medssl_monai.data.transforms import ct_intensity, ct_loading

__all__ = ["label_names", "volume_dataset", "volume_list", "volume_patch_dataset", "volume_preprocessing"]

DATALIST_KEYS = ("training", "validation", "test")


def label_names(datalist: str | os.PathLike) -> list[str]:
    """The label names of a segmentation datalist, by value: its ``labels`` mapping (``{"0": "background",
    "1": "lung_left", ...}``, as in the Medical Segmentation Decathlon's ``dataset.json``).

    Raises:
        ValueError: the datalist has no ``labels``, or their values are not 0, 1, ... K - 1.
    """
    path = Path(datalist)
    if not path.is_file():
        raise FileNotFoundError(f"datalist not found: {path}")
    labels = json.loads(path.read_text()).get("labels")
    if not isinstance(labels, dict) or not labels:
        raise ValueError(f"{path}: no 'labels' mapping of label values to names (e.g. {{\"0\": \"background\", "
                         "\"1\": \"liver\"}}); pass --label_names [...] instead")
    values = sorted(int(v) for v in labels)
    if values != list(range(len(values))):
        raise ValueError(f"{path}: label values must be 0, 1, ..., K - 1, got {values}")
    return [str(labels[str(v)]) for v in values]


def volume_list(source: str | os.PathLike, datalist_key: str | None = None) -> list[dict]:
    """``{"image": path}`` entries of the CT volumes at ``source``: a datalist JSON (the demo's, or
    ``prepare-dicom``'s; its ``datalist_key`` list, or with ``None`` or ``"all"`` all of training, validation and
    test), a folder holding one, or a folder of NIfTI files (``datalist_key`` unused).

    Raises:
        FileNotFoundError: ``source`` does not exist or holds no volume.
    """
    source = Path(source)
    if source.is_dir() and (source / "datalist.json").is_file():
        source = source / "datalist.json"
    if source.is_file():
        if datalist_key not in (None, "all"):
            return read_datalist(source, datalist_key)
        present = [key for key in DATALIST_KEYS if key in json.loads(source.read_text())]
        entries = [entry for key in present for entry in read_datalist(source, key)]
    elif source.is_dir():
        entries = [{"image": str(f)} for f in sorted(source.iterdir()) if f.name.endswith((".nii", ".nii.gz"))]
    else:
        raise FileNotFoundError(f"no input volumes at {source}: expected a datalist JSON or a folder of NIfTI files")
    if not entries:
        raise FileNotFoundError(f"no CT volumes in {source}")
    return entries


def volume_preprocessing(window: str | Sequence[float] = "full", in_channels: int = 1, labels: bool = True,
                         spacing: float | Sequence[float] | None = None) -> Compose:
    """Load, reorient (and resample in plane to ``spacing`` mm, labels by nearest neighbour) and window ``image``
    to (C, X, Y, Z) in [0, 1]; with ``labels``, ``label`` to (1, X, Y, Z). Invertible (MONAI's ``Invertd``)."""
    keys = ["image", "label"] if labels else ["image"]
    loading = ct_loading(keys, "hu", window=None, volume=True, spacing=spacing,
                         spacing_mode=["bilinear", "nearest"][: len(keys)])
    return Compose([*loading.transforms, *ct_intensity("image", "hu", window, in_channels).transforms])


def volume_dataset(
    data: str | os.PathLike | Sequence[dict],
    window: str | Sequence[float] = "full",
    in_channels: int = 1,
    datalist_key: str | None = "validation",
    labels: bool = True,
    cache: str = "memory",
    num_workers: int = 0,
    spacing: float | Sequence[float] | None = None,
) -> Dataset:
    """The volumes of ``data`` (see :func:`volume_list`, or entries) as samples ``{"image": (C, X, Y, Z),
    "label": (1, X, Y, Z)}`` (label volumes checked to lie on their image's grid; both resampled in plane to
    ``spacing`` mm when given), cached ``cache`` (see :func:`~medssl_monai.data.cached_dataset`)."""
    volumes = volume_list(data, datalist_key) if isinstance(data, (str, os.PathLike)) else list(data)
    if labels:
        for entry in volumes:
            check_label_grid(entry)
    return cached_dataset(volumes, volume_preprocessing(window, in_channels, labels, spacing), cache, None, num_workers)


def volume_patch_dataset(
    data: str | os.PathLike | Sequence[dict],
    patch_size: Sequence[int],
    window: str | Sequence[float] = "full",
    spacing: float | Sequence[float] | None = None,
    transform: Callable | None = None,
    datalist_key: str | None = "training",
    labels: bool = False,
    label_fraction: float = 1.0,
    seed: int = 0,
    cache: str = "memory",
    cache_dir: str | os.PathLike | None = None,
    num_workers: int = 0,
) -> SeededDataset:
    """One random ``patch_size`` patch a sample, ``{"image": (1, X, Y, Z) in [0, 1]}`` (with ``labels``, also
    ``"label": (1, X, Y, Z)``, cropped at the same place), from each volume of ``data`` (see :func:`volume_list`,
    or entries; a sampler that draws more samples than volumes draws more patches of each). With ``labels``,
    ``label_fraction`` of the patients are kept, drawn with ``seed`` as the 2D slices' subset is
    (:func:`~medssl_monai.data.patient_subset`).

    The deterministic part (load, reorient, resample to ``spacing`` mm, window) is cached ``cache`` (see
    :func:`~medssl_monai.data.cached_dataset`; ``disk`` for archives larger than memory); the patch is padded
    where the volume is smaller, cropped at a random position, then ``transform`` (3D augmentation) runs,
    seeded per sample under :class:`~medssl_monai.data.ResumableSampler` so that a resumed run sees the
    same patches.
    """
    volumes = volume_list(data, datalist_key) if isinstance(data, (str, os.PathLike)) else list(data)
    size = [int(v) for v in patch_size]
    if len(size) != 3 or min(size) < 1:
        raise ValueError(f"patch_size must be three positive sizes (X, Y, Z voxels), got {patch_size!r}")
    keys = ["image", "label"] if labels else ["image"]
    if labels:
        volumes = patient_subset(volumes, label_fraction, seed)
        for entry in volumes:
            check_label_grid(entry)
    stored = cached_dataset(volumes, volume_preprocessing(window, 1, labels=labels, spacing=spacing), cache,
                            cache_dir, num_workers)
    crop = [SpatialPadd(keys, size), RandSpatialCropd(keys, size, random_size=False)]
    augment = [transform] if transform is not None else []
    # plain tensors for the network: the volume's metadata stays with the cached volume (a view-making transform,
    # MultiViewd, has replaced the image by its views, plain tensors already)
    return SeededDataset(stored, Compose([*crop, *augment, EnsureTyped(keys, track_meta=False,
                                                                        allow_missing_keys=True)]))
