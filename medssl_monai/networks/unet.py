"""The segmentation network: MONAI's ``FlexibleUNet`` whose encoder is the pre-trained ResNet.

Every encoder the project writes (and every published checkpoint ``ct_classification`` reads) has torchvision's
layout: projection shortcuts (a 1x1 convolution and a batch norm, no bias) wherever a block changes shape. MONAI's
own ``resnet50`` encoder has that layout, so a ResNet50 U-Net is a stock ``FlexibleUNet(..., "resnet50")``. MONAI's
``resnet18`` and ``resnet34`` encoders follow MedicalNet instead (parameter-free shortcuts), which would leave a
pre-trained encoder's shortcut weights nowhere to go; for those two, :class:`TorchvisionResNetEncoder` registers
``torchvision-resnet18`` and ``torchvision-resnet34`` with ``FlexibleUNet``'s backbone registry, and
:func:`unet_backbone` picks the name.
"""

from __future__ import annotations

from monai.networks.blocks import BaseEncoder
from monai.networks.nets import FlexibleUNet, ResNet, ResNetFeatures
from monai.networks.nets.flexible_unet import FLEXUNET_BACKBONE

__all__ = ["TorchvisionResNetEncoder", "unet_backbone", "encoder_of"]

_LAYOUTS = {"resnet18": ("basic", [2, 2, 2, 2]), "resnet34": ("basic", [3, 4, 6, 3])}
PREFIX = "torchvision-"


class TorchvisionResNetEncoder(ResNet, BaseEncoder):
    """A ResNet18/34 with torchvision's projection shortcuts that returns ``FlexibleUNet``'s five feature maps
    (strides 2, 4, 8, 16, 32; 64, 64, 128, 256, 512 channels). Its parameter names are torchvision's."""

    backbone_names = [PREFIX + name for name in _LAYOUTS]

    def __init__(self, model_name: str, spatial_dims: int = 2, in_channels: int = 1, pretrained: bool = False) -> None:
        if pretrained:
            raise ValueError("no weights are downloaded: load a pre-trained encoder with pretrained_checkpoint")
        block, layers = _LAYOUTS[model_name.removeprefix(PREFIX)]
        super().__init__(block=block, layers=layers, block_inplanes=[64, 128, 256, 512], spatial_dims=spatial_dims,
                         n_input_channels=in_channels, conv1_t_stride=2, shortcut_type="B", bias_downsample=False,
                         feed_forward=False)

    forward = ResNetFeatures.forward  # [(B, 64, H/2, W/2), (B, 64, H/4, W/4), ..., (B, 512, H/32, W/32)]

    @classmethod
    def get_encoder_parameters(cls) -> list[dict]:
        return [{"model_name": name, "spatial_dims": 2, "in_channels": 1, "pretrained": False}
                for name in cls.backbone_names]

    @classmethod
    def num_channels_per_output(cls) -> list[tuple[int, ...]]:
        return [(64, 64, 128, 256, 512)] * len(cls.backbone_names)

    @classmethod
    def num_outputs(cls) -> list[int]:
        return [5] * len(cls.backbone_names)

    @classmethod
    def get_encoder_names(cls) -> list[str]:
        return list(cls.backbone_names)


if PREFIX + "resnet18" not in FLEXUNET_BACKBONE.register_dict:
    FLEXUNET_BACKBONE.register_class(TorchvisionResNetEncoder)


def unet_backbone(backbone: str) -> str:
    """``FlexibleUNet``'s backbone name for the project's ``backbone`` id (resnet18, resnet34, resnet50)."""
    if backbone == "resnet50":
        return backbone
    if backbone in _LAYOUTS:
        return PREFIX + backbone
    raise ValueError(f"unknown backbone {backbone!r} for the segmentation U-Net; expected resnet18, resnet34 or "
                     "resnet50")


def encoder_of(network) -> object | None:
    """The pre-trained part of a ``FlexibleUNet`` (DDP-wrapped or not), ``None`` for other networks."""
    net = getattr(network, "module", network)
    return net.encoder if isinstance(net, FlexibleUNet) else None
