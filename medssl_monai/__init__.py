"""medssl-monai: self-supervised pre-training for CT (SparK, MoCo v2, BYOL, SwAV) as MONAI bundles."""

__version__ = "0.1.0"
