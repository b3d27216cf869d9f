"""Pseudonyms for what names a patient: a keyed hash of PatientID and of series UIDs.

``prepare-dicom`` writes these pseudonyms, never the identifiers, into everything it makes outside
``DIR/private/``: file names, the datalist, the report, its console lines. The key (random, made once per
output folder) and the pseudonym -> identifier table stay in ``DIR/private/``, so the same folder always gives
the same pseudonyms (a re-run continues where it stopped) and the hospital can map results back to patients,
while someone with the shared files and without the key cannot test a guessed PatientID against them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path

from medssl_monai.utils import write_json

__all__ = ["PRIVATE_DIR", "Pseudonyms"]

PRIVATE_DIR = "private"  # under the output folder: never to be shared
KEY_NAME = "pseudonym_key"
TABLE_NAME = "pseudonyms.json"
PREFIXES = {"patient": "P", "series": "SE"}


class Pseudonyms:
    """Keyed pseudonyms of one output folder ``out`` (key and table under ``out/private/``).

    Args:
        out: the output folder.
        keep_ids: use the identifiers themselves (made safe as file names), for data that is anonymous
            already; no key is made.
    """

    def __init__(self, out: str | os.PathLike, keep_ids: bool = False) -> None:
        self.private = Path(out) / PRIVATE_DIR
        self.keep_ids = keep_ids
        self.table: dict[str, dict[str, str]] = {}
        self._key = b""
        if keep_ids:
            return
        self.private.mkdir(parents=True, exist_ok=True)
        os.chmod(self.private, 0o700)
        key_path = self.private / KEY_NAME
        if not key_path.exists():
            fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32) + "\n")
        self._key = bytes.fromhex(key_path.read_text().strip())
        table_path = self.private / TABLE_NAME
        if table_path.exists():
            self.table = json.loads(table_path.read_text())

    def __call__(self, kind: str, value: str) -> str:
        """The pseudonym of ``value`` (a PatientID or a SeriesInstanceUID) of ``kind`` (patient, series)."""
        if self.keep_ids:
            return "".join(c if c.isalnum() or c in "-_." else "_" for c in value) or "unknown"
        digest = hmac.new(self._key, f"{kind}:{value}".encode(), hashlib.sha256).hexdigest()
        name = f"{PREFIXES[kind]}{digest[:16]}"
        self.table.setdefault(name, {"kind": kind, "value": value})
        return name

    def save(self) -> None:
        """Write the pseudonym -> identifier table (atomically) under ``out/private/``."""
        if not self.keep_ids:
            write_json(self.private / TABLE_NAME, self.table)
