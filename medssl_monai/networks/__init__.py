"""Networks referenced by bundle configs: the four pre-training methods and their shared backbone factory."""

from medssl_monai.networks.backbones import BACKBONES, resnet
from medssl_monai.networks.byol import BYOL
from medssl_monai.networks.moco import MoCo
from medssl_monai.networks.spark import SparK, SparseEncoder
from medssl_monai.networks.swav import SwAV

__all__ = ["BACKBONES", "BYOL", "MoCo", "SparK", "SparseEncoder", "SwAV", "resnet"]
