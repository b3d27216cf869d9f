"""Run identity: what a run is, recorded in every checkpoint, so that no run continues a different one.

A bundle lists the resolved ids that change its result (data, method, network, schedule, label fraction,
seed, the pre-trained weights by content hash) in a :class:`RunIdentity`. The checkpoint writer saves it beside
the states, and :class:`~medssl_monai.handlers.ResumeFromCheckpoint` compares it with the new run's
before loading anything: a difference is refused with :class:`RunMismatchError`, which names each differing id
with both values. Files are identified by their SHA-256, folders by their path and the list of samples they
yield (pixel content is not hashed: that would read a whole archive at every start).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medssl_monai.utils.precision import cpu_has_bf16

__all__ = ["RunIdentity", "RunMismatchError", "environment", "file_sha256", "fingerprint", "identity_differences"]

# the packages whose versions change a run's numbers (kernels, solvers, resampling, image decoding)
ENVIRONMENT_PACKAGES = ("torch", "torchvision", "monai", "numpy", "scipy", "scikit-learn", "pillow", "nibabel",
                        "pydicom", "pytorch-ignite", "medssl-monai")


class RunMismatchError(ValueError):
    """A checkpoint or finished output belongs to a run with other settings."""


def file_sha256(path: str | os.PathLike | None) -> str | None:
    """SHA-256 of a file's bytes, or ``None`` for no file (``None``, ``""``, ``"none"``)."""
    if path is None or str(path) in ("", "None", "none"):
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fingerprint(obj: Any) -> str:
    """SHA-256 of ``obj`` as canonical JSON (a datalist, a list of samples); non-JSON values by ``str``."""
    if hasattr(obj, "data") and not isinstance(obj, (list, dict)):  # a MONAI dataset: its list of samples
        obj = obj.data
    text = json.dumps(obj, sort_keys=True, default=_json_default)
    return hashlib.sha256(text.encode()).hexdigest()


def _json_default(value: Any) -> str:
    """Arrays (MedMNIST images held in memory) by the hash of their bytes and shape, the rest by ``str``."""
    if hasattr(value, "shape") and hasattr(value, "tobytes") or torch.is_tensor(value):
        array = np.ascontiguousarray(value.cpu().numpy() if torch.is_tensor(value) else value)
        return f"{array.dtype}{array.shape}:{hashlib.sha256(array.tobytes()).hexdigest()}"
    return str(value)


def _canonical(value: Any) -> Any:
    """A value as the checkpoint stores it: numbers, strings, booleans, None and lists of them."""
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, os.PathLike):
        return str(Path(value).resolve())
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    return str(value)


def environment() -> dict[str, Any]:
    """What computed a result besides its settings: Python, platform, CPU (and whether it has bf16 arithmetic, which
    ``amp: auto`` follows), torch's threads, package versions.

    Not part of a run's identity (a run may continue on another machine), but recorded beside results: at
    short schedules, floating-point differences between CPUs and package versions move the numbers.
    """
    import platform
    from importlib import metadata

    cpu = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    versions = {}
    for name in ENVIRONMENT_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"python": platform.python_version(), "platform": platform.platform(), "cpu": cpu,
            "cpu_count": os.cpu_count(), "cpu_bf16": cpu_has_bf16(), "torch_threads": torch.get_num_threads(),
            "packages": versions}


def identity_differences(recorded: Mapping, current: Mapping) -> list[str]:
    """``"id: recorded X, this run Y"`` for every id whose values differ (or that only one side has)."""
    out = []
    for key in sorted(set(recorded) | set(current)):
        a, b = recorded.get(key, "<not recorded>"), current.get(key, "<not recorded>")
        if a != b:
            out.append(f"{key}: recorded {a!r}, this run {b!r}")
    return out


class RunIdentity:
    """The ids that define a run, as a checkpointable object (``state_dict`` is a plain dict).

    Args:
        ids: id -> resolved value; path objects are made absolute, other objects are stored by ``str``. The
            number of processes (``world_size``) is always added: it changes the batches a run sees.
    """

    def __init__(self, **ids: Any) -> None:
        import ignite.distributed as idist

        self.ids = {k: _canonical(v) for k, v in ids.items()}
        self.ids.setdefault("world_size", idist.get_world_size())

    def state_dict(self) -> dict:
        return dict(self.ids)

    def load_state_dict(self, state: dict) -> None:
        """Loading checks, never overwrites: the new run's identity is the one that counts."""
        self.check(state, "the checkpoint")

    def check(self, recorded: Mapping | None, what: str) -> None:
        """Raise :class:`RunMismatchError` when ``recorded`` (from ``what``) is not this identity."""
        if recorded is None:
            raise RunMismatchError(f"{what} records no run identity (written by an older version or another tool), "
                                   "so it may belong to another run. " + HOW_TO_GO_ON)
        differences = identity_differences(recorded, self.ids)
        if differences:
            raise RunMismatchError(f"{what} belongs to a different run: " + "; ".join(differences) + ". "
                                   + HOW_TO_GO_ON)


HOW_TO_GO_ON = ("To keep it, give this run another --ckpt_dir; to start over in this folder, pass --resume false "
                "(its checkpoints are then replaced).")
