"""Training engines shared by the four pre-training methods, and their handlers."""

from medssl_monai.engines.schedules import IterationSchedule, build_optimizer, cosine, param_groups

__all__ = ["IterationSchedule", "build_optimizer", "cosine", "param_groups"]
