"""The ct_classification bundle end to end through ``python -m monai.bundle``: train from a pre-trained encoder,
resume, evaluate, pack, infer from the unpacked zip, and the model-zoo checks."""

import csv
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from conftest import export_torchscript, run_killed, verify_bundle_metadata

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundles" / "ct_classification"
CONFIGS = BUNDLE / "configs"
SMALL = ["--backbone", "resnet18", "--image_size", "64"]


def _run(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "monai.bundle", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=900, env=dict(os.environ, PYTHONUNBUFFERED="1"))


@pytest.fixture(scope="module")
def trained(demo_dir, tmp_path_factory):
    from medssl_monai.checkpoints import save_encoder
    from medssl_monai.networks import resnet

    out = tmp_path_factory.mktemp("cls")
    torch.manual_seed(0)
    save_encoder({k: v for k, v in resnet("resnet18", 1).state_dict().items()}, out / "encoder.pt")
    args = ["run", "--config_file", str(CONFIGS / "train.json"), "--dataset_dir", str(demo_dir / "covid_ct"),
            "--ckpt_dir", str(out / "models"), "--log_dir", str(out / "logs"), "--output_dir", str(out / "eval"),
            *SMALL, "--batch_size", "8", "--freeze_epochs", "1", "--num_workers", "0", "--n_bootstrap", "50",
            "--pretrained_checkpoint", str(out / "encoder.pt")]
    args += ["--max_epochs", "2"]
    first = run_killed([sys.executable, "-m", "monai.bundle", *args], out / "models", cwd=ROOT)  # after epoch 1
    second = _run(*args)  # resumes after epoch 1, now with the backbone trained
    assert second.returncode == 0, second.stderr[-3000:]
    return out, args, first, second.stderr + second.stdout


def test_training_from_an_encoder_resumes_and_reports(trained):
    out, _, first, second = trained
    assert "loaded 120 backbone tensors" in first and "torchvision format" in first
    assert "backbone frozen" in first and "resumed from" in second and "backbone trained" in second
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    for name in ("auc", "accuracy", "f1", "balanced_accuracy"):
        assert set(metrics[name]) == {"value", "ci_low", "ci_high"}
    assert metrics["n"] == 10 and metrics["classes"] == ["NonCOVID", "COVID"] and metrics["resampled"] == "images"
    assert (out / "eval" / "confusion_matrix.png").stat().st_size > 0 and (out / "eval" / "roc_curve.png").is_file()
    state = torch.load(out / "models" / "model.pt", weights_only=True)  # a plain state_dict
    assert "fc.weight" in state and state["fc.weight"].shape == (2, 512)


def test_checkpoint_is_written_after_validation_with_the_best_score(trained):
    """Killed right after epoch 1's validation: the checkpoint the run resumed from holds that epoch's best."""
    out, _, first, _ = trained
    logged = float(first.split("new best val_auc ")[1].split(":")[0])
    epoch1 = min((p for p in (out / "models").glob("checkpoint_*.pt")), key=lambda p: int(p.stem.split("_")[1]))
    state = torch.load(epoch1, weights_only=True)
    trainer = state["trainer"]
    assert trainer["iteration"] == trainer["epoch_length"] and state["best"] == {"best": pytest.approx(logged, abs=1e-4), "best_epoch": 1}


def test_a_killed_and_resumed_run_equals_an_uninterrupted_one(trained, tmp_path):
    """Killed right after epoch 1's validation and resumed: the same weights, best epoch and test report as one
    run straight through (epoch order and augmentation are functions of seed and epoch, not of the process)."""
    out, args, _, _ = trained
    straight = [str(tmp_path / a[len(str(out)) + 1:]) if a.startswith(str(out) + "/") and a != str(out / "encoder.pt")
                else a for a in args]
    result = _run(*straight)
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = torch.load(out / "models" / "model.pt", weights_only=True)
    uninterrupted = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert resumed.keys() == uninterrupted.keys()
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed)
    def report(folder):  # the metrics, without the paths that name the folder
        metrics = json.loads((folder / "eval" / "metrics.json").read_text())
        return {k: v for k, v in metrics.items() if k not in ("identity", "checkpoint")}

    assert report(out) == report(tmp_path)


def test_a_different_run_in_the_same_folder_is_refused(trained, tmp_path):
    from medssl_monai.checkpoints import save_encoder
    from medssl_monai.networks import resnet

    out, args, _, _ = trained
    model = (out / "models" / "model.pt").read_bytes()
    result = _run(*args, "--label_fraction", "0.5")
    log = result.stdout + result.stderr
    assert result.returncode != 0 and "belongs to a different run: label_fraction: recorded 1.0, this run 0.5" in log
    assert "another --ckpt_dir" in log and "--resume false" in log
    torch.manual_seed(1)
    save_encoder(resnet("resnet18", 1).state_dict(), tmp_path / "encoder.pt")
    result = _run(*args, "--pretrained_checkpoint", str(tmp_path / "encoder.pt"))
    log = result.stdout + result.stderr
    assert result.returncode != 0 and "pretrained_checkpoint: recorded" in log and "pretrained_sha256: recorded" in log
    assert (out / "models" / "model.pt").read_bytes() == model  # nothing of the other run was touched


def test_a_finished_run_says_so_and_resume_false_starts_over(trained, tmp_path):
    import shutil

    out, args, _, _ = trained
    result = _run(*args)
    assert result.returncode == 0 and "this run is already finished" in result.stdout + result.stderr
    models = tmp_path / "models"
    shutil.copytree(out / "models", models)
    again = [a if a != str(out / "models") else str(models) for a in args]
    result = _run(*again, "--resume", "false", "--max_epochs", "1", "--output_dir", str(tmp_path / "eval"))
    assert result.returncode == 0 and "starting over; removed 2 old checkpoint(s)" in result.stdout + result.stderr
    (left,) = models.glob("checkpoint_*.pt")
    assert torch.load(left, weights_only=True)["identity"]["max_epochs"] == 1


def test_evaluate_config_rewrites_the_report(trained):
    out, args, _, _ = trained
    (out / "eval" / "metrics.json").unlink()
    configs = f"['{CONFIGS / 'train.json'}','{CONFIGS / 'evaluate.json'}']"
    result = _run("run", "--config_file", configs, *args[3:])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "training from scratch" not in result.stderr and "Epoch[1]" not in result.stderr  # no training
    assert json.loads((out / "eval" / "metrics.json").read_text())["n"] == 10


def test_packed_bundle_infers_without_the_package_configs(trained, demo_dir, tmp_path):
    from medssl_monai.cli import main

    out, _, _, _ = trained
    root = tmp_path / "bundle"
    (root / "models").mkdir(parents=True)
    for name in ("configs", "docs", "LICENSE", "sample.png"):
        src = BUNDLE / name
        subprocess.run(["cp", "-r", str(src), str(root / name)], check=True)
    for name in ("model.pt", "model.json"):  # the weights and the settings they were trained with
        (root / "models" / name).write_bytes((out / "models" / name).read_bytes())
    assert main(["pack-bundle", "ct_classification", "--out", str(tmp_path / "cls.zip"), "--bundle-root",
                 str(root)]) == 0
    with zipfile.ZipFile(tmp_path / "cls.zip") as archive:
        names = archive.namelist()
        assert {n.split("/")[0] for n in names} == {"ct_classification"}
        assert {"ct_classification/models/model.pt", "ct_classification/models/model.json",
                "ct_classification/configs/inference.json"} <= set(names)
        assert "ct_classification/sample.png" in names
        archive.extractall(tmp_path / "unzipped")
    unpacked = tmp_path / "unzipped" / "ct_classification"
    image = sorted((demo_dir / "covid_ct" / "Images-processed" / "CT_COVID").glob("*.png"))[0]
    # the MONAI-only inference pipeline gives what the training pipeline's network gives for the same file,
    # with a HU window preset and with the reference study's per-image min-max scaling
    from monai.networks.nets import ResNet
    from monai.transforms import Resized

    from medssl_monai.data import downstream_dataset

    net = ResNet("basic", [2, 2, 2, 2], [64, 128, 256, 512], spatial_dims=2, n_input_channels=1, num_classes=2,
                 conv1_t_stride=2, bias_downsample=False).eval()
    net.load_state_dict(torch.load(out / "models" / "model.pt", weights_only=True))
    for window in ("lung", "minmax"):
        result = _run("run", "--config_file", str(unpacked / "configs" / "inference.json"), "--bundle_root",
                      str(unpacked), "--input_image", str(image), "--window", window, cwd=tmp_path)  # size as trained
        assert result.returncode == 0, result.stderr[-3000:]
        assert "class probabilities: {'NonCOVID':" in result.stdout
        with open(unpacked / "eval" / "predictions.csv") as f:
            row = next(csv.reader(f))
        probs = [float(v) for v in row[1:]]
        assert row[0] == str(image) and sum(probs) == pytest.approx(1.0, abs=1e-5)
        split = next(s for s in ("train", "val", "test") if str(image) in
                     [d["image"] for d in downstream_dataset("class_folders", demo_dir / "covid_ct", s).data])
        data = downstream_dataset("class_folders", demo_dir / "covid_ct", split, window=window,
                                  transform=Resized("image", spatial_size=(64, 64)))
        index = [d["image"] for d in data.data].index(str(image))
        with torch.no_grad():
            expected = torch.softmax(net(data[index]["image"][None]), dim=1)[0]
        assert probs == pytest.approx(expected.tolist(), abs=1e-4), window
    # without --input_image: the bundle's own sample image
    result = _run("run", "--config_file", str(unpacked / "configs" / "inference.json"), "--bundle_root",
                  str(unpacked), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(unpacked / "eval" / "predictions.csv") as f:
        assert next(csv.reader(f))[0] == str(unpacked / "sample.png")


def test_inference_from_the_project_root_needs_no_paths_but_the_model(trained, tmp_path):
    """As a user types it at the project root: the bundle and its sample image are found, minmax included."""
    out, _, _, _ = trained
    result = _run("run", "--config_file", str(CONFIGS / "inference.json"), *SMALL, "--window", "minmax",
                  "--ckpt_dir", str(out / "models"), "--output_dir", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    with open(tmp_path / "predictions.csv") as f:
        assert next(csv.reader(f))[0] == "bundles/ct_classification/sample.png"


@pytest.mark.parametrize("workflow,config", [("train", "train.json"), ("infer", "inference.json")])
def test_workflow_properties(workflow, config, demo_dir, tmp_path):
    from monai.bundle import ConfigWorkflow

    overrides = {"dataset_dir": str(demo_dir / "covid_ct"), "ckpt_dir": str(tmp_path), "log_dir": str(tmp_path),
                 "pretrained_checkpoint": "none"}  # the default, the demo SparK encoder, exists only once trained
    wf = ConfigWorkflow(config_file=str(CONFIGS / config), workflow_type=workflow,
                        **(overrides if workflow == "train" else {"bundle_root": str(tmp_path)}))
    wf.initialize()
    assert not wf.check_properties()


def test_model_zoo_checks(trained, tmp_path):
    out, _, _, _ = trained
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"] == {"0": "NonCOVID", "1": "COVID"}
    verify_bundle_metadata(CONFIGS)
    scripted = export_torchscript(CONFIGS, out / "models" / "model.pt", tmp_path / "model.ts", backbone="resnet18",
                                  image_size=64)
    x = torch.rand(2, 1, 64, 64)
    from monai.networks.nets import ResNet

    net = ResNet("basic", [2, 2, 2, 2], [64, 128, 256, 512], spatial_dims=2, n_input_channels=1, num_classes=2,
                 conv1_t_stride=2, bias_downsample=False).eval()
    net.load_state_dict(torch.load(out / "models" / "model.pt", weights_only=True))
    assert torch.allclose(scripted(x), net(x), atol=1e-5)
    for name in ("LICENSE", "docs/README.md", "configs/logging.conf", "configs/multi_gpu_train.json",
                 "configs/evaluate.json"):
        assert (BUNDLE / name).is_file()


def test_inference_window_presets_match_the_package():
    """inference.json carries the HU presets as data (it must run without this package): they must not drift."""
    from medssl_monai.data import HU_WINDOWS

    presets = json.loads((CONFIGS / "inference.json").read_text())["hu_windows"]
    assert {k: tuple(float(x) for x in v) for k, v in presets.items()} == HU_WINDOWS


def test_two_process_fine_tuning_with_a_frozen_first_epoch(trained, demo_dir, tmp_path):
    """DDP with gloo on CPU: the backbone freezes after DDP has wrapped the network, stays exactly the encoder's
    through epoch 1 (BN statistics included) and trains in epoch 2."""
    out, _, _, _ = trained
    configs = f"['{CONFIGS / 'train.json'}','{CONFIGS / 'multi_gpu_train.json'}']"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "monai.bundle", "run",
           "--config_file", configs, "--dataset_dir", str(demo_dir / "covid_ct"), "--ckpt_dir", str(tmp_path / "models"),
           "--log_dir", str(tmp_path / "logs"), "--output_dir", str(tmp_path / "eval"), *SMALL, "--batch_size", "4",
           "--max_epochs", "2", "--freeze_epochs", "1", "--num_workers", "0", "--n_bootstrap", "20",
           "--pretrained_checkpoint", str(out / "encoder.pt"), "--patient_pattern", r"demo_(\d+)_"]
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    encoder = torch.load(out / "encoder.pt", weights_only=True)
    first, second = sorted((tmp_path / "models").glob("checkpoint_*.pt"), key=lambda p: int(p.stem.split("_")[1]))
    assert torch.load(first, weights_only=True)["identity"]["world_size"] == 2  # part of what the run is
    frozen = torch.load(first, weights_only=True)["network"]
    trained_2 = torch.load(second, weights_only=True)["network"]
    assert all(torch.equal(frozen[k], v) for k, v in encoder.items() if not k.endswith("num_batches_tracked"))
    assert not torch.equal(trained_2["layer1.0.conv1.weight"], encoder["layer1.0.conv1.weight"])
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["resampled"] == "patients" and metrics["n_resampled"] == metrics["n"] // 2  # 2 images each
