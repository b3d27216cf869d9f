"""``prepare-dicom``: CT series from a DICOM folder tree or a DICOMweb PACS to HU NIfTI volumes and a datalist.

Series are identified by SeriesInstanceUID (never by folder), kept when Modality is CT (never by file count),
ordered by ImagePositionPatient and converted to HU by :func:`~medssl_monai.data.dicom.series_to_hu`, the
same strict reader for both sources. Every file or series that cannot be used is reported with the reason.
Outputs are written atomically, so a killed run leaves only complete files and a re-run continues where it
stopped; from a PACS, a series is fetched again only when the server lists more instances than were converted.

Nothing written outside ``out/private/`` names a patient: file names, the datalist, ``prepare_report.json`` and
the console lines use keyed pseudonyms of PatientID and SeriesInstanceUID (study UIDs are not written at
all; :class:`~medssl_monai.data.pseudonyms.Pseudonyms`), and source paths (which often carry a patient's ID or
name) are reported only in ``out/private/prepare_report.json``. ``keep_patient_ids`` opts out for data that is
anonymous already.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from medssl_monai.data.dicom import DicomError, read_header, series_to_hu
from medssl_monai.data.dicomweb import DICOMwebError, DICOMwebSource, is_url
from medssl_monai.data.nifti import write_ct_nifti
from medssl_monai.data.pseudonyms import PRIVATE_DIR, Pseudonyms
from medssl_monai.utils import worker_pool, write_json

__all__ = ["PrepareError", "PrepareReport", "prepare_dicom"]

REPORT_NAME = "prepare_report.json"
DATALIST_NAME = "datalist.json"
FETCHED_NAME = "fetched.json"  # under private/: series UID -> instances converted, from a PACS


class PrepareError(RuntimeError):
    """Raised with ``on_error="fail"`` at the first file or series that cannot be prepared, or when the source
    cannot be read at all (a missing folder, a DICOMweb server that is down or refuses access)."""


@dataclass
class _Series:
    uid: str
    patient: str
    modality: str
    files: list[str]


@dataclass
class PrepareReport:
    """What a preparation run did: series converted, found done, and everything skipped with its reason.

    ``converted`` and ``already_done`` hold series pseudonyms. ``skipped`` entries hold ``path`` (the source
    file or series folder, or the PACS series UID), ``series`` (its UID, if known), ``pseudonym`` (the series')
    and ``reason``; outside ``private/`` they are written without ``path`` and ``series`` (:meth:`shareable`).
    """

    converted: list[str] = field(default_factory=list)
    already_done: list[str] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    slices: int = 0
    megabytes_fetched: float = 0.0
    pseudonymised: bool = True

    def shareable(self) -> dict:
        """The report without source paths and UIDs, unless ids are kept."""
        skipped = [{"pseudonym": s["pseudonym"], "reason": s["reason"]} if self.pseudonymised else dict(s)
                   for s in self.skipped]
        return {"converted": self.converted, "already_done": self.already_done, "skipped": skipped,
                "slices": self.slices, "megabytes_fetched": round(self.megabytes_fetched, 1),
                "pseudonymised": self.pseudonymised}

    def full(self) -> dict:
        """The report with source paths and UIDs, for ``private/``."""
        return {**self.shareable(), "skipped": self.skipped}

    def describe(self, entry: dict[str, str]) -> str:
        """What a skipped entry names on the console: its path, or its series pseudonym."""
        if not self.pseudonymised:
            return entry["path"]
        return f"series {entry['pseudonym']}" if entry["pseudonym"] else "a file that is not a readable DICOM"

    def summary(self, out: str | os.PathLike) -> str:
        lines = [
            f"series kept: {len(self.converted) + len(self.already_done)} "
            f"({len(self.converted)} converted, {len(self.already_done)} already done), "
            f"{self.slices} slices converted" + (f", {self.megabytes_fetched:.1f} MB fetched"
                                                 if self.megabytes_fetched else ""),
            f"skipped: {len(self.skipped)}",
        ]
        lines += [f"  {self.describe(entry)}: {entry['reason']}" for entry in self.skipped]
        if self.pseudonymised and self.skipped:
            lines.append(f"  (their source paths and UIDs: {Path(out) / PRIVATE_DIR / REPORT_NAME}, not to be shared)")
        return "\n".join(lines)


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


class _Run:
    """One preparation: the output folder, its pseudonyms and the report being filled."""

    def __init__(self, out: Path, on_error: str, keep_patient_ids: bool, workers: int, progress: bool) -> None:
        self.out, self.on_error, self.workers, self.progress = out, on_error, workers, progress
        self.pseudonyms = Pseudonyms(out, keep_ids=keep_patient_ids)
        self.private = out / PRIVATE_DIR
        self.report = PrepareReport(pseudonymised=not keep_patient_ids)

    def problem(self, path: str, reason: str, series: str = "") -> None:
        entry = {"path": path, "series": series, "pseudonym": self.pseudonyms("series", series) if series else "",
                 "reason": reason}
        self.report.skipped.append(entry)
        if self.on_error == "fail":
            self.write_reports()
            hint = f" (its source: {self.private / REPORT_NAME})" if self.report.pseudonymised else ""
            raise PrepareError(f"{self.report.describe(entry)}: {reason}{hint}")

    def target(self, series: _Series) -> Path:
        patient = self.pseudonyms("patient", series.patient)
        return self.out / "images" / patient / f"{self.pseudonyms('series', series.uid)}.nii.gz"

    def write_reports(self) -> None:
        write_json(self.out / REPORT_NAME, self.report.shareable())
        if self.report.pseudonymised:
            write_json(self.private / REPORT_NAME, self.report.full())
        self.pseudonyms.save()

    def finish(self, kept: list[_Series], val_fraction: float, seed: int) -> PrepareReport:
        """The datalist (split by patient) of the series kept, and the reports."""
        patients = sorted({self.pseudonyms("patient", s.patient) for s in kept})
        rng = np.random.default_rng(seed)
        n_val = max(1, round(val_fraction * len(patients))) if len(patients) > 1 and val_fraction > 0 else 0
        val = set(rng.permutation(patients)[:n_val].tolist())
        datalist: dict[str, list[dict[str, str]]] = {"training": [], "validation": []}
        for series in sorted(kept, key=lambda s: str(self.target(s))):
            patient = self.pseudonyms("patient", series.patient)
            entry = {"image": os.path.relpath(self.target(series), self.out), "patient": patient}
            datalist["validation" if patient in val else "training"].append(entry)
        write_json(self.out / DATALIST_NAME, datalist)
        self.write_reports()
        return self.report


def prepare_dicom(
    src: str | os.PathLike,
    out: str | os.PathLike,
    on_error: str = "skip",
    val_fraction: float = 0.1,
    seed: int = 0,
    workers: int | None = None,
    progress: bool = True,
    keep_patient_ids: bool = False,
    study_dates: str | None = None,
    studies: Sequence[str] | None = None,
    patients: Sequence[str] | None = None,
) -> PrepareReport:
    """Convert every CT series of ``src`` and write ``out/datalist.json`` and ``out/prepare_report.json``.

    Args:
        src: a folder tree of DICOM files, or a DICOMweb root URL (``http(s)://.../dicom-web``; credentials
            from the environment, see :mod:`medssl_monai.data.dicomweb`).
        on_error: ``skip`` reports bad files and series and goes on; ``fail`` raises :class:`PrepareError`
            at the first one (outputs already written stay complete and are reused by the next run).
        val_fraction: share of patients in the datalist's ``validation`` list (at least one when there are two
            or more patients); the split is by patient, seeded by ``seed``.
        workers: processes for header reading and conversion; all cores by default.
        keep_patient_ids: name outputs by PatientID and UIDs instead of pseudonyms (anonymous data only).
        study_dates, studies, patients: for a DICOMweb source, search only this StudyDate range
            (``YYYYMMDD-YYYYMMDD``), these StudyInstanceUIDs, these PatientIDs.
    """
    if on_error not in ("skip", "fail"):
        raise ValueError(f"on_error must be 'skip' or 'fail', got {on_error!r}")
    out = Path(out)
    remote = is_url(src)
    if not remote and (study_dates or studies or patients):
        raise ValueError("study_dates, studies and patients filter a DICOMweb search; a folder is read whole")
    if not remote and not Path(src).is_dir():
        raise FileNotFoundError(f"DICOM source folder does not exist: {src}")
    out.mkdir(parents=True, exist_ok=True)
    run = _Run(out, on_error, keep_patient_ids, workers or os.cpu_count() or 1, progress)
    with worker_pool(run.workers) as pool:
        if remote:
            source = DICOMwebSource(str(src), study_dates=study_dates, studies=studies, patients=patients)
            kept = _from_dicomweb(run, source, pool)
        else:
            kept = _from_folder(run, Path(src), pool)
    return run.finish(kept, val_fraction, seed)


def _convert_all(run: _Run, todo: list[_Series], pool: ProcessPoolExecutor, desc: str) -> set[str]:
    """Convert ``todo`` in the worker processes; returns the UIDs converted."""
    done = set()
    results = pool.map(_convert, [(s, str(run.target(s))) for s in todo])
    for uid, n, error in tqdm(results, total=len(todo), desc=desc, disable=not run.progress):
        if error is not None:
            run.problem(error.path, error.reason, uid)
            continue
        run.report.converted.append(run.pseudonyms("series", uid))
        run.report.slices += n
        done.add(uid)
    return done


def _from_folder(run: _Run, src: Path, pool: ProcessPoolExecutor) -> list[_Series]:
    files = sorted(str(p) for p in src.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise FileNotFoundError(f"no files found under {src}")
    groups: dict[str, _Series] = {}
    rows = pool.map(_header_row, files, chunksize=max(1, len(files) // (8 * run.workers)))
    for path, row in tqdm(rows, total=len(files), desc="reading headers", disable=not run.progress):
        if isinstance(row, str):
            run.problem(path, row)
            continue
        series = groups.setdefault(row["uid"], _Series(row["uid"], row["patient"], row["modality"], []))
        series.files.append(path)

    folders: dict[str, set[str]] = defaultdict(set)
    for series in groups.values():
        for f in series.files:
            folders[os.path.dirname(f)].add(series.uid)
    several = sum(len(uids) > 1 for uids in folders.values())
    if several:  # not an error: grouping is by UID, but worth telling
        print(f"note: {several} folder(s) hold more than one series; they are separated by SeriesInstanceUID")
    todo, kept = [], []
    for series in sorted(groups.values(), key=lambda s: (s.patient, s.uid)):
        if series.modality != "CT":
            run.problem(os.path.commonpath(series.files), f"modality {series.modality or 'missing'} is not CT",
                        series.uid)
        elif run.target(series).exists():
            run.report.already_done.append(run.pseudonyms("series", series.uid))
            kept.append(series)
        else:
            todo.append(series)
    converted = _convert_all(run, todo, pool, "converting series")
    return kept + [s for s in todo if s.uid in converted]


def _from_dicomweb(run: _Run, source: DICOMwebSource, pool: ProcessPoolExecutor) -> list[_Series]:
    """Search, fetch what is new or grew (into ``private/fetch/``, removed once converted), convert."""
    try:
        listed = source.series()
    except DICOMwebError as err:
        raise PrepareError(str(err)) from None
    if not listed:
        raise PrepareError(f"{source.name} lists no CT series" + (" matching the filters" if source.filtered else ""))
    fetched_path = run.private / FETCHED_NAME
    fetched: dict[str, int] = json.loads(fetched_path.read_text()) if fetched_path.exists() else {}
    kept, pending = [], []
    bar = tqdm(total=len(listed), desc="fetching series", unit="series", disable=not run.progress)
    for remote in listed:
        bar.update()
        series = _Series(remote.uid, remote.patient, remote.modality, [])
        if remote.modality != "CT":  # a server that ignores the Modality filter
            run.problem(remote.uid, f"modality {remote.modality or 'missing'} is not CT", remote.uid)
            continue
        if run.target(series).exists() and fetched.get(remote.uid, -1) >= remote.instances:
            run.report.already_done.append(run.pseudonyms("series", remote.uid))
            kept.append(series)
            continue
        folder = run.private / "fetch" / run.pseudonyms("series", remote.uid)
        shutil.rmtree(folder, ignore_errors=True)  # a fetch a killed run left half done
        try:
            for size in source.download(remote, folder):
                run.report.megabytes_fetched += size / 1e6
                bar.set_postfix_str(f"{run.report.megabytes_fetched:.1f} MB")
        except DICOMwebError as err:
            shutil.rmtree(folder, ignore_errors=True)
            run.problem(remote.uid, str(err), remote.uid)
            continue
        series.files = sorted(str(p) for p in folder.glob("*.dcm"))
        modality = _fetched_modality(series.files)
        if not series.files:
            run.problem(remote.uid, "the server returned no instances for this series", remote.uid)
            continue
        if modality is not None and modality != "CT":
            shutil.rmtree(folder, ignore_errors=True)
            run.problem(remote.uid, f"modality {modality or 'missing'} is not CT", remote.uid)
            continue
        pending.append((series, len(series.files)))
        if len(pending) >= run.workers:  # convert in batches: private/fetch holds at most `workers` series
            kept += _convert_fetched(run, pending, pool, fetched, fetched_path)
            pending = []
    bar.close()
    kept += _convert_fetched(run, pending, pool, fetched, fetched_path)
    shutil.rmtree(run.private / "fetch", ignore_errors=True)
    return kept


def _fetched_modality(files: list[str]) -> str | None:
    """The first fetched file's Modality ("" when the tag is missing); None when its header cannot be read,
    which the strict conversion then reports with the file's reason."""
    try:
        return str(read_header(files[0]).get("Modality", "") or "") if files else ""
    except DicomError:
        return None


def _convert_fetched(run: _Run, pending: list[tuple[_Series, int]], pool: ProcessPoolExecutor,
                     fetched: dict[str, int], fetched_path: Path) -> list[_Series]:
    converted = _convert_all(run, [s for s, _ in pending], pool, "converting series") if pending else set()
    for series, instances in pending:
        shutil.rmtree(Path(series.files[0]).parent, ignore_errors=True)
        if series.uid in converted:
            fetched[series.uid] = instances
    write_json(fetched_path, fetched)
    return [s for s, _ in pending if s.uid in converted]
