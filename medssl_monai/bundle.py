"""Helpers that bundle configs call (where a bundle lives, the demo data and encoder they default to), and
packing a bundle for sharing."""

from __future__ import annotations

import logging
import os
import zipfile
from pathlib import Path

from medssl_monai.utils import atomic_path

__all__ = ["bundle_root", "demo_data_dir", "demo_encoder", "pack_bundle"]

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
    the default settings on first use, and again when it was made by another version of the generator."""
    root = _SOURCE_ROOT / "data" / "demo" if (_SOURCE_ROOT / "bundles").is_dir() else \
        Path.home() / ".cache" / "medssl-monai" / "demo"
    if generate:
        from medssl_monai.data.demo import ensure_demo_data

        ensure_demo_data(root)
    return str(root)


def demo_encoder(method: str = "spark", backbone: str | None = None) -> str | None:
    """``models/encoder.pt`` of this checkout's ``<method>_pretrain`` bundle when it has been trained (as a
    ``backbone`` network, when given), else None: the classifier then starts from scratch, and the log says why.

    This is only the demo's default: a ``--pretrained_checkpoint`` given explicitly is never replaced, and one
    that does not fit the network is an error.
    """
    path = _SOURCE_ROOT / "bundles" / f"{method}_pretrain" / "models" / "encoder.pt"
    if not path.is_file():
        logger.warning(f"no demo {method} encoder at {path} (run the {method}_pretrain bundle first): "
                       "training from scratch")
        return None
    if backbone is not None:
        from medssl_monai.networks.pretrained import detect_backbone

        trained, _, _ = detect_backbone(path)
        if trained != backbone:
            logger.warning(f"the demo {method} encoder {path} is a {trained}, this run a {backbone}: training "
                           f"from scratch (pre-train a {backbone} or pass --pretrained_checkpoint PATH)")
            return None
    logger.info(f"starting from the demo {method} encoder {path}")
    return str(path)


# what a shared bundle holds: configs, docs, licence, the sample image and the trained weights, not logs or
# training checkpoints
PACKED = ("configs", "docs", "LICENSE", "sample.png", "models/model.pt", "models/model.ts", "scripts")


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
