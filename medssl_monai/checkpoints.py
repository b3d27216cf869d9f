"""Every checkpoint format the project writes and reads, in one place.

Written:

- training checkpoints ``checkpoint_<iteration>.pt``: the state_dicts a resume needs (``network``,
  ``optimizer``, ``trainer``, ``scaler``, ``rng``, ``info``, ``identity``), tensors, numbers and lists only, so
  they load with ``torch.load(weights_only=True)``; ``info`` is a :class:`RunInfo`;
- the stock-network encoder files of a pre-training run (:data:`ENCODER_FILES`): ``encoder.pt`` and
  ``encoder.safetensors`` in torchvision's layout with a 3-channel stem whatever ``in_channels`` the run used
  (a 1-channel stem becomes three copies of the grey filter / 3, so a grey slice copied to 3 channels gives
  the same features), and the native 1-channel stem as ``encoder_1ch.pt``; a 3D run writes ``encoder.pt`` and
  ``encoder.safetensors`` in the layout of MONAI's stock 3D ResNet with its 1-channel stem
  (:data:`ENCODER_FILES_3D`);
- the release layouts of the reference study (:data:`LAYOUTS`), for the authors' downstream code:
  ``spark`` ``{"module": state_dict}``; ``moco``, ``byol`` and ``swav`` ``{"state_dict": {prefix + name}}``
  with the prefixes of their Lightning checkpoints (:data:`RELEASE_PREFIXES`).

Read: all of the above, and the published checkpoints of the reference study in the same layouts. Wrappers
and prefixes are stripped, projection heads dropped, and every backbone tensor must be found with its shape:
a mismatch stops with the missing and unexpected keys and the formats tried, never a silent
``strict=False``. Arbitrary pickles are loaded only with ``trust_checkpoint=True``.

Where each method keeps its backbone inside its own state_dict is data here (:data:`BACKBONE_PREFIXES`),
not an attribute of configs or classes.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from medssl_monai.utils.files import atomic_path

__all__ = [
    "BACKBONE_PREFIXES", "ENCODER_FILES", "ENCODER_FILES_3D", "FORMATS", "LAYOUTS", "RELEASE_PREFIXES", "BackboneWeights", "RunInfo",
    "adapt_stem", "backbone_state_dict", "export_encoder", "latest_checkpoint", "load_checkpoint", "read_backbone",
    "save_encoder", "training_checkpoints", "write_encoder_files",
]

# training checkpoints: ``checkpoint_<iteration>.pt``
TRAINING_CHECKPOINT_PREFIX = "checkpoint"
_TRAINING_NAME = re.compile(rf"^{TRAINING_CHECKPOINT_PREFIX}_(\d+)\.pt$")
# each method's backbone inside its own state_dict (a torchvision ResNet with torchvision's names)
BACKBONE_PREFIXES = {"spark": "encoder.net.", "moco": "backbone.", "byol": "backbone.", "swav": "backbone."}
# the stock-network files of a pre-training run: name -> stem input channels
ENCODER_FILES = {"encoder.pt": 3, "encoder.safetensors": 3, "encoder_1ch.pt": 1}
# a 3D run's: the stem as trained, for monai.networks.nets.resnet50(spatial_dims=3, n_input_channels=1)
ENCODER_FILES_3D = {"encoder.pt": None, "encoder.safetensors": None}
# the reference study's release layouts: the Lightning prefixes of the joint-embedding methods
RELEASE_PREFIXES = {"moco": "encoder_q.", "byol": "online_network.encoder.", "swav": "model."}
LAYOUTS = ("torchvision", "spark", *RELEASE_PREFIXES)
# reading: the prefixes under which each format keeps the backbone, tried in order ("" = none)
FORMATS: dict[str, tuple[str, ...]] = {
    "medssl": ("",),  # training checkpoints name their own prefix; encoder.pt is the torchvision layout
    "torchvision": ("",),
    "spark": ("", "model.", "module."),
    **{method: (prefix,) for method, prefix in RELEASE_PREFIXES.items()},
    "medicalnet": ("",),  # MedicalNet's 3D ResNets ({"state_dict": {"module.conv1.weight", ...}}), MONAI's names
}
# the order in which ``auto`` tries the formats, by the wrapper the file has
AUTO_ORDER = {
    "network": ("medssl",),
    "state_dict": ("moco", "byol", "swav", "medicalnet", "spark", "torchvision"),
    "module": ("spark", "torchvision"),
    "model": ("spark", "torchvision"),
    None: ("torchvision", "spark", "moco", "byol", "swav"),
}
# what follows the prefix but is not the backbone: classifier and projection heads, prototypes
HEADS = ("fc.", "projection_head.", "prototypes.", "head.", "conv_seg.")


def load_checkpoint(path: str | os.PathLike, trust_checkpoint: bool = False, map_location: str = "cpu") -> dict:
    """Load a checkpoint file; arbitrary pickles only with ``trust_checkpoint=True``. A ``.safetensors`` file
    (tensors only, nothing to unpickle) is read with safetensors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(path, device=map_location)
        except Exception as err:
            raise ValueError(f"{path}: not a readable safetensors file ({type(err).__name__}: {err})") from None
    try:
        return torch.load(path, map_location=map_location, weights_only=not trust_checkpoint)
    except Exception as err:
        if not trust_checkpoint and "This file can still be loaded" in str(err):  # torch: a disallowed global
            raise ValueError(
                f"{path}: holds Python objects beyond tensors and plain containers; load it only if you trust its "
                "source, with trust_checkpoint=True"
            ) from None
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({type(err).__name__}: {err})") from None


def training_checkpoints(ckpt_dir: str | os.PathLike) -> list[Path]:
    """The training checkpoints in ``ckpt_dir``, by iteration."""
    found = [(int(m.group(1)), p) for p in Path(ckpt_dir).glob(f"{TRAINING_CHECKPOINT_PREFIX}_*.pt")
             if (m := _TRAINING_NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(ckpt_dir: str | os.PathLike) -> Path | None:
    """The training checkpoint of the highest iteration in ``ckpt_dir``, or None."""
    found = training_checkpoints(ckpt_dir)
    return found[-1] if found else None


class RunInfo:
    """What a training checkpoint was trained as (method, backbone, in_channels and where the method keeps the
    backbone), saved in it so that an export needs nothing else."""

    def __init__(self, method: str, **info: object) -> None:
        if method not in BACKBONE_PREFIXES:
            raise ValueError(f"unknown method {method!r}; expected one of {', '.join(BACKBONE_PREFIXES)}")
        self.info = {"method": method, **info, "backbone_prefix": BACKBONE_PREFIXES[method]}

    def state_dict(self) -> dict:
        return dict(self.info)

    def load_state_dict(self, state: dict) -> None:
        self.info.update(state)


def adapt_stem(weight: torch.Tensor, in_channels: int) -> tuple[torch.Tensor, str | None]:
    """conv1 weight (64, c, 7, 7) for ``in_channels`` inputs, and a note when it was converted: a 3-channel
    stem is summed over its input channels, a 1-channel one replicated and divided by 3 (the same function of
    a grey image)."""
    c = weight.shape[1]
    if c == in_channels:
        return weight, None
    if c == 3 and in_channels == 1:
        return weight.sum(dim=1, keepdim=True), "3-channel stem summed over its input channels for 1-channel input"
    if c == 1 and in_channels == 3:
        return weight.repeat(1, 3, 1, 1) / 3, "1-channel stem replicated and divided by 3 for 3-channel input"
    raise ValueError(f"cannot convert a {c}-channel stem to {in_channels} channels")


def backbone_state_dict(network_state: dict, prefix: str) -> dict[str, torch.Tensor]:
    """The tensors of ``network_state`` under ``prefix``, renamed to torchvision's names (no ``fc``)."""
    network_state = {k.removeprefix("module."): v for k, v in network_state.items()}  # DDP's wrapper
    sd = {k[len(prefix):]: v for k, v in network_state.items() if k.startswith(prefix)}
    if not sd:
        raise ValueError(f"no backbone tensors under prefix {prefix!r}")
    return {k: v for k, v in sd.items() if not k.startswith("fc.")}


def save_encoder(state: dict[str, torch.Tensor], out: str | os.PathLike, layout: str = "torchvision",
                 in_channels: int | None = None) -> Path:
    """Write a backbone state_dict in ``layout``, atomically.

    ``in_channels`` converts the stem (see :func:`adapt_stem`); ``None`` keeps it. A ``.safetensors`` file
    name writes safetensors (torchvision layout only), anything else ``torch.save``.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
    state = {k: v.detach().contiguous() for k, v in state.items()}  # the standard layout, whatever training used
    if in_channels is not None:
        state = {**state, "conv1.weight": adapt_stem(state["conv1.weight"], in_channels)[0]}
    if Path(out).suffix == ".safetensors":
        if layout != "torchvision":
            raise ValueError(f"{out}: safetensors holds a flat state_dict, the torchvision layout, not {layout!r}")
        from safetensors.torch import save_file

        with atomic_path(out) as tmp:
            save_file({k: v.clone() for k, v in state.items()}, str(tmp),
                      metadata={"format": "pt"})
        return Path(out)
    if layout == "torchvision":
        payload = state
    elif layout == "spark":
        payload = {"module": state}
    else:
        payload = {"state_dict": {RELEASE_PREFIXES[layout] + k: v for k, v in state.items()}}
    with atomic_path(out) as tmp:
        torch.save(payload, tmp)
    return Path(out)


def write_encoder_files(network_state: dict, method: str, out_dir: str | os.PathLike,
                        layouts: tuple[str, ...] = ()) -> list[Path]:
    """The end of a pre-training run: :data:`ENCODER_FILES` (a 3D encoder, told by its 5D stem:
    :data:`ENCODER_FILES_3D`) and ``encoder_<layout>.pth`` for each release layout (with the stem the run
    trained; 2D only, the releases are 2D) from the method's state_dict."""
    state = backbone_state_dict(network_state, BACKBONE_PREFIXES[method])
    volumetric = state["conv1.weight"].ndim == 5
    if volumetric and layouts:
        raise ValueError(f"release layouts {list(layouts)} are those of the 2D reference study; a 3D run writes "
                         "MONAI's 3D ResNet layout only (layouts: [])")
    out_dir = Path(out_dir)
    files = ENCODER_FILES_3D if volumetric else ENCODER_FILES
    written = [save_encoder(state, out_dir / name, in_channels=channels) for name, channels in files.items()]
    return written + [save_encoder(state, out_dir / f"encoder_{layout}.pth", layout) for layout in layouts]


def export_encoder(checkpoint: str | os.PathLike, out: str | os.PathLike, layout: str = "torchvision",
                   in_channels: int | None = None) -> Path:
    """Export the backbone of a saved training checkpoint (``checkpoint_<iteration>.pt``); ``in_channels`` as
    in :func:`save_encoder`."""
    ckpt = load_checkpoint(checkpoint)
    if "network" not in ckpt or "info" not in ckpt:
        raise ValueError(f"{checkpoint}: not a medssl-monai training checkpoint (needs 'network' and 'info', "
                         f"has {', '.join(map(str, ckpt)) or 'nothing'})")
    state = backbone_state_dict(ckpt["network"], ckpt["info"]["backbone_prefix"])
    return save_encoder(state, out, layout, in_channels)


@dataclass
class BackboneWeights:
    """A backbone state_dict (torchvision names, no heads) and where it came from."""

    state: dict[str, torch.Tensor]
    format: str
    source: str
    notes: list[str] = field(default_factory=list)


def _unwrap(ckpt: dict, path: str) -> tuple[dict, str | None, str | None]:
    """(flat state_dict, the prefix it declares or None, its wrapper key or None)."""
    if "network" in ckpt and "info" in ckpt:  # a medssl-monai training checkpoint
        return ckpt["network"], ckpt["info"].get("backbone_prefix"), "network"
    for wrapper in ("state_dict", "module", "model"):
        if isinstance(ckpt.get(wrapper), dict):
            return ckpt[wrapper], None, wrapper
    if ckpt and all(torch.is_tensor(v) for v in ckpt.values()):
        return ckpt, None, None
    raise ValueError(f"{path}: not a state_dict and no known wrapper (state_dict, module, model, network); "
                     f"top-level keys: {', '.join(map(str, list(ckpt)[:10]))}")


def _strip(state: dict, prefix: str) -> dict[str, torch.Tensor]:
    state = {k.removeprefix("module."): v for k, v in state.items()}  # DDP
    out = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix) and torch.is_tensor(v)}
    return {k: v for k, v in out.items() if not k.startswith(HEADS)}


def _mismatch(candidate: dict, target: dict) -> tuple[list[str], list[str], list[str]]:
    """(missing, unexpected, wrong shape) of a candidate backbone against the target's backbone keys."""
    missing = sorted(set(target) - set(candidate))
    unexpected = sorted(set(candidate) - set(target))
    shapes = sorted(k for k in set(candidate) & set(target)
                    if k != "conv1.weight" and candidate[k].shape != target[k].shape)
    return missing, unexpected, shapes


def read_backbone(path: str | os.PathLike, target: nn.Module, fmt: str = "auto",
                  trust_checkpoint: bool = False) -> BackboneWeights:
    """Find ``target``'s backbone tensors in the checkpoint at ``path``.

    Args:
        target: a ResNet with torchvision's parameter names: torchvision's, or MONAI's 2D or 3D ``ResNet``.
        fmt: ``auto`` or one of :data:`FORMATS`.
    Raises:
        ValueError: naming the file, the formats tried and, for the closest one, the missing, unexpected and
            wrongly shaped keys.
    """
    if fmt != "auto" and fmt not in FORMATS:
        raise ValueError(f"unknown pretrained_format {fmt!r}; expected auto or one of {', '.join(FORMATS)}")
    ckpt = load_checkpoint(path, trust_checkpoint)
    state, declared, wrapper = _unwrap(ckpt, str(path))
    wanted = {k: v for k, v in target.state_dict().items() if not k.startswith("fc.")}
    volumetric = target.conv1.weight.ndim == 5
    tried, best = [], None
    for name in AUTO_ORDER[wrapper] if fmt == "auto" else (fmt,):
        if name == "medicalnet" and not volumetric and fmt == "auto":
            continue  # MedicalNet's are 3D
        prefixes = (declared,) if declared is not None and name == "medssl" else FORMATS[name]
        for prefix in prefixes:
            candidate = _strip(state, prefix)
            missing, unexpected, shapes = _mismatch(candidate, wanted)
            tried.append(f"{name} (prefix {prefix!r})")
            if candidate and not (missing or unexpected or shapes):
                return BackboneWeights(candidate, name, str(path))
            score = len(missing) + len(unexpected) + len(shapes)
            if candidate and (best is None or score < best[0]):
                best = (score, name, prefix, missing, unexpected, shapes)
    roots = sorted({k.split(".")[0] + ("." if "." in k else "") for k in state})
    detail = f"no backbone tensors under those prefixes; the file's keys begin with {', '.join(roots[:8])}"
    if best is not None:
        _, name, prefix, missing, unexpected, shapes = best
        detail = (f"closest: {name} (prefix {prefix!r}) with {len(missing)} missing keys {missing[:6]}, "
                  f"{len(unexpected)} unexpected keys {unexpected[:6]}, wrong shapes {shapes[:6]}")
        if volumetric and missing and all(".downsample." in k for k in missing):
            detail += ("; a 3D ResNet without shortcut weights is MedicalNet's: set pretrained_format medicalnet "
                       "to build the network in its layout")
    raise ValueError(f"{path}: cannot initialise the backbone; tried {', '.join(tried)}; {detail}. Check the "
                     "backbone id (resnet18/34/50) and pretrained_format")
