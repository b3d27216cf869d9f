"""Packing a trained bundle into one zip for a clinical team or MONAI Label."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

from medssl_monai.bundle.roots import bundle_root
from medssl_monai.utils.files import atomic_path

__all__ = ["PACKED", "pack_bundle"]

# what a shared bundle holds: configs, docs, licence, the sample image, the trained weights and the settings
# they were trained with (model.json, read by inference.json), not logs or training checkpoints
PACKED = ("configs", "docs", "LICENSE", "sample.png", "models/model.pt", "models/model.json", "models/model.ts",
          "scripts")


def pack_bundle(name: str, out: str | os.PathLike, root: str | os.PathLike | None = None) -> Path:
    """Zip bundle ``name`` (a single top folder of that name) with its trained ``models/model.pt``."""
    root = Path(root or bundle_root(name))
    if not (root / "models" / "model.pt").is_file():
        raise FileNotFoundError(f"{root / 'models' / 'model.pt'} does not exist: train the bundle first")
    out = Path(out)
    with atomic_path(out) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
        for entry in PACKED:
            path = root / entry
            files = sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts) \
                if path.is_dir() else [path] if path.is_file() else []
            for f in files:
                archive.write(f, Path(name) / f.relative_to(root))
    return out
