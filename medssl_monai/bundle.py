"""Helpers that bundle configs call (where a bundle lives, the demo data and encoder they default to), and
packing a bundle for sharing.

Evaluating a default has no side effect: the demo data and the demo encoder are looked up, never made; when
they are missing the error names the command that makes them (``medssl-monai demo-data``, the SparK bundle).
"""

from __future__ import annotations

import json
import logging
import os
import zipfile
from pathlib import Path

from medssl_monai.utils import atomic_path

__all__ = ["bundle_root", "compose_config", "composed_pretrain_configs", "demo_data_dir", "demo_encoder", "demo_root",
           "pack_bundle"]

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


def demo_root() -> Path:
    """Where the demo data lives: ``data/demo`` of this checkout, ``~/.cache/medssl-monai/demo`` for a
    non-editable install. ``medssl-monai demo-data`` writes it there by default."""
    if (_SOURCE_ROOT / "bundles").is_dir():
        return _SOURCE_ROOT / "data" / "demo"
    return Path.home() / ".cache" / "medssl-monai" / "demo"


def demo_data_dir() -> str:
    """The demo data folder, the bundles' default ``dataset_dir``; a check, never a generator.

    Raises:
        FileNotFoundError: the demo data is missing or was made by another generator version; the message
            gives the command that makes it.
    """
    from medssl_monai.data.demo import demo_data_version

    root = demo_root()
    version = demo_data_version(root)
    if version is None or version[0] != version[1]:
        state = "is missing" if version is None else f"was made by generator version {version[0]}, not {version[1]}"
        raise FileNotFoundError(f"the demo data in {root} {state}: make it with `medssl-monai demo-data` (about a "
                                "minute on 2 cores), or pass --dataset_dir with your own data")
    return str(root)


def demo_encoder(method: str = "spark", backbone: str | None = None) -> str:
    """``models/encoder.pt`` of this checkout's ``<method>_pretrain`` bundle: ``ct_classification``'s default
    starting point, which must exist and (when ``backbone`` is given) be of that architecture.

    Raises:
        FileNotFoundError, ValueError: the encoder is missing or of another backbone; the message gives the
            command that makes it, and the way to train from scratch instead.
    """
    path = _SOURCE_ROOT / "bundles" / f"{method}_pretrain" / "models" / "encoder.pt"
    make = (f"make it with `python -m monai.bundle run --config_file bundles/{method}_pretrain/configs/train.json"
            + (f" --backbone {backbone}`" if backbone else "`")
            + ", or pass --pretrained_checkpoint PATH (none: from scratch)")
    if not path.is_file():
        raise FileNotFoundError(f"no {method} demo encoder at {path}: {make}")
    if backbone is not None:
        from medssl_monai.networks.pretrained import detect_backbone

        trained, _, _ = detect_backbone(path)
        if trained != backbone:
            raise ValueError(f"the {method} demo encoder {path} is a {trained}, this run a {backbone}: {make}")
    logger.info(f"starting from the {method} demo encoder {path}")
    return str(path)


# the four pre-training bundles' configs are composed from one shared source (see bundles/_shared/README.md)
PRETRAIN_METHODS = ("spark", "moco", "byol", "swav")
PRETRAIN_CONFIGS = ("train.json", "multi_gpu_train.json")
METHOD_IDS = "__method_ids__"  # where a method's own top-level ids go in the composed config


def compose_config(common: dict, overlay: dict) -> dict:
    """``common`` with ``overlay`` applied. A key with MONAI's ``#`` separator (``train#trainer#image_key``,
    list positions as numbers) sets that nested value of ``common``; a plain key replaces a top-level id. New
    ids, and ``#`` keys whose parent ``common`` lacks (MONAI overrides such as ``network_def#sync_bn`` in a
    ``multi_gpu_train.json``), take the place of ``common``'s :data:`METHOD_IDS` marker, or go last."""
    out = json.loads(json.dumps(common))  # a deep copy
    new = {}
    for key, value in overlay.items():
        *parents, last = key.split("#")
        node = out
        try:
            for part in parents:
                node = node[int(part)] if isinstance(node, list) else node[part]
        except (KeyError, IndexError, ValueError):
            node = None
        if node is None or not parents and key not in out:
            new[key] = value
        else:
            node[int(last) if isinstance(node, list) else last] = value
    items = list(out.items())
    at = next((i for i, (k, _) in enumerate(items) if k == METHOD_IDS), len(items))
    return _target_first(dict(items[:at] + list(new.items()) + items[at + 1:]))


def _target_first(node: object) -> object:
    """Every object of a config with its ``_target_`` listed first, as a reader expects."""
    if isinstance(node, list):
        return [_target_first(v) for v in node]
    if not isinstance(node, dict):
        return node
    keys = sorted(node, key=lambda k: k != "_target_")  # stable: the rest keep their order
    return {k: _target_first(node[k]) for k in keys}


def composed_pretrain_configs(shared: str | os.PathLike | None = None) -> dict[Path, str]:
    """bundles/<method>_pretrain/configs/<config> -> its composed text, for each pre-training method."""
    shared = Path(shared or _SOURCE_ROOT / "bundles" / "_shared" / "pretrain")
    out = {}
    for config in PRETRAIN_CONFIGS:
        common = json.loads((shared / config).read_text())
        for method in PRETRAIN_METHODS:
            overlay_file = shared / method / config
            overlay = json.loads(overlay_file.read_text()) if overlay_file.is_file() else {}
            text = json.dumps(compose_config(common, overlay), indent=4) + "\n"
            out[shared.parent.parent / f"{method}_pretrain" / "configs" / config] = text
    return out


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
