"""MONAI Label serves trained ct_classification and ct_segmentation models, started as the README says
(``serve.sh``).

The real server runs in MONAI Label's own environment (``integrations/monailabel/build_env.sh`` builds it when
it is missing, once per content of its requirements): the test trains a tiny classifier with non-default
settings, starts ``serve.sh`` on a free port of 127.0.0.1, waits for ``/info/``, posts ``/infer`` for the
images of the datastore, compares the answers with the project's own pipeline on the same files, checks that
nothing listens beyond 127.0.0.1, and stops the server it started; then the same for a segmentation U-Net,
whose masks must equal the bundle's own inference, on the grid of the input.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "integrations" / "monailabel"
TRAINED = {"backbone": "resnet18", "image_size": 48, "in_channels": 3, "window": "mediastinum",
           "class_names": ["Healthy", "Sick"]}


@pytest.fixture(scope="module")
def monailabel_env() -> Path:
    """MONAI Label's environment, built by ``build_env.sh`` when missing (a failed build fails the test)."""
    python = APP / ".venv" / "bin" / "python"
    if not os.access(python, os.X_OK):
        built = subprocess.run(["bash", str(APP / "build_env.sh")], capture_output=True, text=True, timeout=1800)
        assert built.returncode == 0, "build_env.sh failed:\n" + (built.stdout + built.stderr)[-3000:]
    return python


@pytest.fixture(scope="module")
def trained(demo_dir, tmp_path_factory) -> Path:
    """A tiny classifier trained with settings that differ from every default of ``inference.json``."""
    out = tmp_path_factory.mktemp("served")
    args = [f"--{k}={json.dumps(v) if isinstance(v, list) else v}" for k, v in TRAINED.items()]
    result = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file",
         str(ROOT / "bundles" / "ct_classification" / "configs" / "train.json"),
         "--dataset_dir", str(demo_dir / "covid_ct"), "--pretrained_checkpoint", "None", "--max_epochs", "1",
         "--batch_size", "8", "--num_workers", "0", "--n_bootstrap", "20", "--ckpt_dir", str(out / "models"),
         "--log_dir", str(out / "logs"), "--output_dir", str(out / "eval"), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "trained from scratch" in result.stderr + result.stdout  # None, which MONAI's command line drops
    assert json.loads((out / "models" / "model.json").read_text())["settings"] == {**TRAINED, "encoding": "hu16"}
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.load(response)


def _listening_addresses(port: int) -> set[str]:
    """Local addresses (hex, as the kernel lists them) of TCP sockets listening on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


def _expected_probabilities(demo_dir: Path, model_dir: Path, image: str) -> list[float]:
    """The project's training pipeline and the stock MONAI ResNet on ``image``, with the trained settings."""
    from monai.networks.nets import ResNet
    from monai.transforms import Resized

    from medssl_monai.data import downstream_dataset

    net = ResNet("basic", [2, 2, 2, 2], [64, 128, 256, 512], spatial_dims=2, n_input_channels=3, num_classes=2,
                 conv1_t_stride=2, bias_downsample=False).eval()
    net.load_state_dict(torch.load(model_dir / "model.pt", weights_only=True))
    size = TRAINED["image_size"]
    for split in ("train", "val", "test"):
        data = downstream_dataset("class_folders", demo_dir / "covid_ct", split, window=TRAINED["window"],
                                  in_channels=3, transform=Resized("image", spatial_size=(size, size)))
        paths = [d["image"] for d in data.data]
        if image in paths:
            with torch.no_grad():
                return torch.softmax(net(data[paths.index(image)]["image"][None]), dim=1)[0].tolist()
    raise AssertionError(f"{image} is in no split of the demo collection")


class _Server:
    """``serve.sh`` with ``args`` on a free port of 127.0.0.1, up (``/info/`` answers) or a failure with its log;
    stopped, its whole process group, on exit."""

    def __init__(self, studies: Path, log: Path, *args: str) -> None:
        self.port, self.log_path = _free_port(), log
        self.args = ["bash", str(APP / "serve.sh"), str(studies), "--port", str(self.port), *args]

    def __enter__(self) -> "_Server":
        self.log = open(self.log_path, "w+")
        self.process = subprocess.Popen(self.args, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 300
        while True:
            try:
                self.info = _get(f"http://127.0.0.1:{self.port}/info/")
                return self
            except OSError:
                self.log.seek(0)
                assert self.process.poll() is None, \
                    f"the server stopped (exit {self.process.returncode}):\n{self.log.read()[-3000:]}"
                assert time.monotonic() < deadline, f"no answer on /info/ within 300 s:\n{self.log.read()[-3000:]}"
                time.sleep(1)

    def __exit__(self, *exc) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()
        assert not _listening_addresses(self.port), "the server outlived the test"

    def infer(self, model: str, image_id: str, output: str) -> bytes:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/infer/{model}?image={image_id}&output={output}", method="POST")
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.read()


def test_serve_sh_serves_the_model_as_trained_on_localhost_only(monailabel_env, trained, demo_dir, tmp_path):
    studies = tmp_path / "studies"
    studies.mkdir()
    images = {}
    for folder in ("CT_COVID", "CT_NonCOVID"):
        src = sorted((demo_dir / "covid_ct" / "Images-processed" / folder).glob("*.png"))[0]
        shutil.copy(src, studies / src.name)
        images[src.stem] = str(src)
    with _Server(studies, tmp_path / "server.log", "--models", str(trained / "models")) as server:
        model = server.info["models"]["ct_classification"]
        assert model["type"] == "classification" and model["labels"] == {"healthy": 0, "sick": 1}
        assert _listening_addresses(server.port) == {"0100007F"}, "the server listens beyond 127.0.0.1"
        objects = _get(f"http://127.0.0.1:{server.port}/datastore/?output=all")["objects"]
        assert set(objects) == set(images)
        for image_id, path in images.items():
            prediction = json.loads(server.infer("ct_classification", image_id, "json"))["prediction"]
            assert [(p["idx"], p["label"]) for p in prediction] == [(0, "healthy"), (1, "sick")]
            scores = [p["score"] for p in prediction]
            assert scores == pytest.approx(_expected_probabilities(demo_dir, trained / "models", path), abs=1e-4)


def test_serve_sh_serves_a_segmentation_model_with_masks_on_the_input_grid(monailabel_env, demo_dir, tmp_path):
    """An untrained ResNet18 U-Net with non-default settings: MONAI Label's mask of a RAS-stored volume is the
    bundle's own inference of it, voxel for voxel (a mask that varies in space, so a flip would show), with the
    input's shape and affine."""
    import nibabel as nib
    import numpy as np
    from monai.networks.nets import FlexibleUNet

    from medssl_monai.data.synthetic import ORGAN_LABELS
    from medssl_monai.networks import unet_backbone

    models = tmp_path / "models"
    models.mkdir()
    torch.manual_seed(0)
    net = FlexibleUNet(1, len(ORGAN_LABELS), unet_backbone("resnet18"))
    torch.nn.init.zeros_(net.segmentation_head[0].bias)  # else its bias alone decides: one class everywhere
    torch.save(net.state_dict(), models / "model.pt")
    settings = {"task": "segmentation", "backbone": "resnet18", "image_size": 32, "in_channels": 1,
                "window": "mediastinum", "label_names": list(ORGAN_LABELS)}
    (models / "model.json").write_text(json.dumps({"settings": settings, "metric": "val_mean_dice", "value": 0}))
    studies = tmp_path / "studies"
    studies.mkdir()
    datalist = json.loads((demo_dir / "datalist.json").read_text())
    ras = nib.as_closest_canonical(nib.load(demo_dir / datalist["test"][0]["image"]))
    nib.save(ras, studies / "scan.nii.gz")
    expected = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file",
         str(ROOT / "bundles" / "ct_segmentation" / "configs" / "inference.json"), "--ckpt_dir", str(models),
         "--input", str(studies), "--output_dir", str(tmp_path / "bundle_masks")],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert expected.returncode == 0, expected.stderr[-3000:]
    ours = nib.load(tmp_path / "bundle_masks" / "scan_seg.nii.gz")
    with _Server(studies, tmp_path / "server.log", "--bundle", "ct_segmentation", "--models", str(models)) as server:
        model = server.info["models"]["ct_segmentation"]
        assert model["type"] == "segmentation"
        assert model["labels"] == {name: i for i, name in enumerate(ORGAN_LABELS) if i > 0}
        (tmp_path / "served.nii.gz").write_bytes(server.infer("ct_segmentation", "scan", "image"))
    served = nib.load(tmp_path / "served.nii.gz")
    assert served.shape == ras.shape and np.allclose(served.affine, ras.affine, atol=1e-3)
    assert np.array_equal(np.asarray(served.dataobj), np.asarray(ours.dataobj))
    assert len(np.unique(np.asarray(served.dataobj))) > 3  # varies over the volume


@pytest.mark.parametrize("problem", ["no model", "no studies", "unknown option", "unknown bundle"])
def test_serve_sh_refuses_bad_input_with_a_message(problem, trained, tmp_path):
    studies, models, extra = tmp_path, trained / "models", []
    if problem == "no model":
        models = tmp_path / "empty"
    elif problem == "no studies":
        studies = tmp_path / "missing"
    elif problem == "unknown option":
        extra = ["--bind-all"]
    else:
        extra = ["--bundle", "ct_detection"]
    result = subprocess.run(["bash", str(APP / "serve.sh"), str(studies), "--models", str(models), *extra],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert {"no model": "model.pt missing", "no studies": "does not exist",
            "unknown option": "unknown argument --bind-all",
            "unknown bundle": "unknown bundle ct_detection"}[problem] in result.stderr
