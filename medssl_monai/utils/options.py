"""Reading bundle ids as they arrive from the command line."""

from __future__ import annotations

from typing import Any

__all__ = ["as_bool"]


def as_bool(value: Any, name: str) -> bool:
    """A boolean id as given on the command line: ``python -m monai.bundle run --resume false`` passes the
    string ``"false"``, which Python would take as true."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no", "none"):
        return False
    raise ValueError(f"{name} must be true or false, got {value!r}")
