"""8-bit screenshot datasets like the public UCSD COVID-CT: grey, grey + alpha, RGB and RGBA PNG and JPG of many
sizes, read as one grey channel, then fine-tuned, evaluated and inferred on with 1 or 3 channels."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medssl_monai.data import downstream_dataset
from medssl_monai.data.downstream import class_folder_datalist

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "bundles" / "ct_classification" / "configs"
MODES = ("L", "LA", "RGB", "RGBA")


def _as_screenshot(grey: np.ndarray, mode: str, size: int) -> Image.Image:
    image = Image.fromarray(grey).resize((size, size))
    return image.convert(mode)


@pytest.fixture(scope="module")
def screenshots(demo_dir, tmp_path_factory):
    """The demo COVID-like set as 8-bit lung-window screenshots, modes and sizes cycling, PNG and JPG."""
    root = tmp_path_factory.mktemp("ucsd")
    for cls in ("NonCOVID", "COVID"):
        for split in ("train", "val", "test"):
            names = []
            for i, sample in enumerate(class_folder_datalist(demo_dir / "covid_ct", split, classes=(cls,))):
                hu = np.asarray(Image.open(sample["image"])).astype(np.float32) - 1024
                grey = (np.clip((hu + 1350) / 1500, 0, 1) * 255).round().astype(np.uint8)
                mode, size = MODES[i % 4], (56, 64, 80)[i % 3]
                suffix = ".jpg" if mode in ("L", "RGB") and i % 2 else ".png"
                name = f"{Path(sample['image']).stem}_{mode}{suffix}"
                (root / "Images-processed" / f"CT_{cls}").mkdir(parents=True, exist_ok=True)
                _as_screenshot(grey, mode, size).save(root / "Images-processed" / f"CT_{cls}" / name)
                names.append(name)
            (root / "Data-split" / cls).mkdir(parents=True, exist_ok=True)
            (root / "Data-split" / cls / f"{split}CT_{cls}.txt").write_text("\n".join(names) + "\n")
    return root


def test_every_colour_layout_is_read_as_one_grey_channel(screenshots, tmp_path):
    for channels in (1, 3):
        data = downstream_dataset("class_folders", screenshots, "train", encoding="uint8", window="minmax",
                                  in_channels=channels)
        modes = {Image.open(d["image"]).mode for d in data.data}
        assert modes == set(MODES)
        for i in range(len(data)):
            image = data[i]["image"]
            assert image.shape[0] == channels and float(image.min()) == 0.0 and float(image.max()) == 1.0
    grey = (np.arange(64 * 64) % 251).astype(np.uint8).reshape(64, 64)
    for mode in MODES:  # the same grey image in every layout reads the same
        _as_screenshot(grey, mode, 64).save(tmp_path / f"{mode}.png")
    (tmp_path / "list.csv").write_text("image,label,split\n" + "".join(f"{m}.png,0,train\n" for m in MODES))
    data = downstream_dataset("table", tmp_path / "list.csv", "train", encoding="uint8", window="full")
    reference = data[0]["image"]
    assert torch.allclose(reference, torch.as_tensor(grey.T / 255.0, dtype=torch.float32)[None], atol=1e-6)
    for i in range(1, len(MODES)):
        assert torch.allclose(data[i]["image"], reference, atol=1 / 255), MODES[i]


def _run(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "monai.bundle", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=900, env=dict(os.environ, PYTHONUNBUFFERED="1"))


@pytest.mark.parametrize("channels", [1, 3])
def test_train_evaluate_and_infer_on_screenshots(channels, screenshots, tmp_path):
    small = ["--backbone", "resnet18", "--image_size", "64", "--in_channels", str(channels)]
    args = ["--dataset_dir", str(screenshots), "--encoding", "uint8", "--window", "minmax",
            "--ckpt_dir", str(tmp_path / "models"), "--log_dir", str(tmp_path / "logs"), "--output_dir",
            str(tmp_path / "eval"), *small, "--batch_size", "8", "--max_epochs", "1", "--freeze_epochs", "0",
            "--num_workers", "0", "--n_bootstrap", "20", "--pretrained_checkpoint", "none"]
    trained = _run("run", "--config_file", str(CONFIGS / "train.json"), *args)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["n"] == 10
    if channels == 1:  # evaluate.json reads the screenshots as training did; once is enough
        evaluated = _run("run", "--config_file", f"['{CONFIGS / 'train.json'}','{CONFIGS / 'evaluate.json'}']", *args)
        assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    rgba = next(p for p in sorted((screenshots / "Images-processed").rglob("*_RGBA.png")))
    inferred = _run("run", "--config_file", str(CONFIGS / "inference.json"), "--bundle_root", str(tmp_path),
                    "--ckpt_dir", str(tmp_path / "models"), "--output_dir", str(tmp_path / "inf"), "--input_image",
                    str(rgba), "--encoding", "uint8", "--window", "minmax", *small, cwd=tmp_path)
    assert inferred.returncode == 0, inferred.stderr[-3000:]
    with open(tmp_path / "inf" / "predictions.csv") as f:
        row = next(csv.reader(f))
    from monai.networks.nets import ResNet
    from monai.transforms import Resized

    net = ResNet("basic", [2, 2, 2, 2], [64, 128, 256, 512], spatial_dims=2, n_input_channels=channels,
                 num_classes=2, conv1_t_stride=2, bias_downsample=False).eval()
    net.load_state_dict(torch.load(tmp_path / "models" / "model.pt", weights_only=True))
    (tmp_path / "one.csv").write_text(f"image,label,split\n{rgba},0,test\n")
    sample = downstream_dataset("table", tmp_path / "one.csv", "test", encoding="uint8", window="minmax",
                                in_channels=channels, transform=Resized("image", spatial_size=(64, 64)))[0]
    with torch.no_grad():
        expected = torch.softmax(net(sample["image"][None]), dim=1)[0]
    assert [float(v) for v in row[1:]] == pytest.approx(expected.tolist(), abs=1e-4)
