"""NIfTI volumes of CT: HU arrays in DICOM's (Z, rows, columns) order written with a correct RAS affine."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np

from medssl_monai.utils import atomic_path

__all__ = ["lps_affine", "write_ct_nifti", "write_label_nifti"]


def lps_affine(
    orientation: np.ndarray | tuple[float, ...],
    position: np.ndarray | tuple[float, float, float],
    spacing: tuple[float, float, float],
    slice_normal: np.ndarray | None = None,
) -> np.ndarray:
    """RAS affine (4, 4) of a volume stored as (X=columns, Y=rows, Z=slices).

    Args:
        orientation: DICOM ImageOrientationPatient, row direction cosines then column direction cosines (LPS).
        position: LPS position in mm of the first voxel (ImagePositionPatient of the first slice).
        spacing: (slice, row, column) spacing in mm.
        slice_normal: direction of increasing slice index; the cross product of the cosines by default.
    """
    ori = np.asarray(orientation, float)
    row_dir, col_dir = ori[:3], ori[3:]
    normal = np.cross(row_dir, col_dir) if slice_normal is None else np.asarray(slice_normal, float)
    dz, dy, dx = spacing
    affine = np.eye(4)
    affine[:3, 0] = row_dir * dx  # along a row = increasing column index
    affine[:3, 1] = col_dir * dy  # along a column = increasing row index
    affine[:3, 2] = normal * dz
    affine[:3, 3] = np.asarray(position, float)
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine  # LPS -> RAS


def write_ct_nifti(path: str | os.PathLike, hu: np.ndarray, affine: np.ndarray) -> None:
    """Write a (Z, rows, columns) HU volume as NIfTI (X, Y, Z), atomically; int16 when the values allow it."""
    data = np.asarray(hu).transpose(2, 1, 0)
    if np.issubdtype(data.dtype, np.floating) and np.all(np.mod(data, 1) == 0):
        data = data.astype(np.int32)
    if np.issubdtype(data.dtype, np.integer) and data.min() >= -32768 and data.max() <= 32767:
        data = data.astype(np.int16)
    _save(path, data, affine)


def write_label_nifti(path: str | os.PathLike, labels: np.ndarray, affine: np.ndarray) -> None:
    """Write a (Z, rows, columns) label volume (values 0-255) as uint8 NIfTI (X, Y, Z) with the affine of its
    image, atomically."""
    data = np.asarray(labels)
    if data.min() < 0 or data.max() > 255 or np.any(np.mod(data, 1) != 0):
        raise ValueError(f"{path}: label values must be integers in 0..255, got {data.min()}..{data.max()}")
    _save(path, data.astype(np.uint8).transpose(2, 1, 0), affine)


def _save(path: str | os.PathLike, data: np.ndarray, affine: np.ndarray) -> None:
    """Save (X, Y, Z) ``data`` with ``affine`` as qform and sform, millimetres, atomically."""
    image = nib.Nifti1Image(np.ascontiguousarray(data), affine)
    image.header.set_xyzt_units("mm")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    with atomic_path(path) as tmp:
        nib.save(image, tmp)
