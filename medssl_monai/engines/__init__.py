"""The training loops: one self-supervised trainer for the four methods (fine-tuning uses MONAI's
``SupervisedTrainer`` as it is)."""

from medssl_monai.engines.trainer import RNGState, SelfSupervisedTrainer

__all__ = ["RNGState", "SelfSupervisedTrainer"]
