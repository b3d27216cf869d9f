"""The defaults bundle configs evaluate: the demo data and the demo encoder, looked up, never made.

When they are missing the error names the command that makes them (``medssl-monai demo-data``, the SparK
bundle), so that evaluating a config's default ids has no side effect and never depends silently on whether
another bundle has run.
"""

from __future__ import annotations

import logging
import sys

from medssl_monai.bundle import roots

__all__ = ["demo_data_dir", "demo_encoder"]

logger = logging.getLogger(__name__)


def demo_data_dir() -> str:
    """The demo data folder, the bundles' default ``dataset_dir``; a check, never a generator.

    Raises:
        FileNotFoundError: the demo data is missing or was made by another generator version; the message
            gives the command that makes it.
    """
    from medssl_monai.data.demo import demo_data_version

    root = roots.demo_root()
    version = demo_data_version(root)
    if version is None or version[0] != version[1]:
        state = "is missing" if version is None else f"was made by generator version {version[0]}, not {version[1]}"
        raise FileNotFoundError(f"the demo data in {root} {state}: make it with `medssl-monai demo-data` (about a "
                                "minute on 2 cores), or pass --dataset_dir with your own data")
    return str(root)


def _none_on_command_line(name: str) -> bool:
    """Whether the command line said ``--name None`` (or ``none``, ``null``): ``python -m monai.bundle run``
    reads that value as Python's None and then drops the override, so the config's default is evaluated
    although the user asked for no value."""
    argv = sys.argv[1:]
    for i, arg in enumerate(argv):
        if arg == f"--{name}" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(f"--{name}="):
            value = arg.split("=", 1)[1]
        else:
            continue
        if value in ("None", "none", "null"):
            return True
    return False


def demo_encoder(method: str = "spark", backbone: str | None = None, spatial_dims: int = 2) -> str | None:
    """``models/encoder.pt`` (3D: ``models/3d/encoder.pt``) of this checkout's ``<method>_pretrain`` bundle:
    the fine-tuning bundles' default starting point, which must exist and (when ``backbone`` is given) be of that
    architecture. ``None`` (from scratch) only when the command line asked for it with ``--pretrained_checkpoint
    None``, which MONAI drops.

    Raises:
        FileNotFoundError, ValueError: the encoder is missing or of another backbone; the message gives the
            command that makes it, and the way to train from scratch instead.
    """
    if _none_on_command_line("pretrained_checkpoint"):
        logger.info("--pretrained_checkpoint None: from random initialisation")
        return None
    models = roots.SOURCE_ROOT / "bundles" / f"{method}_pretrain" / "models"
    path = (models if spatial_dims == 2 else models / "3d") / "encoder.pt"
    configs = f"bundles/{method}_pretrain/configs/train.json"
    if spatial_dims != 2:
        configs = f"\"['{configs}','{configs.replace('train.json', 'train_3d.json')}']\""
    make = (f"make it with `python -m monai.bundle run --config_file {configs}"
            + (f" --backbone {backbone}`" if backbone else "`")
            + ", or pass --pretrained_checkpoint PATH (none: from scratch)")
    if not path.is_file():
        raise FileNotFoundError(f"no {method} demo encoder at {path}: {make}")
    if backbone is not None:
        from medssl_monai.networks.pretrained import detect_backbone

        trained, _, _ = detect_backbone(path, spatial_dims=spatial_dims)
        if trained != backbone:
            raise ValueError(f"the {method} demo encoder {path} is a {trained}, this run a {backbone}: {make}")
    logger.info(f"starting from the {method} demo encoder {path}")
    return str(path)
