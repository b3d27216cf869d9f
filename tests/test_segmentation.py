"""ct_segmentation: strict encoder loading into the U-Net, the stock networks its weights load into, Dice and HD95,
learning beyond an untrained model, and the bundle end to end through ``python -m monai.bundle`` (train, resume,
evaluate, infer masks on the input's grid, DDP, the model-zoo checks)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torchvision
from monai.networks.nets import FlexibleUNet

from conftest import export_torchscript, run_killed, verify_bundle_metadata
from medssl_monai.checkpoints import save_encoder
from medssl_monai.data import AxialSliceDataset, volume_dataset
from medssl_monai.data.synthetic import ORGAN_LABELS
from medssl_monai.evaluation import segmentation_metrics, volume_scores
from medssl_monai.networks import resnet, unet_backbone
from medssl_monai.networks.pretrained import load_pretrained

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundles" / "ct_segmentation"
CONFIGS = BUNDLE / "configs"
SMALL = ["--backbone", "resnet18", "--image_size", "64"]
K = len(ORGAN_LABELS)


def _run(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "monai.bundle", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=900, env=dict(os.environ, PYTHONUNBUFFERED="1"))


@pytest.mark.parametrize("backbone", ["resnet18", "resnet50"])
def test_every_encoder_loads_strictly_into_the_unet_encoder(backbone, tmp_path):
    torch.manual_seed(0)
    source = resnet(backbone, 3)  # the 3-channel stem of encoder.pt; the U-Net reads 1 channel
    save_encoder(source.state_dict(), tmp_path / "encoder.pt")
    net = FlexibleUNet(1, K, unet_backbone(backbone))
    decoder_before = {k: v.clone() for k, v in net.decoder.state_dict().items()}
    weights = load_pretrained(net, tmp_path / "encoder.pt")
    assert weights.notes  # the stem was converted, and said so
    loaded = net.encoder.state_dict()
    expected = {k: v for k, v in source.state_dict().items() if not k.startswith("fc.")}
    assert set(loaded) == set(expected)  # every tensor, nothing left at random
    assert all(torch.equal(loaded[k], v) for k, v in expected.items() if k != "conv1.weight")
    assert torch.allclose(loaded["conv1.weight"], expected["conv1.weight"].sum(1, keepdim=True))
    assert all(torch.equal(net.decoder.state_dict()[k], v) for k, v in decoder_before.items())  # from scratch


def test_wrong_checkpoints_are_refused_with_the_file_named(tmp_path):
    save_encoder(resnet("resnet50", 1).state_dict(), tmp_path / "r50.pt")
    with pytest.raises(ValueError, match=r"r50.pt: cannot initialise the backbone.*resnet18/34/50"):
        load_pretrained(FlexibleUNet(1, K, unet_backbone("resnet18")), tmp_path / "r50.pt")
    torch.save({"decoder.weight": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt: cannot initialise the backbone"):
        load_pretrained(FlexibleUNet(1, K, unet_backbone("resnet18")), tmp_path / "other.pt")
    with pytest.raises(ValueError, match="unknown backbone 'resnet101'"):
        unet_backbone("resnet101")


def test_unet_weights_load_into_the_stock_networks():
    """A ResNet50 U-Net is MONAI's stock FlexibleUNet; every U-Net's encoder is a stock torchvision ResNet."""
    ours = FlexibleUNet(3, K, unet_backbone("resnet50")).eval()
    stock = FlexibleUNet(3, K, "resnet50").eval()
    stock.load_state_dict(ours.state_dict(), strict=True)
    x = torch.rand(1, 3, 64, 64)
    assert torch.equal(stock(x), ours(x))
    for backbone in ("resnet18", "resnet50"):
        encoder = FlexibleUNet(3, K, unet_backbone(backbone)).encoder.state_dict()
        result = getattr(torchvision.models, backbone)().load_state_dict(encoder, strict=False)
        assert set(result.missing_keys) == {"fc.weight", "fc.bias"} and not result.unexpected_keys


def test_dice_and_hd95_per_organ_with_patient_intervals():
    label = torch.zeros(16, 16, 4, dtype=torch.long)
    label[2:8, 2:8] = 1
    label[10:14, 10:14] = 2  # class 3 absent
    perfect = volume_scores(label, label, 4, (1.0, 1.0, 2.0))
    assert np.allclose(perfect["dice"][:2], 1) and np.allclose(perfect["hd95"][:2], 0)
    assert np.isnan(perfect["dice"][2]) and np.isnan(perfect["hd95"][2])  # absent organ: not counted
    missed = label.clone()
    missed[missed == 2] = 0
    shifted = torch.roll(missed, 2, dims=0)
    scores = volume_scores(shifted, label, 4, (1.0, 1.0, 2.0))
    assert 0 < scores["dice"][0] < 1 and scores["hd95"][0] == pytest.approx(2.0)  # shifted 2 voxels of 1 mm
    assert scores["dice"][1] == 0 and scores["hd95"][1] == pytest.approx(np.linalg.norm([16, 16, 8]))  # missed
    per_patient = {m: np.stack([perfect[m], scores[m]]) for m in ("dice", "hd95")}
    metrics = segmentation_metrics(per_patient, ["a", "b", "c"], n_bootstrap=200)
    assert metrics["dice"]["b"]["value"] == pytest.approx(0.5) and metrics["dice"]["b"]["n_patients"] == 2
    assert metrics["dice"]["b"]["ci_low"] == 0 and metrics["dice"]["b"]["ci_high"] == 1
    assert np.isnan(metrics["dice"]["c"]["value"]) and metrics["dice"]["c"]["n_patients"] == 0
    assert metrics["dice"]["mean"]["value"] == pytest.approx(np.mean([(1 + scores["dice"][0]) / 2, 0.5]))
    assert metrics["n_patients"] == 2 and metrics["resampled"] == "patients"


def test_brief_training_beats_an_untrained_unet(demo_dir):
    """Sixty iterations on two patients' slices: the validation patient's mean Dice rises well above the same
    network's before training (and above zero-effort: its lungs are found)."""
    from monai.inferers import SliceInferer
    from monai.losses import DiceCELoss

    torch.manual_seed(0)
    train = AxialSliceDataset(demo_dir / "datalist.json", window="lung", labels=True)
    val = volume_dataset(demo_dir / "datalist.json", window="lung", datalist_key="validation")[0]
    net = FlexibleUNet(1, K, unet_backbone("resnet18"))
    inferer = SliceInferer(roi_size=(64, 64), spatial_dim=2, sw_batch_size=8)

    def mean_dice() -> tuple[float, np.ndarray]:
        net.eval()
        with torch.no_grad():
            pred = inferer(val["image"][None], net)[0].argmax(0)
        dice = volume_scores(pred, torch.as_tensor(val["label"])[0], K, (1.0, 1.0, 1.0))["dice"]
        return float(np.nanmean(dice)), dice

    before, _ = mean_dice()
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    loader = torch.utils.data.DataLoader(train, batch_size=8, shuffle=True)
    step = 0
    while step < 60:
        for batch in loader:
            net.train()
            loss = loss_fn(net(batch["image"]), batch["label"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
    after, dice = mean_dice()
    assert after > before + 0.2, (before, after)
    assert dice[0] > 0.6 and dice[1] > 0.6, dice  # lung_left, lung_right


def test_slices_and_volumes_resampled_in_plane_keep_their_slices_and_label_values(demo_dir, tmp_path):
    """``spacing`` resamples in plane only: a volume keeps its slices, a label map its values (nearest
    neighbour), the volume's affine says 6 mm, and the disk store keeps each grid apart."""
    datalist = demo_dir / "datalist.json"
    stored = AxialSliceDataset(datalist, window="lung", labels=True, cache="disk", cache_dir=tmp_path)
    resampled = AxialSliceDataset(datalist, window="lung", labels=True, cache="disk", cache_dir=tmp_path, spacing=6)
    assert len(resampled) == len(stored) and len(list(tmp_path.glob("*.npy"))) == 4 * len(stored.volumes)
    entry = stored.volumes[0]
    header = nib.load(entry["image"]).header
    sample = resampled[3]
    expected = round(header.get_data_shape()[0] * float(header.get_zooms()[0]) / 6)
    assert abs(sample["image"].shape[-1] - expected) <= 1 and sample["label"].shape == sample["image"].shape
    assert set(sample["label"].unique().tolist()) <= set(range(K)) and sample["label"].max() > 0
    volume = volume_dataset(datalist, window="lung", datalist_key="validation", spacing=[6, 6])[0]
    assert np.allclose(np.linalg.norm(np.asarray(volume["image"].affine)[:3, :2], axis=0), 6.0)
    assert volume["image"].shape[-1] == nib.load(entry["image"]).shape[2] and volume["label"].shape == volume["image"].shape
    with pytest.raises(ValueError, match="spacing must be one positive"):
        volume_dataset(datalist, datalist_key="validation", spacing=[6, 0])
    with pytest.raises(ValueError, match="axial slices keep their thickness"):
        AxialSliceDataset(datalist, labels=True, spacing=[6, 6, 6])


@pytest.fixture(scope="module")
def trained(demo_dir, tmp_path_factory):
    """A tiny run from a saved encoder, killed at its first checkpoint and resumed to the end, on slices
    resampled to 4 mm pixels (so that inference must invert the resampling to write masks on the input grid)."""
    out = tmp_path_factory.mktemp("seg")
    torch.manual_seed(0)
    save_encoder(resnet("resnet18", 1).state_dict(), out / "encoder.pt")
    args = ["run", "--config_file", str(CONFIGS / "train.json"), "--dataset_dir", str(demo_dir),
            "--ckpt_dir", str(out / "models"), "--log_dir", str(out / "logs"), "--output_dir", str(out / "eval"),
            *SMALL, "--batch_size", "4", "--samples_per_epoch", "8", "--freeze_epochs", "1", "--num_workers", "0",
            "--n_bootstrap", "50", "--spacing", "4", "--pretrained_checkpoint", str(out / "encoder.pt"), "--max_epochs", "2"]
    first = run_killed([sys.executable, "-m", "monai.bundle", *args], out / "models", cwd=ROOT)  # after epoch 1
    second = _run(*args)
    assert second.returncode == 0, second.stderr[-3000:]
    return out, args, first, second.stderr + second.stdout


def test_training_resumes_and_reports_dice_and_hd95_per_organ(trained):
    out, _, first, second = trained
    assert "loaded 120 backbone tensors" in first and "the decoder is new" in first and "backbone frozen" in first
    assert "resumed from" in second and "backbone trained" in second and "val_mean_dice" in second
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert metrics["labels"] == list(ORGAN_LABELS) and metrics["n_patients"] == 1
    for metric in ("dice", "hd95"):
        assert set(metrics[metric]) == {"mean", *ORGAN_LABELS[1:]}
        assert set(metrics[metric]["mean"]) == {"value", "ci_low", "ci_high"}
    rows = (out / "eval" / "per_patient.csv").read_text().splitlines()
    assert rows[0] == "patient,organ,dice,hd95" and len(rows) == 1 + K - 1
    assert (out / "eval" / "dice_per_organ.png").stat().st_size > 0 and (out / "eval" / "overlay.png").is_file()
    settings = json.loads((out / "models" / "model.json").read_text())
    assert settings["metric"] == "val_mean_dice" and settings["settings"]["label_names"] == list(ORGAN_LABELS)
    assert settings["settings"]["spacing"] == 4
    state = torch.load(out / "models" / "model.pt", weights_only=True)  # a plain state_dict of the stock class
    FlexibleUNet(1, K, unet_backbone("resnet18")).load_state_dict(state, strict=True)
    events = b"".join(f.read_bytes() for f in (out / "logs").glob("events.out.tfevents.*"))
    assert b"val_overlay" in events and b"val_mean_dice" in events and b"train/loss" in events


def test_a_different_run_in_the_same_folder_is_refused(trained):
    out, args, _, _ = trained
    result = _run(*args[:-1], "3", "--label_fraction", "0.5")  # max_epochs 3, half the patients
    assert result.returncode != 0
    assert "belongs to a different run" in result.stderr and "label_fraction" in result.stderr


def test_evaluate_config_gives_the_same_report_again_without_training(trained):
    out, args, _, _ = trained
    report = out / "eval" / "metrics.json"
    before = json.loads(report.read_text())
    report.unlink()
    result = _run("run", "--config_file", f"['{CONFIGS / 'train.json'}','{CONFIGS / 'evaluate.json'}']", *args[3:])
    assert result.returncode == 0 and "Epoch[1]" not in result.stderr, result.stderr[-3000:]
    after = json.loads(report.read_text())
    for metric in ("dice", "hd95"):  # as text: absent organs are NaN, which equals nothing
        assert json.dumps(after[metric]) == json.dumps(before[metric])


def test_inference_writes_masks_on_the_input_grid(trained, demo_dir, tmp_path):
    """A volume stored RAS (not the LPS the network reads) gets its mask back in RAS, with its shape and affine,
    equal to the mask of the same volume stored LPS."""
    out, _, _, _ = trained
    datalist = json.loads((demo_dir / "datalist.json").read_text())
    lps = nib.load(demo_dir / datalist["test"][0]["image"])
    inputs = tmp_path / "in"
    inputs.mkdir()
    ras = nib.as_closest_canonical(lps)
    assert nib.aff2axcodes(ras.affine) != nib.aff2axcodes(lps.affine)
    nib.save(ras, inputs / "ras.nii.gz")
    nib.save(lps, inputs / "lps.nii.gz")
    result = _run("run", "--config_file", str(CONFIGS / "inference.json"), "--ckpt_dir", str(out / "models"),
                  "--input", str(inputs), "--output_dir", str(tmp_path / "masks"))
    assert result.returncode == 0, result.stderr[-3000:]
    masks = {name: nib.load(tmp_path / "masks" / f"{name}_seg.nii.gz") for name in ("ras", "lps")}
    for name, image in (("ras", ras), ("lps", lps)):
        assert masks[name].shape == image.shape and np.allclose(masks[name].affine, image.affine)
        assert masks[name].get_data_dtype() == np.uint8 and np.asarray(masks[name].dataobj).max() < K
    assert np.array_equal(np.asarray(nib.as_closest_canonical(masks["lps"]).dataobj), np.asarray(masks["ras"].dataobj))
    result = _run("run", "--config_file", str(CONFIGS / "inference.json"), "--ckpt_dir", str(out / "models"),
                  "--input", str(tmp_path / "missing"), "--output_dir", str(tmp_path / "masks"))
    assert result.returncode != 0 and "no input volumes at" in result.stderr


@pytest.mark.parametrize("workflow,config", [("train", "train.json"), ("infer", "inference.json")])
def test_workflow_properties(workflow, config, demo_dir, tmp_path):
    from monai.bundle import ConfigWorkflow

    overrides = {"dataset_dir": str(demo_dir), "ckpt_dir": str(tmp_path), "log_dir": str(tmp_path),
                 "pretrained_checkpoint": "none"}
    wf = ConfigWorkflow(config_file=str(CONFIGS / config), workflow_type=workflow,
                        **(overrides if workflow == "train" else {"bundle_root": str(tmp_path),
                                                                   "dataset_dir": str(demo_dir)}))
    wf.initialize()
    assert not wf.check_properties()


def test_model_zoo_checks(trained, tmp_path):
    out, _, _, _ = trained
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"] == {str(i): n for i, n in enumerate(ORGAN_LABELS)}
    verify_bundle_metadata(CONFIGS)
    scripted = export_torchscript(CONFIGS, out / "models" / "model.pt", tmp_path / "model.ts", n=2,
                                  backbone="resnet18", image_size=64)
    net = FlexibleUNet(1, K, unet_backbone("resnet18")).eval()
    net.load_state_dict(torch.load(out / "models" / "model.pt", weights_only=True))
    x = torch.rand(1, 1, 64, 64)
    assert torch.allclose(scripted(x), net(x), atol=1e-5)
    for name in ("LICENSE", "docs/README.md", "configs/logging.conf", "configs/multi_gpu_train.json",
                 "configs/evaluate.json"):
        assert (BUNDLE / name).is_file()


def test_two_process_training(trained, demo_dir, tmp_path):
    """DDP with gloo on CPU: both ranks train, validation is shared, rank 0 writes the model and the report."""
    out, _, _, _ = trained
    configs = f"['{CONFIGS / 'train.json'}','{CONFIGS / 'multi_gpu_train.json'}']"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "monai.bundle", "run",
           "--config_file", configs, "--dataset_dir", str(demo_dir), "--ckpt_dir", str(tmp_path / "models"),
           "--log_dir", str(tmp_path / "logs"), "--output_dir", str(tmp_path / "eval"), *SMALL, "--batch_size", "4",
           "--samples_per_epoch", "8", "--max_epochs", "1", "--num_workers", "0", "--n_bootstrap", "20",
           "--pretrained_checkpoint", str(out / "encoder.pt")]
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    (checkpoint,) = (tmp_path / "models").glob("checkpoint_*.pt")
    assert checkpoint.name == "checkpoint_1.pt"  # 8 samples an epoch, 4 a rank: one iteration of 4
    assert torch.load(checkpoint, weights_only=True)["identity"]["world_size"] == 2
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["n_patients"] == 1
