"""Labelled downstream sets as MONAI dict samples ``{"image": ..., "label": int}``.

Three layouts, one function each, all returning a list of dicts for a MONAI dataset:

- :func:`class_folder_datalist`: a folder per class plus split files (UCSD COVID-CT);
- :func:`medmnist_datalist`: MedMNIST ``.npz`` (``train_images``, ``train_labels``, ``val_*``, ``test_*``);
- :func:`table_datalist`: a CSV (``image,label[,split]``) or JSON datalist (``{"training": [...], ...}``).

:func:`downstream_dataset` puts one of them behind the shared loading pipeline and a MONAI cache.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from monai.data import Dataset

from medssl_monai.data.datasets import cached_dataset
from medssl_monai.data.sampling import SeededDataset
from medssl_monai.data.transforms import ct_loading

__all__ = ["SPLITS", "class_folder_datalist", "medmnist_datalist", "table_datalist", "stratified_subset",
           "stratified_subset_indices",
           "downstream_dataset"]

SPLITS = ("train", "val", "test")
_JSON_KEYS = {"train": "training", "val": "validation", "test": "test"}


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")


def class_folder_datalist(
    root: str | os.PathLike,
    split: str,
    classes: Sequence[str] = ("NonCOVID", "COVID"),
    image_dir: str = "Images-processed/CT_{cls}",
    split_file: str = "Data-split/{cls}/{split}CT_{cls}.txt",
) -> list[dict]:
    """Samples of one split from a folder-per-class layout; label = position of the class in ``classes``.

    ``image_dir`` and ``split_file`` are templates in ``{cls}`` and ``{split}``; the defaults are UCSD
    COVID-CT's. A split file lists one image file name per line.
    """
    _check_split(split)
    root = Path(root)
    samples = []
    for label, cls in enumerate(classes):
        listing = root / split_file.format(cls=cls, split=split)
        if not listing.is_file():
            raise FileNotFoundError(f"split file not found: {listing}")
        folder = root / image_dir.format(cls=cls, split=split)
        for name in listing.read_text().split("\n"):
            name = name.strip()
            if not name:
                continue
            path = folder / name
            if not path.is_file():
                raise FileNotFoundError(f"{listing} lists {name}, which does not exist in {folder}")
            samples.append({"image": str(path), "label": label})
    return samples


def medmnist_datalist(path: str | os.PathLike, split: str) -> list[dict]:
    """Samples of one split of a MedMNIST ``.npz``: images as (X, Y) uint8 arrays (MONAI's 2D axis order)."""
    _check_split(split)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MedMNIST file not found: {path}")
    with np.load(path) as npz:
        missing = [k for k in (f"{split}_images", f"{split}_labels") if k not in npz]
        if missing:
            raise ValueError(f"{path}: not a MedMNIST file, missing {', '.join(missing)} (has {', '.join(npz.files)})")
        images, labels = npz[f"{split}_images"], npz[f"{split}_labels"].reshape(-1)
        patients = npz[f"{split}_patients"] if f"{split}_patients" in npz else None  # the demo's; not MedMNIST's
    if images.ndim != 3 or len(images) != len(labels):
        raise ValueError(f"{path}: expected {split}_images (N, H, W) and N labels, got {images.shape} and {labels.shape}")
    samples = [{"image": np.ascontiguousarray(img.T), "label": int(y)} for img, y in zip(images, labels)]
    for sample, patient in zip(samples, patients if patients is not None else []):
        sample["patient"] = str(patient)
    return samples


def table_datalist(path: str | os.PathLike, split: str, base_dir: str | os.PathLike | None = None) -> list[dict]:
    """Samples of one split from a CSV (columns ``image``, ``label``, ``split`` with values train/val/test, and
    optionally ``patient``) or a JSON datalist with lists ``training``/``validation``/``test`` (entries with
    ``image``, ``label``, optionally ``patient``). A table without the split is refused:
    training, validation and testing on the same images would report a fit as a result. Relative image paths
    are resolved against ``base_dir`` (the file's folder by default)."""
    _check_split(split)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"datalist not found: {path}")
    base = Path(base_dir) if base_dir is not None else path.parent
    if path.suffix.lower() == ".csv":
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        if rows and not {"image", "label"} <= set(rows[0]):
            raise ValueError(f"{path}: a CSV datalist needs the columns image and label, found {list(rows[0])}")
        if rows and "split" not in rows[0]:
            raise ValueError(f"{path}: a CSV datalist needs a split column (train, val or test per row) so that "
                             f"the {split} split is not also used for training; found columns {list(rows[0])}")
        rows = [r for r in rows if r["split"] == split]
    else:
        try:
            content = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from None
        key = _JSON_KEYS[split]
        if key not in content:
            raise ValueError(f"{path}: a JSON datalist needs a list {key!r} for the {split} split (lists "
                             f"training, validation, test); it has {', '.join(map(repr, content)) or 'none'}")
        rows = content[key]
    samples = []
    for i, row in enumerate(rows):
        try:
            label = int(row["label"])
        except (KeyError, ValueError, TypeError):
            raise ValueError(f"{path}: entry {i} has no integer label ({row})") from None
        image = Path(row["image"])
        samples.append({"image": str(image if image.is_absolute() else base / image), "label": label})
        if row.get("patient") not in (None, ""):
            samples[-1]["patient"] = str(row["patient"])
    return samples


def stratified_subset_indices(data: Sequence[dict], fraction: float, seed: int = 0,
                              label_key: str = "label") -> list[int]:
    """Sorted indices of a seeded share ``fraction`` of ``data``, taken class by class (at least one sample of
    each class).

    Each class is shuffled once by ``seed`` and its first ``round(fraction * n)`` samples kept, so for one seed
    a smaller fraction is always a subset of a larger one (the label-scarcity study shrinks nested sets), and
    every method and protocol given the same seed trains on the same labels.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"label_fraction must be in (0, 1], got {fraction}")
    by_class: dict[int, list[int]] = {}
    for i, sample in enumerate(data):
        by_class.setdefault(int(sample[label_key]), []).append(i)
    rng = np.random.default_rng(seed)
    keep = []
    for label in sorted(by_class):
        members = by_class[label]
        order = rng.permutation(len(members))  # drawn for every class whatever the fraction: nested subsets
        keep += [members[j] for j in order[: max(1, round(fraction * len(members)))]]
    return sorted(keep)


def stratified_subset(data: Sequence[dict], fraction: float, seed: int = 0, label_key: str = "label") -> list[dict]:
    """The samples of :func:`stratified_subset_indices`."""
    return [data[i] for i in stratified_subset_indices(data, fraction, seed, label_key)]


def downstream_dataset(
    layout: str,
    path: str | os.PathLike,
    split: str,
    encoding: str = "hu16",
    window: str | Sequence[float] = "lung",
    in_channels: int = 1,
    transform: Callable | None = None,
    cache: str = "memory",
    cache_dir: str | os.PathLike | None = None,
    label_fraction: float = 1.0,
    seed: int = 0,
    patient_pattern: str | None = None,
    **layout_args,
) -> Dataset | SeededDataset:
    """One split of a labelled set: a cached MONAI dataset of the loaded images, with ``transform`` applied on
    each read (:class:`~medssl_monai.data.sampling.SeededDataset`: seeded per sample by a ResumableSampler).

    Args:
        layout: ``class_folders``, ``medmnist`` or ``table`` (CSV/JSON); ``layout_args`` go to its function.
        encoding: how the images store intensities (``hu``, ``hu16``, ``uint8``; MedMNIST is always ``uint8``).
        window: HU window preset, ``[lower, upper]``, or ``minmax`` (the reference study's per-image scaling).
        transform: random transforms after loading (augmentation, resizing).
        label_fraction: keep this stratified share of the split (see :func:`stratified_subset`).
        seed: of the subset.
        patient_pattern: a regular expression whose first group, searched in each image's file name, is its
            patient id (``demo_(\\d+)_`` for the demo's COVID-like set), for layouts without a patient field.
            Patient ids make the test intervals resample patients, not images.
    """
    if layout == "class_folders":
        data, load = class_folder_datalist(path, split, **layout_args), True
    elif layout == "medmnist":
        data, load, encoding = medmnist_datalist(path, split), False, "uint8"
    elif layout == "table":
        data, load = table_datalist(path, split, **layout_args), True
    else:
        raise ValueError(f"unknown layout {layout!r}; expected class_folders, medmnist or table")
    if not data:
        raise ValueError(f"{path}: split {split!r} is empty")
    if patient_pattern:
        for sample in data:
            found = re.search(patient_pattern, Path(str(sample["image"])).name)
            if not found:
                raise ValueError(f"{sample['image']}: the file name has no patient id matching {patient_pattern!r}")
            sample["patient"] = found.group(1) if found.groups() else found.group(0)
    data = stratified_subset(data, label_fraction, seed)
    cached = cached_dataset(data, ct_loading("image", encoding, window, in_channels, load=load), cache, cache_dir)
    return cached if transform is None else SeededDataset(cached, transform)
