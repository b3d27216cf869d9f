"""``prepare-dicom``: a LIDC-IDRI-like DICOM tree to one HU NIfTI per CT series and a MONAI datalist.

Files are grouped into series by SeriesInstanceUID (never by folder), kept when Modality is CT (never by
file count), ordered by ImagePositionPatient and converted to HU. Every file or series that cannot be used
is reported with its path and the reason. Outputs are written atomically, so a killed run leaves only
complete files and a re-run continues where it stopped.
"""

from __future__ import annotations

import os
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from medssl_monai.data.dicom import DicomError, read_header, series_to_hu
from medssl_monai.data.nifti import write_ct_nifti
from medssl_monai.utils import write_json

__all__ = ["PrepareError", "PrepareReport", "prepare_dicom"]

REPORT_NAME = "prepare_report.json"
DATALIST_NAME = "datalist.json"


class PrepareError(RuntimeError):
    """Raised with ``on_error="fail"`` at the first file or series that cannot be prepared."""


@dataclass
class PrepareReport:
    """What a preparation run did: series converted, found done, and everything skipped with its reason."""

    converted: list[str] = field(default_factory=list)
    already_done: list[str] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"path", "series", "reason"}
    slices: int = 0

    def summary(self) -> str:
        lines = [
            f"series kept: {len(self.converted) + len(self.already_done)} "
            f"({len(self.converted)} converted, {len(self.already_done)} already done), "
            f"{self.slices} slices converted",
            f"skipped: {len(self.skipped)}",
        ]
        lines += [f"  {s['path']}: {s['reason']}" for s in self.skipped]
        return "\n".join(lines)


@dataclass
class _Series:
    uid: str
    patient: str
    modality: str
    files: list[str]


def _header_row(path: str) -> tuple[str, dict[str, str] | str]:
    """(path, selected header fields) or (path, reason) for one file; runs in worker processes."""
    try:
        ds = read_header(path)
    except DicomError as err:
        return path, err.reason
    uid = str(ds.get("SeriesInstanceUID", "") or "")
    if not uid:
        return path, "missing required tag SeriesInstanceUID"
    return path, {
        "uid": uid,
        "patient": str(ds.get("PatientID", "") or "unknown"),
        "modality": str(ds.get("Modality", "") or ""),
    }


def _convert(args: tuple[_Series, str]) -> tuple[str, int, DicomError | None]:
    """Convert one series to NIfTI; returns (series uid, slices, error or None); runs in worker processes."""
    series, out_path = args
    try:
        hu, affine = series_to_hu(series.files)
    except DicomError as err:
        return series.uid, 0, err
    write_ct_nifti(out_path, hu, affine)
    return series.uid, hu.shape[0], None


def _output_path(out: Path, series: _Series) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in series.patient)
    return out / "images" / safe / f"{series.uid}.nii.gz"


def prepare_dicom(
    src: str | os.PathLike,
    out: str | os.PathLike,
    on_error: str = "skip",
    val_fraction: float = 0.1,
    seed: int = 0,
    workers: int | None = None,
    progress: bool = True,
) -> PrepareReport:
    """Convert every CT series under ``src`` and write ``out/datalist.json`` and ``out/prepare_report.json``.

    Args:
        on_error: ``skip`` reports bad files and series and goes on; ``fail`` raises :class:`PrepareError`
            at the first one (outputs already written stay complete and are reused by the next run).
        val_fraction: share of patients in the datalist's ``validation`` list (at least one when there are two
            or more patients); the split is by patient, seeded by ``seed``.
        workers: processes for header reading and conversion; all cores by default.
    """
    if on_error not in ("skip", "fail"):
        raise ValueError(f"on_error must be 'skip' or 'fail', got {on_error!r}")
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise FileNotFoundError(f"DICOM source folder does not exist: {src}")
    report = PrepareReport()

    def problem(path: str, reason: str, series: str = "") -> None:
        if on_error == "fail":
            raise PrepareError(f"{path}: {reason}")
        report.skipped.append({"path": path, "series": series, "reason": reason})

    files = sorted(str(p) for p in src.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise FileNotFoundError(f"no files found under {src}")
    groups: dict[str, _Series] = {}
    workers = workers or os.cpu_count() or 1
    with ProcessPoolExecutor(max_workers=workers) as pool:
        rows = pool.map(_header_row, files, chunksize=max(1, len(files) // (8 * workers)))
        for path, row in tqdm(rows, total=len(files), desc="reading headers", disable=not progress):
            if isinstance(row, str):
                problem(path, row)
                continue
            series = groups.setdefault(row["uid"], _Series(row["uid"], row["patient"], row["modality"], []))
            series.files.append(path)

        todo = []
        folders: dict[str, set[str]] = defaultdict(set)
        for series in groups.values():
            for f in series.files:
                folders[os.path.dirname(f)].add(series.uid)
        for series in sorted(groups.values(), key=lambda s: (s.patient, s.uid)):
            if series.modality != "CT":
                problem(os.path.commonpath(series.files), f"modality {series.modality or 'missing'} is not CT", series.uid)
                continue
            target = _output_path(out, series)
            if target.exists():
                report.already_done.append(series.uid)
            else:
                todo.append((series, str(target)))
        for folder, uids in folders.items():
            if len(uids) > 1:  # not an error: grouping is by UID, but worth telling
                print(f"note: {folder} holds {len(uids)} series; they are separated by SeriesInstanceUID")

        results = pool.map(_convert, todo)
        for uid, n, error in tqdm(results, total=len(todo), desc="converting series", disable=not progress):
            if error is not None:
                problem(error.path, error.reason, uid)
                continue
            report.converted.append(uid)
            report.slices += n

    kept = [s for s in groups.values() if s.uid in set(report.converted) | set(report.already_done)]
    patients = sorted({s.patient for s in kept})
    rng = np.random.default_rng(seed)
    n_val = max(1, round(val_fraction * len(patients))) if len(patients) > 1 and val_fraction > 0 else 0
    val = set(rng.permutation(patients)[:n_val].tolist())
    datalist: dict[str, list[dict[str, str]]] = {"training": [], "validation": []}
    for s in sorted(kept, key=lambda s: (s.patient, s.uid)):
        entry = {"image": os.path.relpath(_output_path(out, s), out), "patient": s.patient}
        datalist["validation" if s.patient in val else "training"].append(entry)
    write_json(out / DATALIST_NAME, datalist)
    write_json(out / REPORT_NAME, asdict(report))
    return report
