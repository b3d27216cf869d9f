"""Augmented views for the joint-embedding methods: two views for MoCo and BYOL, multi-crop for SwAV.

:func:`ct_augmentation` is the reference study's contrastive augmentation rebuilt from MONAI transforms for
HU-windowed 1-channel slices in [0, 1], or volume patches; :class:`MultiViewd` applies one or more such pipelines to a sample
and puts the views, as a list, under one key (the DataLoader collates it into a list of batches).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from monai.data import get_track_meta, set_track_meta
from monai.transforms import (
    Compose,
    MapTransform,
    RandAdjustContrastd,
    RandFlipd,
    Randomizable,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandRotate90d,
    RandRotated,
    RandScaleCropd,
    RandScaleIntensityd,
    RandScaleIntensityFixedMeand,
    RandTorchVisiond,
    Resized,
)
from monai.utils import MAX_SEED, convert_to_tensor

__all__ = ["MultiViewd", "ct_augmentation"]


def ct_augmentation(
    size: int | Sequence[int] = 224,
    scale: Sequence[float] = (0.2, 1.0),
    rotation: float = 180.0,
    rotation_prob: float = 0.5,
    rotate90_prob: float = 0.0,
    flips: bool = True,
    intensity_prob: float = 0.8,
    brightness: float = 0.4,
    contrast: float = 0.4,
    gamma: Sequence[float] = (0.7, 1.5),
    blur_sigma: Sequence[float] = (0.1, 2.0),
    blur_prob: float = 0.5,
    noise_std: float = 0.05,
    noise_prob: float = 0.5,
    spatial_dims: int = 2,
    key: str = "image",
) -> Compose:
    """Random CT view of a (C, H, W) slice or, with ``spatial_dims=3``, a (C, X, Y, Z) volume patch in [0, 1]
    (defaults: the reference study's MoCo/BYOL recipe).

    In order: quarter turns in the axial plane (with ``rotate90_prob``: 90, 180 or 270 degrees), in-plane
    rotation up to +-``rotation`` degrees (air outside), random resized crop to ``size``
    (an int for a square or cube) covering ``scale`` of the area (slices) or volume (patches: each side drawn
    in ``scale ** (1/3)`` of the patch's, so the aspect may change as in 2D), flips along every axis, brightness
    (x(1 +- ``brightness``)), contrast around the mean and gamma, each with ``intensity_prob``; Gaussian blur
    with sigma in ``blur_sigma`` voxels along each axis; Gaussian noise. SwAV's recipe: ``rotation_prob=0,
    flips=False`` and its own crop scales.
    """
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 (slices) or 3 (volume patches), got {spatial_dims}")
    steps: list[Callable] = []
    if rotate90_prob > 0:  # spatial axes 0 and 1: a slice's plane, a volume's axial plane
        steps.append(RandRotate90d(key, prob=rotate90_prob, max_k=3, spatial_axes=(0, 1)))
    if rotation_prob > 0:  # a slice's plane; about a volume's last (Z) axis, in its axial plane
        angle = math.radians(rotation)
        plane = {"range_x": angle} if spatial_dims == 2 else {"range_z": angle}
        steps.append(RandRotated(key, **plane, prob=rotation_prob, padding_mode="zeros"))
    if spatial_dims == 2:
        steps.append(RandTorchVisiond(key, "RandomResizedCrop", size=size, scale=tuple(scale), antialias=True))
    else:
        side = [s ** (1 / 3) for s in scale]
        steps += [RandScaleCropd(key, roi_scale=side[0], max_roi_scale=side[1], random_size=True),
                  Resized(key, spatial_size=size, mode="trilinear")]
    if flips:
        steps += [RandFlipd(key, prob=0.5, spatial_axis=axis) for axis in range(spatial_dims)]
    sigma = tuple(blur_sigma)
    steps += [
        RandScaleIntensityd(key, factors=brightness, prob=intensity_prob),
        RandScaleIntensityFixedMeand(key, factors=contrast, prob=intensity_prob),
        RandAdjustContrastd(key, gamma=tuple(gamma), prob=intensity_prob),
        RandGaussianSmoothd(key, sigma_x=sigma, sigma_y=sigma, sigma_z=sigma, prob=blur_prob),  # z: volumes only
        RandGaussianNoised(key, std=noise_std, prob=noise_prob),
    ]
    return Compose(steps)


class MultiViewd(Randomizable, MapTransform):
    """Views of ``keys`` made by ``transforms[i]`` ``counts[i]`` times each, stored as a list at ``output_key``.

    Args:
        keys: the image key the pipelines read and write (one key).
        transforms: dict pipelines, e.g. :func:`ct_augmentation` for a global and a local crop.
        counts: views per pipeline: ``[2]`` for MoCo and BYOL, ``[2, 6]`` for SwAV's multi-crop.
        output_key: where the list of views goes; the source image is removed to spare the collate.
    """

    def __init__(self, keys: str | Sequence[str], transforms: Sequence[Callable], counts: Sequence[int],
                 output_key: str = "views") -> None:
        MapTransform.__init__(self, keys)
        if len(self.keys) != 1:
            raise ValueError(f"MultiViewd makes views of one image key, got {self.keys}")
        if len(transforms) != len(counts) or min(counts, default=0) < 1:
            raise ValueError(f"need one positive count per pipeline, got {len(transforms)} pipelines and {counts}")
        self.transforms, self.counts, self.output_key = list(transforms), list(counts), output_key

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> MultiViewd:
        """Seed this transform and, from it, every pipeline (so a seeded sample gives the same views)."""
        super().set_random_state(seed, state)
        for t in self.transforms:
            if isinstance(t, Randomizable):
                t.set_random_state(seed=int(self.R.randint(MAX_SEED)))
        return self

    def randomize(self, data: object = None) -> None:
        """Nothing to draw here: each pipeline draws its own parameters."""

    def __call__(self, data: dict) -> dict:
        key = self.keys[0]
        out = {k: v for k, v in data.items() if k != key}
        image = convert_to_tensor(data[key], track_meta=False)
        tracking = get_track_meta()
        set_track_meta(False)  # nothing reads a view's metadata, and tracking it took a third of the views' time
        try:
            out[self.output_key] = [t({**data, key: image.clone()})[key]
                                    for t, n in zip(self.transforms, self.counts) for _ in range(n)]  # (C, *size_i)
        finally:
            set_track_meta(tracking)
        return out
