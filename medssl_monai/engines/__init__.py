"""Training engines shared by the four pre-training methods, and their handlers."""

from medssl_monai.engines.checkpoint import CheckpointWriter, ResumeFromCheckpoint, latest_checkpoint, load_checkpoint
from medssl_monai.engines.schedules import IterationSchedule, build_optimizer, cosine, param_groups
from medssl_monai.engines.trainer import RNGState, SelfSupervisedTrainer

__all__ = [
    "CheckpointWriter",
    "IterationSchedule",
    "RNGState",
    "ResumeFromCheckpoint",
    "SelfSupervisedTrainer",
    "build_optimizer",
    "cosine",
    "latest_checkpoint",
    "load_checkpoint",
    "param_groups",
]
