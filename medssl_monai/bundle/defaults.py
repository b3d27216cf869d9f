"""The defaults bundle configs evaluate: the demo data and the demo encoder, looked up, never made.

When they are missing the error names the command that makes them (``medssl-monai demo-data``, the SparK
bundle), so that evaluating a config's default ids has no side effect and never depends silently on whether
another bundle has run.
"""

from __future__ import annotations

import logging

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


def demo_encoder(method: str = "spark", backbone: str | None = None) -> str:
    """``models/encoder.pt`` of this checkout's ``<method>_pretrain`` bundle: ``ct_classification``'s default
    starting point, which must exist and (when ``backbone`` is given) be of that architecture.

    Raises:
        FileNotFoundError, ValueError: the encoder is missing or of another backbone; the message gives the
            command that makes it, and the way to train from scratch instead.
    """
    path = roots.SOURCE_ROOT / "bundles" / f"{method}_pretrain" / "models" / "encoder.pt"
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
