"""The segmentation network: MONAI's ``FlexibleUNet`` whose encoder is the pre-trained ResNet, on slices or volumes.

``FlexibleUNet`` picks its encoder by name from a registry; the encoder must hold a pre-trained ResNet's tensors
under the same names and shapes. Which registered encoder that is depends on the layout the ResNet was trained in:

- slices (2D): every encoder the project writes, and every published checkpoint ``ct_classification`` reads, has
  torchvision's layout (projection shortcuts: a 1x1 convolution without bias and a batch norm, wherever a block
  changes shape). MONAI's own ``resnet50`` encoder has that layout, so a ResNet50 U-Net is a stock
  ``FlexibleUNet(..., "resnet50")``; MONAI's ``resnet18`` and ``resnet34`` encoders follow MedicalNet
  (parameter-free shortcuts), so :class:`TorchvisionResNetEncoder` registers ``torchvision-resnet18`` and
  ``torchvision-resnet34``.
- volumes (3D): the project's 3D encoders are MONAI's stock ``resnet18/34/50(spatial_dims=3)`` (stride-1 stem,
  projection shortcuts whose convolution has a bias), which no registered encoder matches:
  :class:`MonaiResNetEncoder` registers ``monai-resnet18/34/50``. A MedicalNet checkpoint
  (``pretrained_format: medicalnet``) goes into MONAI's own ``resnet18/34/50`` encoders, which are MedicalNet's.

:func:`unet_backbone` picks the name.
"""

from __future__ import annotations

import torch
from monai.networks.blocks import BaseEncoder
from monai.networks.nets import FlexibleUNet, ResNet, ResNetFeatures
from monai.networks.nets.flexible_unet import FLEXUNET_BACKBONE

__all__ = ["MonaiResNetEncoder", "TorchvisionResNetEncoder", "unet_backbone", "encoder_of"]

_LAYOUTS = {"resnet18": ("basic", [2, 2, 2, 2]), "resnet34": ("basic", [3, 4, 6, 3]),
            "resnet50": ("bottleneck", [3, 4, 6, 3])}
_STAGE_WIDTHS = {"basic": (64, 128, 256, 512), "bottleneck": (256, 512, 1024, 2048)}


class _RegisteredResNetEncoder(ResNet, BaseEncoder):
    """MONAI's ``ResNet`` in one parameter layout (``resnet_args``), registered with ``FlexibleUNet`` as
    ``prefix + model name`` for the models of ``model_names``; subclasses say which feature maps it returns."""

    prefix: str
    model_names: tuple[str, ...]
    spatial_dims: int
    resnet_args: dict

    def __init__(self, model_name: str, spatial_dims: int = 2, in_channels: int = 1, pretrained: bool = False) -> None:
        if pretrained:
            raise ValueError("no weights are downloaded: load a pre-trained encoder with pretrained_checkpoint")
        block, layers = _LAYOUTS[model_name.removeprefix(self.prefix)]
        super().__init__(block=block, layers=layers, block_inplanes=[64, 128, 256, 512], spatial_dims=spatial_dims,
                         n_input_channels=in_channels, feed_forward=False, **self.resnet_args)

    @classmethod
    def _channels(cls, model: str) -> tuple[int, ...]:
        raise NotImplementedError

    @classmethod
    def get_encoder_names(cls) -> list[str]:
        return [cls.prefix + name for name in cls.model_names]

    @classmethod
    def get_encoder_parameters(cls) -> list[dict]:
        return [{"model_name": name, "spatial_dims": cls.spatial_dims, "in_channels": 1, "pretrained": False}
                for name in cls.get_encoder_names()]

    @classmethod
    def num_channels_per_output(cls) -> list[tuple[int, ...]]:
        return [cls._channels(name) for name in cls.model_names]

    @classmethod
    def num_outputs(cls) -> list[int]:
        return [len(cls._channels(name)) for name in cls.model_names]


class TorchvisionResNetEncoder(_RegisteredResNetEncoder):
    """A 2D ResNet18/34 with torchvision's projection shortcuts that returns ``FlexibleUNet``'s five feature maps
    (strides 2, 4, 8, 16, 32; 64, 64, 128, 256, 512 channels). Its parameter names are torchvision's."""

    prefix, model_names, spatial_dims = "torchvision-", ("resnet18", "resnet34"), 2
    resnet_args = {"conv1_t_stride": 2, "shortcut_type": "B", "bias_downsample": False}

    forward = ResNetFeatures.forward  # [(B, 64, H/2, W/2), (B, 64, H/4, W/4), ..., (B, 512, H/32, W/32)]

    @classmethod
    def _channels(cls, model: str) -> tuple[int, ...]:
        return (64, *_STAGE_WIDTHS[_LAYOUTS[model][0]])


class MonaiResNetEncoder(_RegisteredResNetEncoder):
    """MONAI's stock 3D ResNet18/34/50 (``monai.networks.nets.resnet50(spatial_dims=3)``: stride-1 stem, max
    pool, projection shortcuts with a bias) returning its four stages (strides 2, 4, 8, 16). The stem's
    full-resolution output is not a skip connection: ``FlexibleUNet`` upsamples each map by 2, so four maps
    bring its output back to the input's size (five would double it)."""

    prefix, model_names, spatial_dims = "monai-", tuple(_LAYOUTS), 3
    resnet_args = {"conv1_t_stride": 1, "shortcut_type": "B", "bias_downsample": True}

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.act(self.bn1(self.conv1(x))))  # (B, 64, X/2, Y/2, Z/2)
        features = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            features.append(x)
        return features  # [(B, w1, X/2, ...), (B, w2, X/4, ...), (B, w3, X/8, ...), (B, w4, X/16, ...)]

    @classmethod
    def _channels(cls, model: str) -> tuple[int, ...]:
        return _STAGE_WIDTHS[_LAYOUTS[model][0]]


for _encoder in (TorchvisionResNetEncoder, MonaiResNetEncoder):
    if _encoder.get_encoder_names()[0] not in FLEXUNET_BACKBONE.register_dict:
        FLEXUNET_BACKBONE.register_class(_encoder)


def unet_backbone(backbone: str, spatial_dims: int = 2, pretrained_format: str = "auto") -> str:
    """``FlexibleUNet``'s backbone name for the project's ``backbone`` id (resnet18, resnet34, resnet50) on slices
    (``spatial_dims=2``) or volumes (3); ``pretrained_format: medicalnet`` selects MedicalNet's 3D layout."""
    if backbone not in _LAYOUTS:
        raise ValueError(f"unknown backbone {backbone!r} for the segmentation U-Net; expected resnet18, resnet34 or "
                         "resnet50")
    if spatial_dims == 2:
        if pretrained_format == "medicalnet":
            raise ValueError("MedicalNet's encoders are 3D: use pretrained_format medicalnet with spatial_dims 3")
        return backbone if backbone == "resnet50" else TorchvisionResNetEncoder.prefix + backbone
    if spatial_dims == 3:
        return backbone if pretrained_format == "medicalnet" else MonaiResNetEncoder.prefix + backbone
    raise ValueError(f"spatial_dims must be 2 (slices) or 3 (volumes), got {spatial_dims}")


def encoder_of(network) -> object | None:
    """The pre-trained part of a ``FlexibleUNet`` (DDP-wrapped or not), ``None`` for other networks."""
    net = getattr(network, "module", network)
    return net.encoder if isinstance(net, FlexibleUNet) else None
