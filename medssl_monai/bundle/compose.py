"""The four pre-training bundles' configs, composed from one shared source (``templates/pretrain`` beside this
module, see its README): what they share is written once, and each composed ``train.json`` stays self-contained."""

from __future__ import annotations

import json
import os
from pathlib import Path

from medssl_monai.bundle.roots import SOURCE_ROOT

__all__ = ["METHOD_IDS", "PRETRAIN_METHODS", "compose_config", "composed_pretrain_configs"]

TEMPLATES = Path(__file__).resolve().parent / "templates" / "pretrain"
PRETRAIN_METHODS = ("spark", "moco", "byol", "swav")
PRETRAIN_CONFIGS = ("train.json", "multi_gpu_train.json", "train_3d.json")
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
    shared = Path(shared or TEMPLATES)
    out = {}
    for config in PRETRAIN_CONFIGS:
        common = json.loads((shared / config).read_text())
        for method in PRETRAIN_METHODS:
            overlay_file = shared / method / config
            overlay = json.loads(overlay_file.read_text()) if overlay_file.is_file() else {}
            text = json.dumps(compose_config(common, overlay), indent=4) + "\n"
            out[SOURCE_ROOT / "bundles" / f"{method}_pretrain" / "configs" / config] = text
    return out
