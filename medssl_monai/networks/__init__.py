"""Networks referenced by bundle configs: the four pre-training methods, their shared backbone factory, and the
segmentation U-Net's encoders."""

from medssl_monai.networks.backbones import BACKBONES, resnet
from medssl_monai.networks.byol import BYOL
from medssl_monai.networks.moco import MoCo
from medssl_monai.networks.spark import SparK, SparseEncoder
from medssl_monai.networks.swav import SwAV
from medssl_monai.networks.unet import TorchvisionResNetEncoder, unet_backbone

__all__ = ["BACKBONES", "BYOL", "MoCo", "SparK", "SparseEncoder", "SwAV", "TorchvisionResNetEncoder", "resnet",
           "unet_backbone"]
