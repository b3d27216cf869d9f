"""What every benchmark script shares: measuring kinds in fresh processes, alternating, and naming the machine.

Each measurement runs in its own spawned process, so its peak memory is its own and no warm cache or allocator
carries over from the previous one; the kinds alternate round by round, so a slow spell of a shared machine
falls on all of them alike.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from queue import Empty
from typing import Any, TypeVar

import torch

from medssl_monai.utils import exit_with_parent

K = TypeVar("K")  # what names a kind: a label, a number of patients, a flag


def alternate(target: Callable[..., None], kinds: Sequence[str], rounds: int, *args: Any) -> dict[str, list[Any]]:
    """``target(kind, *args, queue)`` for every kind, each in a fresh spawned process (:func:`in_child`), the
    kinds alternating over ``rounds``; returns what each call put on its queue, per kind, in round order."""
    results: dict[str, list[Any]] = {kind: [] for kind in kinds}
    for _ in range(rounds):
        for kind in kinds:
            results[kind].append(in_child(target, kind, *args))
    return results


def block_order(kinds: Sequence[K], r: int) -> list[K]:
    """The kinds' order in round ``r`` of blocks timed in one process: rotated by one every two rounds and
    reversed in odd rounds, so that each kind runs early and late and after different kinds."""
    kinds = list(kinds)
    turn = (r // 2) % len(kinds)
    order = kinds[turn:] + kinds[:turn]
    return order[::-1] if r % 2 else order


def time_blocks(blocks: Mapping[K, Callable[[], None]], rounds: int,
                device: torch.device | None = None) -> dict[K, list[float]]:
    """Seconds of every kind's block (``blocks[kind]()``) in each of ``rounds`` rounds, in this one process, after
    one untimed round that warms allocators, kernels, compiled graphs and the page cache up; each round in the
    order :func:`block_order` gives, so that a slow spell of a shared machine falls on the kinds of a round alike."""
    device = device or torch.device("cpu")  # only a GPU's queue needs waiting for
    seconds: dict[K, list[float]] = {kind: [] for kind in blocks}
    for r in range(rounds + 1):
        for kind in block_order(list(blocks), r):
            sync(device)
            start = time.perf_counter()
            blocks[kind]()
            sync(device)
            if r:
                seconds[kind].append(time.perf_counter() - start)
    return seconds


def repeated(step: Callable[[], Any], times: int) -> Callable[[], None]:
    """A block for :func:`time_blocks`: ``step()`` ``times`` times."""

    def block() -> None:
        for _ in range(times):
            step()

    return block


def in_child(target: Callable[..., None], *args: Any) -> Any:
    """``target(*args, queue)`` in a fresh spawned process; returns what it put on its queue. On Linux a child's
    max RSS starts at its parent's (the high-water mark survives fork and exec), so the calling process must not
    have grown before: anything large runs in a child too."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(os.getpid(), target, *args, queue))
    proc.start()
    while True:  # read before joining: a child blocks on exit until a large result has left its queue
        try:
            result = queue.get(timeout=1)
            break
        except Empty:
            if not proc.is_alive() and queue.empty():
                proc.join()
                raise RuntimeError(f"{getattr(target, '__name__', target)}{args[:1]} failed (exit "
                                   f"{proc.exitcode}); its error is printed above") from None
    proc.join()
    return result


def _child(parent: int, target: Callable[..., None], *args: Any) -> None:
    exit_with_parent(parent)  # a benchmark killed mid-run leaves no measurement running on
    target(*args)


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so that the clock reads finished steps."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_range(values: Sequence[float]) -> tuple[float, float, float]:
    """(median, lowest, highest)."""
    return statistics.median(values), min(values), max(values)


def ranged(stats: tuple[float, float, float], digits: int = 2) -> str:
    """``median (lowest-highest)`` of :func:`median_range`'s triple, the median alone when all are equal."""
    mid, low, high = stats
    return f"{mid:.{digits}f}" if low == high else f"{mid:.{digits}f} ({low:.{digits}f}-{high:.{digits}f})"


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name() -> str:
    """The accelerator the measurements run on: the GPU's name, or the CPU and its cores."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU {cpu_model()}, {os.cpu_count()} cores"
