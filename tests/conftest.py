"""Shared fixtures: one small demo collection per test session (seconds to generate)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

# One thread for torch (OpenMP) in each pytest-xdist worker and in every process a test starts: the workers share
# the machine's cores, and two OpenMP pools spinning on the same 2 cores made a 5 s test take 68 s
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

from medssl_monai.data.demo import make_demo_data  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

warnings.filterwarnings("ignore", message=".*nvImageCodec.*")

SCHEMA = Path(__file__).resolve().parents[2] / "shared" / "reference" / "meta_schema_20240725.json"


def verify_bundle_metadata(configs: Path) -> None:
    """MONAI's model-zoo check of ``configs/metadata.json`` (what ``python -m monai.bundle verify_metadata``
    runs, here in this process) against the schema copy beside the checkout, so nothing is downloaded; raises
    on a violation."""
    from monai.bundle import verify_metadata

    assert SCHEMA.is_file(), f"the bundle schema copy is expected beside the checkout at {SCHEMA}"
    verify_metadata(meta_file=str(configs / "metadata.json"), filepath=str(SCHEMA))


def export_torchscript(configs: Path, ckpt_file: Path, out: Path, n: int = 1, **overrides):
    """MONAI's model-zoo checks of ``network_def`` in ``configs/inference.json`` (``verify_net_in_out``: input
    and output shapes as metadata.json says, spatial sizes ``n`` times the divisor; then ``ckpt_export`` of
    ``ckpt_file`` to TorchScript at ``out``), in this process; returns the exported module."""
    import torch
    from monai.bundle import ckpt_export, verify_net_in_out

    bundle = {"meta_file": str(configs / "metadata.json"), "config_file": str(configs / "inference.json")}
    verify_net_in_out("network_def", n=n, **bundle, **overrides)
    ckpt_export("network_def", filepath=str(out), ckpt_file=str(ckpt_file), **bundle, **overrides)
    return torch.jit.load(str(out))


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory):
    """A tiny demo collection: 4 patients of 8 slices at 64 x 64 (2 training, 1 validation, 1 test), the
    first 3 also as DICOM, 40 COVID-like images, 220 organ patches."""
    return make_demo_data(
        tmp_path_factory.mktemp("demo"), seed=7, patients=4, size=64, slices=8, covid_images=40, organ_patches=220,
        dicom_patients=3, workers=2,
    )


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux: from /proc), children first."""
    from pathlib import Path

    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended while listed
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


def assert_ended(pids: list[int], timeout: float = 10.0) -> None:
    """Fails unless every process of ``pids`` has ended (or is a zombie nobody reaps) within ``timeout`` s."""
    import time
    from pathlib import Path

    def running(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    deadline = time.monotonic() + timeout
    while (alive := [pid for pid in pids if running(pid)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive, f"processes {alive} outlived the killed run by {timeout:.0f} s"


def run_killed(cmd: list[str], ckpt_dir, cwd, timeout: float = 600.0, env: dict | None = None) -> str:
    """Start ``cmd`` and SIGKILL it, with every process it started (data workers, ``torchrun``'s ranks), as soon
    as a new ``checkpoint_*.pt`` appears in ``ckpt_dir`` (one that was not there when it started), as a job
    killed by a scheduler would be; returns its output. Fails if the run ended before it could be killed."""
    import os
    import signal
    import subprocess
    import tempfile
    import time
    from pathlib import Path

    before = set(Path(ckpt_dir).glob("checkpoint_*.pt"))
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})))
        deadline = time.monotonic() + timeout
        while not set(Path(ckpt_dir).glob("checkpoint_*.pt")) - before:
            if proc.poll() is not None:
                log.seek(0)
                raise AssertionError(f"the run ended (exit {proc.returncode}) before its first checkpoint:\n"
                                     + log.read()[-3000:])
            assert time.monotonic() < deadline, "no checkpoint before the timeout"
            time.sleep(0.02)
        assert proc.poll() is None, "the run finished before it could be killed"
        for pid in [proc.pid, *descendants(proc.pid)]:  # torchrun starts its ranks in sessions of their own
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()
        log.seek(0)
        return log.read()
