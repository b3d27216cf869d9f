"""Reading bundle ids as they arrive from the command line."""

from __future__ import annotations

from typing import Any

__all__ = ["BOOL_WORDS", "as_bool"]

TRUE_WORDS, FALSE_WORDS = ("true", "1", "yes"), ("false", "0", "no", "none")
BOOL_WORDS = TRUE_WORDS + FALSE_WORDS  # what the command line may say for a boolean


def as_bool(value: Any, name: str) -> bool:
    """A boolean id as given on the command line: ``python -m monai.bundle run --resume false`` passes the
    string ``"false"``, which Python would take as true."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in TRUE_WORDS:
        return True
    if text in FALSE_WORDS:
        return False
    raise ValueError(f"{name} must be true or false, got {value!r}")
