"""Networks referenced by bundle configs."""

from medssl_monai.networks.spark import SparK, SparseEncoder

__all__ = ["SparK", "SparseEncoder"]
