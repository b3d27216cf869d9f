"""Process pools whose workers end when the process that started them is killed.

A :class:`~concurrent.futures.ProcessPoolExecutor` worker waits on a pipe whose writing end it holds itself, so a
parent killed outright (``SIGKILL``, the out-of-memory killer, a scheduler's time limit) leaves its idle workers
blocked forever, each holding its memory. The workers here watch their parent, as PyTorch's DataLoader workers do,
and exit within a second of losing it.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor

__all__ = ["exit_with_parent", "worker_pool"]

WATCH_INTERVAL = 0.5  # seconds between two looks at the parent


def _exit_when_orphaned(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(WATCH_INTERVAL)
    os._exit(1)  # no cleanup to run: the parent that wanted the results is gone


def exit_with_parent(parent: int) -> None:
    """Make this process exit within a second of losing ``parent`` (its parent's pid, taken in the parent): a
    daemon thread watches. Call it first thing in a child process, or as a pool's initializer."""
    threading.Thread(target=_exit_when_orphaned, args=(parent,), name="parent-watch", daemon=True).start()


def worker_pool(max_workers: int | None = None) -> ProcessPoolExecutor:
    """A ``ProcessPoolExecutor`` of ``max_workers`` processes (all cores by default) that die with this one."""
    return ProcessPoolExecutor(max_workers=max_workers, initializer=exit_with_parent, initargs=(os.getpid(),))
