"""CT intensity handling on MONAI transforms: Hounsfield windows by name, and the one loading pipeline that
turns any stored CT image (HU NIfTI or DICOM, 16-bit HU PNG, 8-bit PNG, in-memory array) into a float image
in [0, 1] with 1 or 3 channels."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.config import KeysCollection
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    Orientationd,
    MapTransform,
    Spacingd,
    RepeatChanneld,
    ScaleIntensityd,
    ScaleIntensityRanged,
    Transform,
)

__all__ = ["HU_WINDOWS", "ENCODINGS", "PNG_HU_OFFSET", "resolve_window", "HUWindowd", "FiniteCheckd", "GreyChanneld",
           "ct_intensity", "ct_loading", "resolve_spacing"]

# (lower, upper) HU of each named window; "full" is the whole CT range, for the paper's unwindowed data
HU_WINDOWS: dict[str, tuple[float, float]] = {
    "lung": (-1350.0, 150.0),
    "mediastinum": (-160.0, 240.0),
    "abdomen": (-140.0, 260.0),
    "bone": (-450.0, 1050.0),
    "brain": (0.0, 80.0),
    "full": (-1024.0, 3071.0),
}

# how stored values relate to HU: ``hu`` NIfTI/DICOM in HU, ``hu16`` 16-bit PNG of HU + 1024,
# ``uint8`` 8-bit images already scaled (the authors' PNG slices, MedMNIST, COVID-CT): divided by 255, no window
ENCODINGS = ("hu", "hu16", "uint8")
PNG_HU_OFFSET = 1024  # 16-bit PNG slices store HU + 1024, so HU survive the PNG format exactly


def resolve_window(window: str | Sequence[float]) -> tuple[float, float]:
    """A window preset name or an explicit ``(lower, upper)`` pair, as ``(lower, upper)`` HU."""
    if isinstance(window, str):
        if window not in HU_WINDOWS:
            raise ValueError(f"unknown HU window {window!r}; presets: {', '.join(HU_WINDOWS)}, or a [lower, upper] pair")
        return HU_WINDOWS[window]
    lo, hi = (float(v) for v in window)
    if not hi > lo:
        raise ValueError(f"HU window upper bound must exceed the lower one, got [{lo}, {hi}]")
    return lo, hi


class HUWindowd(ScaleIntensityRanged):
    """Map a Hounsfield window to [0, 1], clipping outside it.

    Args:
        keys: keys of the images to window.
        window: a preset of :data:`HU_WINDOWS` (``lung``, ``mediastinum``, ``abdomen``, ``bone``, ``brain``,
            ``full``) or ``[lower, upper]`` in HU.
        offset: added to stored values first, to turn them into HU (-1024 for 16-bit HU PNGs).
    """

    def __init__(
        self, keys: KeysCollection, window: str | Sequence[float] = "full", offset: float = 0.0,
        allow_missing_keys: bool = False,
    ) -> None:
        lo, hi = resolve_window(window)
        super().__init__(keys, a_min=lo - offset, a_max=hi - offset, b_min=0.0, b_max=1.0, clip=True,
                         allow_missing_keys=allow_missing_keys)
        self.window = (lo, hi)


class FiniteCheckd(MapTransform):
    """Raise a ValueError naming the source file when an image holds NaN or infinite values."""

    def __call__(self, data: dict) -> dict:
        for key in self.key_iterator(data):
            image = torch.as_tensor(data[key])
            if not torch.isfinite(image).all():
                source = getattr(data[key], "meta", {}).get("filename_or_obj", f"sample key {key!r}")
                bad = int((~torch.isfinite(image)).sum())
                raise ValueError(f"{source}: {bad} NaN or infinite value(s); a CT image must be finite")
        return data


LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 weights of R, G, B (what PIL's "L" conversion uses)


class GreyChanneld(MapTransform):
    """One grey channel from an 8-bit image of any colour layout, channel first: grey as is, grey + alpha
    its grey, RGB and RGBA the BT.601 luma 0.299 R + 0.587 G + 0.114 B (alpha dropped). Screenshot datasets
    such as UCSD COVID-CT mix all four; a CT slice has one intensity per pixel."""

    def __call__(self, data: dict) -> dict:
        for key in self.key_iterator(data):
            image = data[key]  # (C, H, W)
            channels = image.shape[0]
            if channels in (1, 2):
                data[key] = image[:1]
            elif channels in (3, 4):
                weights = torch.as_tensor(LUMA, dtype=image.dtype, device=image.device).view(3, 1, 1)
                data[key] = (image[:3] * weights).sum(dim=0, keepdim=True)
            else:
                source = getattr(image, "meta", {}).get("filename_or_obj", f"sample key {key!r}")
                raise ValueError(f"{source}: {channels} channels; expected grey, grey + alpha, RGB or RGBA")
        return data


def ct_intensity(
    keys: KeysCollection = "image",
    encoding: str = "hu",
    window: str | Sequence[float] = "full",
    in_channels: int = 1,
) -> Compose:
    """Stored intensities (``encoding``) to [0, 1], then ``in_channels`` channels: a HU window, the division
    of 8-bit images by 255, or ``window="minmax"``, per-image min-max scaling (the reference study's
    preprocessing, which gives up the HU scale). A HU window is ignored for ``uint8``, whose images carry no HU."""
    if encoding not in ENCODINGS:
        raise ValueError(f"unknown encoding {encoding!r}; expected one of {ENCODINGS}")
    if in_channels not in (1, 3):
        raise ValueError(f"in_channels must be 1 or 3, got {in_channels}")
    if window == "minmax":
        steps: list[Transform] = [ScaleIntensityd(keys, minv=0.0, maxv=1.0)]
    elif encoding == "uint8":
        steps = [ScaleIntensityRanged(keys, a_min=0.0, a_max=255.0, b_min=0.0, b_max=1.0, clip=True)]
    else:
        steps = [HUWindowd(keys, window, offset=-PNG_HU_OFFSET if encoding == "hu16" else 0.0)]
    if in_channels == 3:
        steps.append(RepeatChanneld(keys, repeats=3))
    return Compose(steps)


def resolve_spacing(spacing: float | Sequence[float]) -> tuple[float, float, float]:
    """A target voxel spacing in mm as MONAI's ``Spacing`` pixdim: one value or ``[x, y]`` resample in plane
    (the slice spacing kept, -1), ``[x, y, z]`` all three axes; a ValueError unless positive."""
    values = (float(spacing),) * 2 if isinstance(spacing, (int, float)) else tuple(float(v) for v in spacing)
    if len(values) not in (2, 3) or min(values) <= 0:
        raise ValueError(f"spacing must be one positive pixel spacing in mm, [x, y] (in plane) or [x, y, z], "
                         f"got {spacing!r}")
    return (*values, -1.0) if len(values) == 2 else values


def ct_loading(
    keys: KeysCollection = "image",
    encoding: str = "hu",
    window: str | Sequence[float] | None = "full",
    in_channels: int = 1,
    load: bool = True,
    volume: bool = False,
    spacing: float | Sequence[float] | None = None,
    spacing_mode: str | Sequence[str] = "bilinear",
) -> Compose:
    """The deterministic front of every pipeline: load, channel first, intensities to [0, 1], channels.

    Args:
        encoding: one of :data:`ENCODINGS`.
        window: see :func:`ct_intensity`; ``None`` keeps the stored values (HU for ``hu``) in one channel.
            8-bit files of any colour layout become one grey channel (:class:`GreyChanneld`) first.
        in_channels: 1, or 3 to replicate the channel (the paper's ImageNet-shaped input).
        load: read files; ``False`` for samples that already hold arrays (MedMNIST).
        volume: 3D volumes, reoriented to LPS so that the last axis runs foot to head and a slice reads like
            a 2D image loaded by MONAI (first axis patient left, second posterior).
        spacing: volumes only: resample in plane to this pixel spacing in mm (one value, or ``[x, y]``),
            keeping the slices as they are (a 2D network sees one pixel size whatever the scanner's field of
            view), or to ``[x, y, z]`` (3D networks); ``None`` keeps the stored grid.
        spacing_mode: the interpolation of that resampling, per key (``nearest`` for label maps).
    """
    if encoding not in ENCODINGS:
        raise ValueError(f"unknown encoding {encoding!r}; expected one of {ENCODINGS}")
    steps: list[Transform] = []
    if load:
        steps.append(LoadImaged(keys, image_only=True, reader="PILReader" if encoding != "hu" else None))
    steps.append(EnsureChannelFirstd(keys, channel_dim="no_channel" if not load else None))
    steps.append(FiniteCheckd(keys))
    if volume:
        steps.append(Orientationd(keys, axcodes="LPS", labels=(("L", "R"), ("P", "A"), ("I", "S"))))
        if spacing is not None:
            steps.append(Spacingd(keys, pixdim=resolve_spacing(spacing), mode=spacing_mode))
    steps.append(EnsureTyped(keys, dtype="float32", track_meta=volume))
    if encoding == "uint8" and load:
        steps.append(GreyChanneld(keys))
    if window is not None:
        steps.extend(ct_intensity(keys, encoding, window, in_channels).transforms)
    return Compose(steps)
