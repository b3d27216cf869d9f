"""CT series from a PACS over DICOMweb: QIDO-RS to find them, WADO-RS to fetch them (``dicomweb-client``).

Credentials come from the environment, never from the command line (where ``ps`` and shell histories would
show them): ``MEDSSL_DICOMWEB_USER`` and ``MEDSSL_DICOMWEB_PASSWORD`` for HTTP basic authentication, or
``MEDSSL_DICOMWEB_TOKEN`` for a bearer token. A server that cannot be reached or refuses access raises
:class:`DICOMwebError` naming the server (without any credentials written into its address) and the remedy.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pydicom
import requests

__all__ = ["DICOMwebError", "DICOMwebSource", "RemoteSeries", "is_url"]

USER_ENV, PASSWORD_ENV, TOKEN_ENV = "MEDSSL_DICOMWEB_USER", "MEDSSL_DICOMWEB_PASSWORD", "MEDSSL_DICOMWEB_TOKEN"
SERIES_FIELDS = ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "Modality", "NumberOfSeriesRelatedInstances")


class DICOMwebError(RuntimeError):
    """The DICOMweb server cannot be used: unreachable, refusing access, or answering an error."""


def is_url(src: str | os.PathLike) -> bool:
    return str(src).startswith(("http://", "https://"))


def _without_credentials(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


@dataclass(frozen=True)
class RemoteSeries:
    """One series as the server lists it."""

    study: str
    uid: str
    patient: str
    modality: str
    instances: int  # NumberOfSeriesRelatedInstances: a series that gains instances is fetched again


class DICOMwebSource:
    """The CT series of a DICOMweb server, optionally limited to a study date range, studies or patients.

    Args:
        url: the DICOMweb root, such as ``http://127.0.0.1:8042/dicom-web``.
        study_dates: ``YYYYMMDD-YYYYMMDD`` (either end may be left open), DICOM's range matching on StudyDate.
        studies: StudyInstanceUIDs to search in; all by default.
        patients: PatientIDs to search for; all by default.
        timeout: seconds for one request.
    """

    def __init__(self, url: str, study_dates: str | None = None, studies: Sequence[str] | None = None,
                 patients: Sequence[str] | None = None, timeout: float = 60.0) -> None:
        from dicomweb_client.api import DICOMwebClient
        from dicomweb_client.session_utils import create_session, create_session_from_user_pass

        self.url, self.name = url.rstrip("/"), _without_credentials(url.rstrip("/"))
        self.study_dates, self.studies, self.patients = study_dates, list(studies or []), list(patients or [])
        self.filtered = bool(study_dates or self.studies or self.patients)
        user, password, token = (os.environ.get(k) for k in (USER_ENV, PASSWORD_ENV, TOKEN_ENV))
        if user and token:
            raise DICOMwebError(f"both {USER_ENV} and {TOKEN_ENV} are set: give one way of authenticating")
        session = create_session_from_user_pass(user, password or "") if user else create_session()
        headers = {"Authorization": f"Bearer {token}"} if token else None
        self.client = DICOMwebClient(self.url, session=session, headers=headers, timeout=timeout)
        # transient failures (503, 429, timeouts, a refused connection) are retried 3 times within about 2 s,
        # not dicomweb-client's 5 within about 40 s: a server that is down is reported promptly
        self.client.set_http_retry_params(max_attempts=3, wait_exponential_multiplier=500)

    def _call(self, what: str, function: Callable, *args, **kwargs):
        try:
            return function(*args, **kwargs)
        except requests.exceptions.HTTPError as err:
            status = err.response.status_code if err.response is not None else "?"
            if status in (401, 403):
                raise DICOMwebError(
                    f"{self.name} refused {what} (HTTP {status}): give credentials in {USER_ENV} and "
                    f"{PASSWORD_ENV}, or a token in {TOKEN_ENV}, with the right to read these series") from None
            reason = err.response.reason if err.response is not None else ""
            # not requests' message: it quotes the request URL, with any credentials and PatientID filter in it
            raise DICOMwebError(f"{self.name} answered {what} with HTTP {status} {reason}".rstrip()) from None
        except requests.exceptions.RequestException as err:
            raise DICOMwebError(f"cannot reach the DICOMweb server {self.name} ({what}): {type(err).__name__}; "
                                "is it running, and is the address right?") from None

    def series(self) -> list[RemoteSeries]:
        """QIDO-RS: every series matching the filters with Modality CT (others are not listed)."""
        filters: dict[str, str] = {"Modality": "CT"}
        if self.study_dates:
            filters["StudyDate"] = self.study_dates
        queries = [dict(filters)]
        if self.patients:
            queries = [dict(q, PatientID=p) for q in queries for p in self.patients]
        found: dict[str, RemoteSeries] = {}
        for query in queries:
            for study in self.studies or [None]:
                rows = self._call("the series search", self.client.search_for_series, study_instance_uid=study,
                                  fields=list(SERIES_FIELDS), search_filters=query, get_remaining=True)
                for row in rows:
                    ds = pydicom.Dataset.from_json(row)
                    uid = str(ds.get("SeriesInstanceUID", ""))
                    if uid:
                        found[uid] = RemoteSeries(str(ds.get("StudyInstanceUID", "") or study or ""), uid,
                                                  str(ds.get("PatientID", "") or "unknown"),
                                                  str(ds.get("Modality", "") or ""),
                                                  int(ds.get("NumberOfSeriesRelatedInstances", 0) or 0))
        return sorted(found.values(), key=lambda s: (s.patient, s.uid))

    def download(self, series: RemoteSeries, folder: str | os.PathLike) -> Iterator[int]:
        """WADO-RS: write the series' instances as DICOM files into ``folder``; yields each file's size."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        instances = self._call("a series retrieval", self.client.iter_series, series.study, series.uid)
        for k, ds in enumerate(self._iterate(instances)):
            path = folder / f"{k:06d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            yield path.stat().st_size

    def _iterate(self, instances: Iterator[pydicom.Dataset]) -> Iterator[pydicom.Dataset]:
        while True:
            try:
                ds = next(instances)
            except StopIteration:
                return
            except requests.exceptions.RequestException as err:
                raise DICOMwebError(f"{self.name}: the retrieval stopped: {type(err).__name__}") from None
            yield ds
