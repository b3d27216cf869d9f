"""Training engines shared by the four pre-training methods, and their handlers."""

from medssl_monai.engines.checkpoint import CheckpointWriter, ResumeFromCheckpoint, latest_checkpoint, load_checkpoint
from medssl_monai.engines.identity import RunIdentity, RunMismatchError, file_sha256, fingerprint
from medssl_monai.engines.schedules import IterationSchedule, build_optimizer, cosine, param_groups, train_epochs
from medssl_monai.engines.trainer import RNGState, SelfSupervisedTrainer

__all__ = [
    "CheckpointWriter",
    "IterationSchedule",
    "RNGState",
    "ResumeFromCheckpoint",
    "RunIdentity",
    "RunMismatchError",
    "SelfSupervisedTrainer",
    "build_optimizer",
    "cosine",
    "file_sha256",
    "fingerprint",
    "latest_checkpoint",
    "load_checkpoint",
    "param_groups",
    "train_epochs",
]
