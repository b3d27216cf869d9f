"""DICOM CT, both ways: write a synthetic series the way scanners store it, read a series back to HU.

Reading is strict on purpose: every problem that would give a wrong volume (a missing tag, a gap between
slices, a frame that cannot be decoded) raises :class:`DicomError` naming the file and the reason.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from medssl_monai.data.nifti import lps_affine
from medssl_monai.data.synthetic import SCANNER_FLOOR_HU

__all__ = [
    "CT_IMAGE_STORAGE",
    "DX_IMAGE_STORAGE",
    "DicomError",
    "read_header",
    "series_to_hu",
    "write_ct_series",
    "write_radiograph",
    "uid_from",
]

CT_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.2")
DX_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.1.1")  # Digital X-Ray Image Storage - For Presentation
SPACING_TOLERANCE = 0.01  # relative deviation of one slice gap from the median gap that is still consistent
REQUIRED_TAGS = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns")


class DicomError(ValueError):
    """A DICOM file or series that cannot become a correct HU volume. ``path`` names the culprit."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason

    def __reduce__(self):  # keep both fields across process boundaries
        return type(self), (self.path, self.reason)


def uid_from(*parts: object) -> UID:
    """A deterministic UID derived from ``parts`` (seed, patient, series...)."""
    return generate_uid(entropy_srcs=[str(p) for p in parts])


# --- writing ---------------------------------------------------------------------------------------------
def _base_dataset(sop_class: UID, sop_uid: UID, patient_id: str, study_uid: UID, series_uid: UID) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.PatientID = patient_id
    ds.PatientName = patient_id
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyDate = ds.SeriesDate = "20000101"
    ds.StudyID = "1"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    return ds


def write_ct_series(
    out_dir: str | os.PathLike,
    hu: np.ndarray,
    spacing: tuple[float, float, float],
    origin: tuple[float, float, float],
    patient_id: str,
    study_uid: UID,
    series_uid: UID,
    encoding: str = "unsigned",
    series_number: int = 1,
) -> list[Path]:
    """Write a (Z, rows, columns) HU volume as one CT file per slice, as scanners store them.

    Args:
        encoding: how stored values relate to HU, each seen on real scanners:
            ``unsigned``: uint16, intercept -1024, the scanner floor stored as 0;
            ``padded``: int16, intercept -1024, outside the field stored as PixelPaddingValue -2000;
            ``signed``: int16, intercept 0, outside the field stored as -3024 with no padding tag.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    hu = np.asarray(hu, np.int32)
    floor = hu <= SCANNER_FLOOR_HU
    if encoding == "unsigned":
        intercept, stored = -1024, np.clip(hu + 1024, 0, 65535).astype(np.uint16)
    elif encoding == "padded":
        intercept, stored = -1024, np.where(floor, -2000, hu + 1024).astype(np.int16)
    elif encoding == "signed":
        intercept, stored = 0, np.where(floor, -3024, hu).astype(np.int16)
    else:
        raise ValueError(f"unknown encoding {encoding!r}: expected 'unsigned', 'padded' or 'signed'")
    dz, dy, dx = spacing
    paths = []
    for k in range(hu.shape[0]):
        sop_uid = uid_from(series_uid, k)
        ds = _base_dataset(CT_IMAGE_STORAGE, sop_uid, patient_id, study_uid, series_uid)
        ds.Modality = "CT"
        ds.SeriesNumber = series_number
        ds.InstanceNumber = k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.FrameOfReferenceUID = uid_from(study_uid, "frame")
        ds.ImagePositionPatient = [f"{origin[0]:.4f}", f"{origin[1]:.4f}", f"{origin[2] + k * dz:.4f}"]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.SliceLocation = f"{origin[2] + k * dz:.4f}"
        ds.PixelSpacing = [f"{dy:.4f}", f"{dx:.4f}"]  # row spacing, column spacing
        ds.SliceThickness = f"{dz:.4f}"
        ds.Rows, ds.Columns = hu.shape[1:]
        ds.PixelRepresentation = 0 if stored.dtype == np.uint16 else 1
        ds.RescaleIntercept = str(intercept)
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.KVP = "120"
        if encoding == "padded":
            ds.PixelPaddingValue = -2000
        ds.PixelData = stored[k].tobytes()
        # slices named by position in the series, as LIDC-IDRI's exports are
        path = out_dir / f"1-{k + 1:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_radiograph(
    path: str | os.PathLike, image: np.ndarray, patient_id: str, study_uid: UID, series_uid: UID
) -> Path:
    """Write a 2D projection radiograph (Modality DX): a non-CT series that CT preparation must skip."""
    ds = _base_dataset(DX_IMAGE_STORAGE, uid_from(series_uid, 0), patient_id, study_uid, series_uid)
    ds.Modality = "DX"
    ds.SeriesNumber = 99
    ds.InstanceNumber = 1
    ds.ImagerPixelSpacing = ["0.5", "0.5"]
    ds.Rows, ds.Columns = image.shape
    ds.PixelRepresentation = 0
    ds.PixelData = np.asarray(image, np.uint16).tobytes()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


# --- reading ---------------------------------------------------------------------------------------------
def read_header(path: str | os.PathLike) -> Dataset:
    """Read a file's DICOM header (no pixels). Raises :class:`DicomError` for a non-DICOM or truncated file."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        raise DicomError(path, "not a DICOM file (no DICM preamble)") from None
    except (EOFError, OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise DicomError(path, f"unreadable or truncated DICOM header ({type(err).__name__}: {err})") from None


def _decode_slice(path: str) -> tuple[Dataset, np.ndarray]:
    """Read one slice with pixels and return (dataset, HU array (rows, columns) float64)."""
    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise DicomError(path, f"unreadable DICOM file ({type(err).__name__}: {err})") from None
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if syntax is not None and syntax.is_compressed:
        from pydicom.pixels import get_decoder

        try:
            available = get_decoder(syntax).is_available
        except NotImplementedError:
            available = False
        if not available:
            raise DicomError(
                path,
                f"compressed transfer syntax '{syntax.name}' ({syntax}) and no decoder installed for it "
                "(install pylibjpeg with its plugins, or python-gdcm)",
            )
    try:
        stored = ds.pixel_array
    except Exception as err:  # pydicom raises many types for damaged pixel data
        raise DicomError(path, f"pixel data cannot be decoded ({type(err).__name__}: {err})") from None
    if stored.ndim != 2:
        raise DicomError(path, f"expected one 2D frame per file, found pixel array of shape {stored.shape}")
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    hu = stored.astype(np.float64) * slope + intercept
    padding = ds.get("PixelPaddingValue")
    if padding is not None:
        hu[stored == padding] = SCANNER_FLOOR_HU
    # values below the scanner floor are out-of-field padding (-2000, -3024...), not tissue
    np.maximum(hu, SCANNER_FLOOR_HU, out=hu)
    return ds, hu


def series_to_hu(paths: Sequence[str | os.PathLike]) -> tuple[np.ndarray, np.ndarray]:
    """Read one CT series into (HU volume (Z, rows, columns), RAS affine (4, 4)).

    Slices are ordered by ImagePositionPatient along the slice normal. Raises :class:`DicomError` on a
    missing tag, mixed orientation or size, duplicate positions, or a slice gap that differs from the others.
    """
    headers = []
    for p in paths:
        ds = read_header(p)
        missing = [tag for tag in REQUIRED_TAGS if tag not in ds or ds.get(tag) in (None, "")]
        if missing:
            raise DicomError(p, f"missing required tag(s) {', '.join(missing)}")
        headers.append((str(p), ds))
    first = headers[0][1]
    orientation = np.asarray(first.ImageOrientationPatient, float)
    shape = (int(first.Rows), int(first.Columns))
    for p, ds in headers[1:]:
        if not np.allclose(np.asarray(ds.ImageOrientationPatient, float), orientation, atol=1e-4):
            raise DicomError(p, "ImageOrientationPatient differs from the rest of the series")
        if (int(ds.Rows), int(ds.Columns)) != shape:
            raise DicomError(p, f"image size {ds.Rows}x{ds.Columns} differs from the series' {shape[0]}x{shape[1]}")
    normal = np.cross(orientation[:3], orientation[3:])
    positions = np.array([float(np.dot(normal, np.asarray(ds.ImagePositionPatient, float))) for _, ds in headers])
    order = np.argsort(positions)
    headers = [headers[i] for i in order]
    positions = positions[order]
    if len(headers) > 1:
        gaps = np.diff(positions)
        if np.any(gaps < 1e-3):
            dup = headers[int(np.argmin(gaps)) + 1][0]
            raise DicomError(dup, "two slices share one ImagePositionPatient (duplicate or second series?)")
        median = float(np.median(gaps))
        bad = np.abs(gaps - median) > SPACING_TOLERANCE * median
        if bad.any():
            i = int(np.argmax(bad))
            raise DicomError(
                headers[i + 1][0],
                f"inconsistent slice spacing: gap {gaps[i]:.3f} mm after {Path(headers[i][0]).name} "
                f"where the series' gap is {median:.3f} mm (missing or extra slice?)",
            )
        dz = median
    else:
        dz = float(first.get("SliceThickness", 1.0) or 1.0)
    volume = np.empty((len(headers), *shape), np.float64)
    for k, (p, _) in enumerate(headers):
        _, volume[k] = _decode_slice(p)
    dy, dx = (float(v) for v in first.PixelSpacing)
    affine = lps_affine(orientation, np.asarray(headers[0][1].ImagePositionPatient, float), (dz, dy, dx), normal)
    return volume, affine
