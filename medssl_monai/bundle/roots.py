"""Where things live: the checkout, a bundle's folder, the demo data."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["SOURCE_ROOT", "bundle_default", "bundle_root", "demo_root"]

SOURCE_ROOT = Path(__file__).resolve().parents[2]  # the checkout, for an editable install


def bundle_root(name: str) -> str:
    """The folder of bundle ``name``: ``bundles/<name>`` of this checkout, else of the working directory.

    Outputs (``models/``, ``logs/``) go there whatever the working directory; a bundle unpacked elsewhere is
    run with ``--bundle_root PATH``.
    """
    for base in (SOURCE_ROOT, Path.cwd()):
        candidate = base / "bundles" / name
        if (candidate / "configs").is_dir():
            return str(candidate)
    raise FileNotFoundError(f"bundle {name!r} not found under {SOURCE_ROOT / 'bundles'} or ./bundles; "
                            "pass --bundle_root PATH")


def bundle_default(name: str, key: str, config: str = "train.json"):
    """The value of top-level id ``key`` in bundle ``name``'s ``configs/<config>`` (its default); for an overlay
    such as ``train_3d.json`` that leaves ``key`` alone, the value in ``train.json`` it is laid over."""
    configs = Path(bundle_root(name)) / "configs"
    for file in dict.fromkeys([config, "train.json"]):
        content = json.loads((configs / file).read_text())
        if key in content:
            return content[key]
    raise KeyError(f"{configs / config} has no top-level id {key!r}")


def demo_root() -> Path:
    """Where the demo data lives: ``data/demo`` of this checkout, ``~/.cache/medssl-monai/demo`` for a
    non-editable install. ``medssl-monai demo-data`` writes it there by default."""
    if (SOURCE_ROOT / "bundles").is_dir():
        return SOURCE_ROOT / "data" / "demo"
    return Path.home() / ".cache" / "medssl-monai" / "demo"
