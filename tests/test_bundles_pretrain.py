"""The four pre-training bundles end to end through ``python -m monai.bundle``, and their MONAI checks."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torchvision

from conftest import run_killed, verify_bundle_metadata

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("spark", "moco", "byol", "swav")
# small settings: ResNet18, 64 px (SwAV's local crops 32 px), batch 4; BYOL with the speed ids on
OVERRIDES = {"swav": ["--local_size", "32", "--freeze_prototypes_iterations", "2"],
             "byol": ["--channels_last", "true", "--foreach", "true"]}
RELEASE = {"spark": ("module", ""), "moco": ("state_dict", "encoder_q."), "byol": ("state_dict", "online_network.encoder."),
           "swav": ("state_dict", "model.")}


def _run(*args, cwd):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "monai.bundle", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900)


def _bundle(method):
    return ROOT / "bundles" / f"{method}_pretrain"


def _small_resnet18():
    net = torchvision.models.resnet18()
    net.conv1 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    return net


def _assert_only_fc_missing(result):
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and not result.unexpected_keys


def test_encoder_files_load_into_stock_torchvision_and_monai_networks(tiny_run):
    """encoder.pt / .safetensors: 3-channel stem from the 1-channel run, the same function of a grey slice as the
    native encoder_1ch.pt; stock torchvision and MONAI ResNets load them with only fc missing."""
    import monai
    from safetensors.torch import load_file

    _, ckpt, _ = tiny_run
    sd = torch.load(ckpt / "encoder.pt", weights_only=True)
    native = torch.load(ckpt / "encoder_1ch.pt", weights_only=True)
    assert sd["conv1.weight"].shape == (64, 3, 7, 7) and native["conv1.weight"].shape == (64, 1, 7, 7)
    safe = load_file(ckpt / "encoder.safetensors")
    assert safe.keys() == sd.keys() and all(torch.equal(safe[k], sd[k]) for k in sd)
    stock, grey = torchvision.models.resnet18(), _small_resnet18()
    _assert_only_fc_missing(stock.load_state_dict(sd, strict=False))
    _assert_only_fc_missing(grey.load_state_dict(native, strict=False))
    stock.fc = grey.fc = torch.nn.Identity()
    x = torch.rand(3, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        features = stock.eval()(x.expand(-1, 3, -1, -1))
        assert torch.allclose(features, grey.eval()(x), atol=1e-5, rtol=1e-4)
        net = monai.networks.nets.resnet18(spatial_dims=2, n_input_channels=3, conv1_t_stride=2,
                                           bias_downsample=False, num_classes=2)
        _assert_only_fc_missing(net.load_state_dict(sd, strict=False))
        net.fc = torch.nn.Identity()
        assert torch.allclose(net.eval()(x.expand(-1, 3, -1, -1)), features, atol=1e-5, rtol=1e-4)


def test_inspect_checkpoint_names_the_encoder_files(tiny_run, capsys):
    from medssl_monai.cli import main

    _, ckpt, _ = tiny_run
    for name, channels, kind in (("encoder.pt", 3, "PyTorch"), ("encoder.safetensors", 3, "safetensors"),
                                 ("encoder_1ch.pt", 1, "PyTorch")):
        assert main(["inspect-checkpoint", str(ckpt / name)]) == 0
        out = capsys.readouterr().out
        assert f"{name} ({kind})" in out and f"resnet18 with a {channels}-channel stem" in out
        assert ("loads as is into a stock torchvision.models.resnet18()" in out) == (channels == 3)


@pytest.fixture(scope="module", params=METHODS)
def tiny_run(request, demo_dir, tmp_path_factory):
    method = request.param
    ckpt = tmp_path_factory.mktemp(f"{method}_ckpt")
    args = ["run", "--config_file", str(_bundle(method) / "configs" / "train.json"), "--dataset_dir", str(demo_dir),
            "--ckpt_dir", str(ckpt), "--log_dir", str(ckpt / "logs"), "--backbone", "resnet18", "--image_size", "64",
            "--batch_size", "4", "--num_workers", "0", "--ckpt_interval", "3", "--image_log_interval", "2",
            *OVERRIDES.get(method, [])]
    if method == "moco":  # one method reads its slices from the disk store (one data pipeline for all four)
        args += ["--cache", "disk", "--cache_dir", str(ckpt / "store")]
    args += ["--max_steps", "6"] if method == "byol" else ["--max_epochs", "2"]  # 6 steps: rounded up to 2 epochs
    run_killed([sys.executable, "-m", "monai.bundle", *args], ckpt, cwd=tmp_path_factory.mktemp("cwd"))  # at 3
    second = _run(*args, cwd=tmp_path_factory.mktemp("cwd"))  # the same command continues the killed run
    assert second.returncode == 0, second.stderr[-3000:]
    return method, ckpt, second


def test_bundle_trains_resumes_monitors_and_exports(tiny_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    method, ckpt, second = tiny_run
    assert "resumed from" in second.stdout + second.stderr
    names = sorted(p.name for p in ckpt.glob("checkpoint_*.pt"))
    assert names[-1] == "checkpoint_8.pt"  # 2 epochs x 4 iterations (16 slices, batch 4)
    state = torch.load(ckpt / names[-1], weights_only=True)
    assert state["trainer"]["iteration"] == 8 and state["info"]["method"] == method
    assert state["identity"]["max_steps"] == (6 if method == "byol" else None)
    assert len(list((ckpt / "store").glob("*.npy"))) == (2 if method == "moco" else 0)
    sd = torch.load(ckpt / "encoder.pt", weights_only=True)
    _assert_only_fc_missing(torchvision.models.resnet18().load_state_dict(sd, strict=False))  # the stock network
    wrapper, prefix = RELEASE[method]
    release = torch.load(ckpt / f"encoder_{method}.pth", weights_only=True)
    assert set(release) == {wrapper} and sorted(release[wrapper]) == sorted(prefix + k for k in sd)
    last = {}
    for events in sorted((ckpt / "logs").glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events)).Reload()
        last.update({tag: accumulator.Scalars(tag)[-1].value for tag in accumulator.Tags()["scalars"]})
    assert {"train/loss", "train/lr", "knn/accuracy", "knn/accuracy_low", "knn/accuracy_high", "knn/queries",
            "collapse/effective_rank", "collapse/class_rank_0", "collapse/class_rank_1"} <= set(last)
    collapse = {t: v for t, v in last.items() if t.startswith("collapse/")}
    assert max(collapse.values()) < 0.9, collapse  # a run that is learning does not read as collapsed


@pytest.mark.parametrize("tiny_run", ["spark"], indirect=True)  # one method: the check is the shared trainer's
def test_a_run_with_other_settings_is_refused_and_the_same_one_is_finished(tiny_run, demo_dir, tmp_path):
    method, ckpt, _ = tiny_run
    args = ["run", "--config_file", str(_bundle(method) / "configs" / "train.json"), "--dataset_dir", str(demo_dir),
            "--ckpt_dir", str(ckpt), "--log_dir", str(ckpt / "logs"), "--backbone", "resnet18", "--image_size", "64",
            "--batch_size", "4", "--num_workers", "0", "--ckpt_interval", "3", "--image_log_interval", "2",
            "--max_epochs", "2"]
    before = {p.name: p.read_bytes() for p in ckpt.glob("*.pt")}
    other = _run(*args, "--mask_ratio", "0.75", "--base_lr", "0.01", cwd=tmp_path)
    log = other.stdout + other.stderr
    assert other.returncode != 0
    assert "belongs to a different run: base_lr: recorded 0.03, this run 0.01; mask_ratio: recorded 0.6, this run 0.75" in log
    assert {p.name: p.read_bytes() for p in ckpt.glob("*.pt")} == before
    same = _run(*args, cwd=tmp_path)
    assert same.returncode == 0 and "this run is already finished" in same.stdout + same.stderr


def test_restarts_after_kills_keep_n_saved_checkpoints(demo_dir, tmp_path):
    """Killed (SIGKILL) at each new checkpoint and started again twice, then finished: the folder holds the
    n_saved = 2 newest training checkpoints, not one more per restart, and every restart resumed."""
    ckpt = tmp_path / "run"
    args = ["-m", "monai.bundle", "run", "--config_file", str(_bundle("spark") / "configs" / "train.json"),
            "--dataset_dir", str(demo_dir), "--ckpt_dir", str(ckpt), "--log_dir", str(ckpt / "logs"), "--backbone",
            "resnet18", "--image_size", "64", "--batch_size", "4", "--num_workers", "0", "--ckpt_interval", "1",
            "--max_epochs", "4", "--monitor_interval", "0", "--progress", "false"]  # 16 iterations
    logs = [run_killed([sys.executable, *args], ckpt, cwd=tmp_path) for _ in range(3)]
    assert all("resumed from" in log for log in logs[1:])
    # once more, killed in the middle of writing a checkpoint (ignite writes tmp*, then renames)
    writing = subprocess.Popen([sys.executable, *args], cwd=tmp_path, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    while not list(ckpt.glob("tmp*")):
        assert writing.poll() is None, "the run ended before it could be killed while writing"
        time.sleep(0.005)
    writing.kill()
    writing.wait()
    assert list(ckpt.glob("tmp*"))  # a partial checkpoint, up to 271 MB, that nothing would complete
    final = _run(*args[2:], cwd=tmp_path)
    log = final.stdout + final.stderr
    assert final.returncode == 0 and "resumed from" in log and "removed 1 partly written checkpoint" in log
    names = sorted(p.name for p in ckpt.glob("checkpoint_*.pt"))
    assert names == ["checkpoint_15.pt", "checkpoint_16.pt"], names
    assert not list(ckpt.glob("tmp*"))


def test_log_file_has_progress_lines_and_ends_with_a_summary(tiny_run):
    method, ckpt, second = tiny_run  # output captured through a pipe, as a log file or batch scheduler would
    log = second.stdout + second.stderr
    assert "\r" not in log and max(len(line) for line in log.splitlines()) <= 500
    assert "epoch 2/2 iteration 2/4 (50%): loss" in log and "images/s, ETA epoch" in log
    summary = [line for line in log.splitlines() if "run finished, epoch 2/2" in line]
    assert len(summary) == 1 and f"encoder {ckpt / 'encoder.pt'}; checkpoints {ckpt}; logs {ckpt / 'logs'}" in summary[0]
    assert "k-NN " in summary[0] and "(n=" in summary[0] and "mean loss" in summary[0]


@pytest.mark.parametrize("method", METHODS)
def test_train_workflow_properties_and_metadata(method, demo_dir, tmp_path):
    from monai.bundle import ConfigWorkflow

    bundle = _bundle(method)
    workflow = ConfigWorkflow(config_file=str(bundle / "configs" / "train.json"), workflow_type="train",
                              dataset_dir=str(demo_dir), ckpt_dir=str(tmp_path), log_dir=str(tmp_path / "logs"))
    workflow.initialize()
    assert not workflow.check_properties()
    verify_bundle_metadata(bundle / "configs")
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert meta["version"] in meta["changelog"]
    for name in ("LICENSE", "docs/README.md", "configs/logging.conf", "configs/multi_gpu_train.json"):
        assert (bundle / name).is_file()


def test_export_encoder_command_from_a_checkpoint(tiny_run, tmp_path):
    from medssl_monai.cli import main

    method, ckpt, _ = tiny_run
    assert main(["export-encoder", str(ckpt / "checkpoint_8.pt"), "--out", str(tmp_path / "e.pth"), "--layout",
                 "torchvision"]) == 0
    exported = torch.load(tmp_path / "e.pth", weights_only=True)
    reference = torch.load(ckpt / "encoder.pt", weights_only=True)
    assert exported.keys() == reference.keys() and all(torch.equal(exported[k], reference[k]) for k in reference)
    torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
    assert main(["export-encoder", str(tmp_path / "other.ckpt"), "--out", str(tmp_path / "x.pt")]) == 2


def _ddp_command(method, demo_dir, ckpt, *extra, overlays=()):
    """Two gloo ranks of ``method``'s multi_gpu_train.json (after ``overlays`` of its configs, e.g. train_3d.json)
    through torchrun, with the suite's small settings."""
    configs = _bundle(method) / "configs"
    configs = "[" + ",".join(f"'{configs / name}'" for name in ("train.json", *overlays, "multi_gpu_train.json")) + "]"
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "monai.bundle", "run",
            "--config_file", configs, "--dataset_dir", str(demo_dir), "--ckpt_dir", str(ckpt), "--log_dir",
            str(ckpt / "logs"), "--backbone", "resnet18", "--image_size", "64", "--num_workers", "0", "--max_epochs",
            "1", "--monitor_interval", "0", "--progress", "false", *extra]


def _ddp(cmd, cwd):
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout + result.stderr


def test_two_process_moco_run_with_gloo_shares_its_queue(demo_dir, tmp_path):
    ckpt = tmp_path / "ckpt"
    _ddp(_ddp_command("moco", demo_dir, ckpt, "--batch_size", "4", "--queue_size", "12"), tmp_path)
    # 16 training slices split by the sampler: 8 per rank, 2 iterations of 4
    state = torch.load(ckpt / "checkpoint_2.pt", weights_only=True)
    assert state["trainer"]["iteration"] == 2 and state["identity"]["world_size"] == 2
    assert not any(k.startswith("module.") for k in state["network"])  # saved unwrapped: loads without DDP
    # keys of both ranks enqueued: 2 iterations x 2 ranks x 4 keys into a queue of 12
    assert int(state["network"]["queue_ptr"]) == 16 % 12
    _assert_only_fc_missing(torchvision.models.resnet18().load_state_dict(
        torch.load(ckpt / "encoder.pt", weights_only=True), strict=False))


def test_two_process_3d_spark_run_with_gloo_shards_the_patches(demo_dir, tmp_path):
    """The 3D overlay under torchrun: 2 gloo ranks share an epoch of 8 volume patches (2 iterations of 2 on each
    rank), the checkpoint is saved unwrapped and the encoder loads into MONAI's stock 3D ResNet18."""
    import monai.networks.nets

    ckpt = tmp_path / "ckpt"
    _ddp(_ddp_command("spark", demo_dir, ckpt, "--batch_size", "2", "--patch_size", "[32,32,32]", "--spacing",
                      "[6,6,6]", "--samples_per_epoch", "8", overlays=("train_3d.json",)), tmp_path)
    state = torch.load(ckpt / "checkpoint_2.pt", weights_only=True)
    assert state["trainer"]["iteration"] == 2 and state["identity"]["world_size"] == 2
    assert state["identity"]["spatial_dims"] == 3 and not any(k.startswith("module.") for k in state["network"])
    _assert_only_fc_missing(monai.networks.nets.resnet18(spatial_dims=3, n_input_channels=1).load_state_dict(
        torch.load(ckpt / "encoder.pt", weights_only=True), strict=False))


def test_two_process_spark_run_killed_mid_epoch_continues_on_the_same_batches(demo_dir, tmp_path):
    """torchrun with 2 gloo ranks, SIGKILLed (all of its processes) at the checkpoint after iteration 2 of 4 and
    started again: it resumes there and ends with the weights of a run that was never killed, which it can only
    reach by training on the same batches with the same masks on each rank. Both runs read one disk store."""
    store = tmp_path / "store"
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    settings = ("--batch_size", "2", "--ckpt_interval", "2", "--cache", "disk", "--cache_dir", str(store))
    _ddp(_ddp_command("spark", demo_dir, straight, *settings), tmp_path)
    run_killed(_ddp_command("spark", demo_dir, killed, *settings), killed, cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert sorted(p.name for p in killed.glob("checkpoint_*.pt")) == ["checkpoint_2.pt"]  # killed mid-epoch
    log = _ddp(_ddp_command("spark", demo_dir, killed, *settings), tmp_path)
    assert "resumed from" in log and len(list(store.glob("*.npy"))) == 2
    # 16 training slices split by the sampler: 8 per rank, 4 iterations of 2
    expected = torch.load(straight / "checkpoint_4.pt", weights_only=True)
    resumed = torch.load(killed / "checkpoint_4.pt", weights_only=True)
    assert resumed["trainer"]["iteration"] == 4 and resumed["identity"]["world_size"] == 2
    assert not any(k.startswith("module.") for k in resumed["network"])  # saved unwrapped: loads without DDP
    assert resumed["network"].keys() == expected["network"].keys()
    differ = [k for k, v in expected["network"].items() if not torch.equal(resumed["network"][k], v)]
    assert not differ, differ[:5]
    _assert_only_fc_missing(torchvision.models.resnet18().load_state_dict(
        torch.load(killed / "encoder.pt", weights_only=True), strict=False))
