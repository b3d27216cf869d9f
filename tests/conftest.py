"""Shared fixtures: one small demo collection per test session (seconds to generate)."""

from __future__ import annotations

import warnings

import pytest

from medssl_monai.data.demo import make_demo_data

warnings.filterwarnings("ignore", message=".*nvImageCodec.*")


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory):
    """A tiny demo collection: 4 patients of 8 slices at 64 x 64 (2 training, 1 validation, 1 test), the
    first 3 also as DICOM, 40 COVID-like images, 220 organ patches."""
    return make_demo_data(
        tmp_path_factory.mktemp("demo"), seed=7, patients=4, size=64, slices=8, covid_images=40, organ_patches=220,
        dicom_patients=3, workers=2,
    )


def run_killed(cmd: list[str], ckpt_dir, cwd, timeout: float = 600.0) -> str:
    """Start ``cmd`` and SIGKILL it as soon as a new ``checkpoint_*.pt`` appears in ``ckpt_dir`` (one that was
    not there when it started), as a job killed by a scheduler would be; returns its output. Fails if the run
    ended before it could be killed."""
    import os
    import signal
    import subprocess
    import tempfile
    import time
    from pathlib import Path

    before = set(Path(ckpt_dir).glob("checkpoint_*.pt"))
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"))
        deadline = time.monotonic() + timeout
        while not set(Path(ckpt_dir).glob("checkpoint_*.pt")) - before:
            if proc.poll() is not None:
                log.seek(0)
                raise AssertionError(f"the run ended (exit {proc.returncode}) before its first checkpoint:\n"
                                     + log.read()[-3000:])
            assert time.monotonic() < deadline, "no checkpoint before the timeout"
            time.sleep(0.02)
        assert proc.poll() is None, "the run finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        log.seek(0)
        return log.read()
