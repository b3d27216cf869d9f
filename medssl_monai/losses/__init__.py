"""The methods' losses, one per module, as ``nn.Module``s that can be tested alone against the peers'."""

from medssl_monai.losses.class_weights import class_weights
from medssl_monai.losses.info_nce import InfoNCELoss
from medssl_monai.losses.masked_reconstruction import MaskedPatchLoss, normalise_patches
from medssl_monai.losses.negative_cosine import SymmetricNegativeCosineLoss
from medssl_monai.losses.swav_loss import SwAVLoss, sinkhorn

__all__ = ["InfoNCELoss", "MaskedPatchLoss", "SwAVLoss", "SymmetricNegativeCosineLoss", "class_weights",
           "normalise_patches", "sinkhorn"]
