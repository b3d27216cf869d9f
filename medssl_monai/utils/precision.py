"""Mixed precision where the hardware runs it natively, one of the speed levers of training.

On a GPU, autocast to fp16 (or bf16) is the usual win. On a CPU, torch's bf16 autocast is faster only where the
CPU has bf16 arithmetic (AMX or AVX512-BF16 on x86, BF16 on Arm): elsewhere its kernels convert and emulate, and
run slower than fp32. ``amp: auto`` turns it on exactly where it wins.
"""

from __future__ import annotations

from pathlib import Path

import torch

from medssl_monai.utils.options import as_bool

__all__ = ["cpu_has_bf16", "resolve_amp"]

BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")  # x86 (/proc/cpuinfo "flags"), Arm ("Features")


def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 arithmetic (Linux: from ``/proc/cpuinfo``; False where that cannot be read)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        flags = next(line for line in lines if line.startswith(("flags", "Features"))).split()
    except (OSError, StopIteration):
        return False
    return any(flag in flags for flag in BF16_FLAGS)


def resolve_amp(amp: bool | str, device: torch.device | str) -> bool:
    """The ``amp`` id as a boolean: ``auto`` is on for a GPU and for a CPU with bf16 arithmetic, off otherwise;
    ``true``/``false`` as given."""
    if isinstance(amp, str) and amp.strip().lower() == "auto":
        return torch.device(device).type == "cuda" or (torch.device(device).type == "cpu" and cpu_has_bf16())
    try:
        return as_bool(amp, "amp")
    except ValueError:
        raise ValueError(f"amp must be true, false or auto, got {amp!r}") from None
