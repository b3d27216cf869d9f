"""The backbone factories every method shares: a torchvision ResNet with a 1- or 3-channel stem (2D), and
MONAI's ``ResNet`` with one input channel (3D).

The modules keep their library's names, so a backbone's state_dict (less ``fc``) loads straight into
``torchvision.models.resnet50()`` or ``monai.networks.nets.resnet50(spatial_dims=3, n_input_channels=1)``; the
methods keep their backbone under the prefix ``backbone.`` (SparK: ``encoder.net.``), which is all encoder
export needs to know.
"""

from __future__ import annotations

import torchvision
from torch import nn

__all__ = ["BACKBONES", "HEAD", "backbone_network", "block_width", "resnet", "resnet_3d", "in_backbone",
           "split_backbone_head"]

BACKBONES = ("resnet18", "resnet34", "resnet50")
HEAD = "fc."  # the classifier of a torchvision ResNet


def resnet(backbone: str = "resnet50", in_channels: int = 1) -> nn.Module:
    """A randomly initialised torchvision ResNet whose ``fc`` is an identity: (B, C, H, W) -> (B, feature_dim).

    ``feature_dim`` (2048 for resnet50, 512 for resnet18/34) is kept as an attribute of the returned module.
    """
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; expected one of {BACKBONES}")
    if in_channels not in (1, 3):
        raise ValueError(f"in_channels must be 1 (CT as is) or 3 (replicated), got {in_channels}")
    net = getattr(torchvision.models, backbone)(weights=None)
    if in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    net.feature_dim = net.fc.in_features
    net.fc = nn.Identity()
    return net


def block_width(block: nn.Module) -> int:
    """Output channels of a ResNet block, basic or bottleneck (torchvision's and MONAI's name them alike)."""
    return block.conv3.out_channels if hasattr(block, "conv3") else block.conv2.out_channels


def resnet_3d(backbone: str = "resnet50", in_channels: int = 1) -> nn.Module:
    """A randomly initialised 3D ResNet, MONAI's stock one (``monai.networks.nets.resnet50(spatial_dims=3,
    n_input_channels=1)``: 7-cubed stride-1 stem, max pool, shortcut B) without ``fc``: (B, C, X, Y, Z) ->
    (B, feature_dim) at a total stride of 16."""
    from monai.networks import nets

    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; expected one of {BACKBONES}")
    net = getattr(nets, backbone)(spatial_dims=3, n_input_channels=in_channels, feed_forward=False)
    net.feature_dim = block_width(net.layer4[-1])
    return net


def backbone_network(backbone: str = "resnet50", in_channels: int = 1, spatial_dims: int = 2) -> nn.Module:
    """A method's backbone, (B, C, *S) -> (B, feature_dim): torchvision's ResNet for slices (``spatial_dims=2``),
    MONAI's for volumes (3)."""
    if spatial_dims == 2:
        return resnet(backbone, in_channels)
    if spatial_dims == 3:
        return resnet_3d(backbone, in_channels)
    raise ValueError(f"spatial_dims must be 2 (slices) or 3 (volumes), got {spatial_dims}")


def in_backbone(network: nn.Module, name: str) -> bool:
    """Whether parameter or module ``name`` of ``network`` (unwrapped) is pre-trained: a U-Net's ``encoder``, a
    classifier's all but ``fc``."""
    from monai.networks.nets import FlexibleUNet

    return name.startswith("encoder.") if isinstance(network, FlexibleUNet) else not name.startswith(HEAD)


def split_backbone_head(network: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(backbone, head) parameters of a torchvision-named ResNet classifier or a ``FlexibleUNet`` (DDP-wrapped or
    not): the head is the classifier's ``fc``, the U-Net's decoder and segmentation head."""
    net = getattr(network, "module", network)
    backbone = [p for n, p in net.named_parameters() if in_backbone(net, n)]
    head = [p for n, p in net.named_parameters() if not in_backbone(net, n)]
    return backbone, head
