"""Helpers every layer may use: atomic writes, command-line booleans, distributed helpers, schedules, run
identity, the run's TensorBoard writer, memory layouts, mixed precision and worker pools that die with their
parent. Nothing here knows about networks, data or training."""

from medssl_monai.utils.distributed import gather, is_main_process, world_size
from medssl_monai.utils.files import atomic_path, write_json
from medssl_monai.utils.identity import (RunIdentity, RunMismatchError, environment, file_sha256, fingerprint,
                                         identity_differences)
from medssl_monai.utils.memory_format import channels_last_format, place
from medssl_monai.utils.options import as_bool
from medssl_monai.utils.precision import cpu_has_bf16, resolve_amp
from medssl_monai.utils.processes import exit_with_parent, worker_pool
from medssl_monai.utils.schedules import cosine, train_epochs
from medssl_monai.utils.tensorboard import summary_writer

__all__ = ["RunIdentity", "RunMismatchError", "as_bool", "atomic_path", "channels_last_format", "cosine",
           "cpu_has_bf16", "environment", "exit_with_parent", "file_sha256", "fingerprint", "gather",
           "identity_differences", "is_main_process", "place", "resolve_amp", "summary_writer", "train_epochs",
           "worker_pool", "world_size", "write_json"]
