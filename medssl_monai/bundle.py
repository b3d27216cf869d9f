"""Helpers that bundle configs call: where a bundle lives, and the demo data they default to."""

from __future__ import annotations

import logging
from pathlib import Path

__all__ = ["bundle_root", "demo_data_dir"]

_SOURCE_ROOT = Path(__file__).resolve().parent.parent  # the checkout, for an editable install
logger = logging.getLogger(__name__)


def bundle_root(name: str) -> str:
    """The folder of bundle ``name``: ``bundles/<name>`` of this checkout, else of the working directory.

    Outputs (``models/``, ``logs/``) go there whatever the working directory; a bundle unpacked elsewhere is
    run with ``--bundle_root PATH``.
    """
    for base in (_SOURCE_ROOT, Path.cwd()):
        candidate = base / "bundles" / name
        if (candidate / "configs").is_dir():
            return str(candidate)
    raise FileNotFoundError(f"bundle {name!r} not found under {_SOURCE_ROOT / 'bundles'} or ./bundles; "
                            "pass --bundle_root PATH")


def demo_data_dir(generate: bool = True) -> str:
    """``data/demo`` of this checkout (``~/.cache/medssl-monai/demo`` for a non-editable install), generated with
    the default settings on first use."""
    root = _SOURCE_ROOT / "data" / "demo" if (_SOURCE_ROOT / "bundles").is_dir() else \
        Path.home() / ".cache" / "medssl-monai" / "demo"
    if generate and not (root / "README.md").is_file():  # written last: a complete collection
        from medssl_monai.data.demo import make_demo_data

        logger.info(f"demo data missing: generating it in {root} (about 30 s)")
        make_demo_data(root)
    return str(root)
