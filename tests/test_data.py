"""HU windows, the slice datasets, the downstream loaders, and that the demo labels are not trivial."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import Randomizable
from PIL import Image

from conftest import assert_ended, descendants
from medssl_monai.cli import main
from medssl_monai.data import (
    HU_WINDOWS,
    AxialSliceDataset,
    HUWindowd,
    class_folder_datalist,
    downstream_dataset,
    medmnist_datalist,
    png_slice_dataset,
    table_datalist,
)
from medssl_monai.data.demo import COVID_CLASSES, ORGAN_CLASSES
from medssl_monai.data.transforms import ct_loading, resolve_window


def test_window_presets_and_values():
    assert HU_WINDOWS["lung"] == (-1350, 150) and HU_WINDOWS["mediastinum"] == (-160, 240)
    assert HU_WINDOWS["abdomen"] == (-140, 260) and HU_WINDOWS["bone"] == (-450, 1050)
    assert HU_WINDOWS["brain"] == (0, 80) and HU_WINDOWS["full"] == (-1024, 3071)
    hu = torch.tensor([[-2000.0, -1350.0, -600.0, 150.0, 900.0]])
    out = HUWindowd("image", "lung")({"image": hu})["image"]
    np.testing.assert_allclose(np.asarray(out), [[0.0, 0.0, 0.5, 1.0, 1.0]], atol=1e-6)
    out = HUWindowd("image", [0, 100], offset=-1024)({"image": torch.tensor([1024.0, 1074.0])})["image"]
    np.testing.assert_allclose(np.asarray(out), [0.0, 0.5])
    with pytest.raises(ValueError, match="unknown HU window 'lungs'"):
        resolve_window("lungs")
    with pytest.raises(ValueError, match="upper bound"):
        resolve_window([100, -100])


@pytest.mark.parametrize("cache", ["memory", "disk", "none"])
def test_axial_slice_dataset(demo_dir, tmp_path, cache):
    ds = AxialSliceDataset(demo_dir / "datalist.json", window="lung", in_channels=3, cache=cache, cache_dir=tmp_path)
    assert len(ds) == 2 * 8  # two training patients of 8 slices
    sample = ds[3]
    assert sample["image"].shape == (3, 64, 64) and sample["image"].dtype == torch.float32
    assert 0.0 <= float(sample["image"].min()) and float(sample["image"].max()) <= 1.0
    assert torch.equal(sample["image"][0], sample["image"][2])
    # the slice is the NIfTI's slice, windowed: HU = lo + value * (hi - lo)
    volume = nib.load(str(ds.volumes[0]["image"])).get_fdata()
    expected = np.clip((volume[:, :, 3] + 1350) / 1500, 0, 1)
    np.testing.assert_allclose(sample["image"][0].numpy(), expected, atol=1e-5)


def test_slice_store_serves_the_memory_caches_slices_and_is_reused(demo_dir, tmp_path, caplog):
    """cache=disk: the same samples as cache=memory, one int16 file per volume, reused by the next run, and
    restored when a file changes."""
    from medssl_monai.data.slice_store import SliceStore

    memory = AxialSliceDataset(demo_dir / "datalist.json", window="lung", cache="memory")
    with caplog.at_level("INFO"):
        disk = AxialSliceDataset(demo_dir / "datalist.json", window="lung", cache="disk", cache_dir=tmp_path)
    assert "storing 2 of 2 volumes" in caplog.text
    assert isinstance(disk.slices, SliceStore) and len(disk) == len(memory)
    for i in range(len(disk)):
        assert torch.equal(disk[i]["image"], memory[i]["image"])
    files = sorted(tmp_path.glob("*.npy"))
    assert len(files) == 2 and np.load(files[0]).dtype == np.int16 and np.load(files[0]).shape == (8, 64, 64)
    stamps = [f.stat().st_mtime_ns for f in files]
    caplog.clear()
    with caplog.at_level("INFO"):
        again = AxialSliceDataset(demo_dir / "datalist.json", window="minmax", in_channels=3, cache="disk",
                                  cache_dir=tmp_path)
    assert "storing" not in caplog.text and [f.stat().st_mtime_ns for f in files] == stamps  # one store, any window
    image = again[5]["image"]
    assert image.shape == (3, 64, 64) and float(image.min()) == 0.0 and float(image.max()) == 1.0
    # a volume rewritten in place gets a new store file
    source = tmp_path / "vol.nii.gz"
    nib.save(nib.Nifti1Image(np.full((4, 4, 3), -1000, np.int16), np.eye(4)), source)
    first = SliceStore([{"image": str(source)}], tmp_path, ct_loading(window=None, volume=True))
    nib.save(nib.Nifti1Image(np.full((4, 4, 3), 40, np.int16), np.eye(4)), source)
    os.utime(source, ns=(0, first.files[0].stat().st_mtime_ns + 10**9))
    second = SliceStore([{"image": str(source)}], tmp_path, ct_loading(window=None, volume=True))
    assert second.files != first.files and float(second.read(0, 2).max()) == 40.0


def _store_on_rank(rank: int, volumes: list, root: str, port: int) -> None:
    """One of two gloo ranks building a slice store in a folder of its own, as on a node-local disk."""
    import torch.distributed as dist

    from medssl_monai.data.slice_store import SliceStore

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        SliceStore(volumes, Path(root) / f"node{rank}", ct_loading(window=None, volume=True))
    finally:
        dist.destroy_process_group()


def test_a_rank_that_cannot_see_the_others_slice_store_files_is_refused(demo_dir, tmp_path):
    """Under torch.distributed each rank stores its share (the two-process bundle runs share one store); a rank
    that cannot see the others' files (each node with its own cache_dir) fails naming the store and what to
    do, instead of a bare missing-file error."""
    import socket

    import torch.multiprocessing as mp

    training = json.loads((demo_dir / "datalist.json").read_text())["training"]
    volumes = [{"image": str(demo_dir / v["image"])} for v in training]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # spawned, not forked: a fork of this process (its OpenMP threads) can hang in the child
    context = mp.start_processes(_store_on_rank, args=(volumes, str(tmp_path), port), nprocs=2,
                                 start_method="spawn", join=False)
    deadline = time.monotonic() + 300
    with pytest.raises(mp.ProcessRaisedException, match="does not see 1 of 2 files the other ranks stored"):
        while not context.join(timeout=1):
            assert time.monotonic() < deadline, "the two ranks did not finish in 5 minutes"
    assert len(list(tmp_path.glob("node*/*.npy"))) == 2  # each stored its share where it could


def test_slice_store_names_the_bad_volume(tmp_path):
    from medssl_monai.data.slice_store import SliceStore

    bad = tmp_path / "nan.nii.gz"
    data = np.zeros((8, 8, 4), np.float32)
    data[2, 2, 1] = np.nan
    nib.save(nib.Nifti1Image(data, np.eye(4)), bad)
    with pytest.raises(ValueError, match="nan.nii.gz: 1 NaN or infinite value"):
        SliceStore([{"image": str(bad)}], tmp_path / "store", ct_loading(window=None, volume=True))
    assert not list((tmp_path / "store").iterdir())  # nothing half-written


def test_slice_dataset_rejects_nan_volume_and_missing_file(demo_dir, tmp_path):
    bad = tmp_path / "nan.nii.gz"
    data = np.zeros((8, 8, 4), np.float32)
    data[2, 2, 1] = np.nan
    nib.save(nib.Nifti1Image(data, np.diag([-1.0, -1.0, 1.0, 1.0])), bad)
    with pytest.raises(RuntimeError) as err:  # MONAI's Compose wraps the cause
        AxialSliceDataset([{"image": str(bad)}], cache="none")[0]
    assert isinstance(err.value.__cause__, ValueError)
    assert "nan.nii.gz: 1 NaN or infinite value(s)" in str(err.value.__cause__)
    with pytest.raises(FileNotFoundError, match="does not exist: .*missing.nii.gz"):
        AxialSliceDataset([{"image": str(tmp_path / "missing.nii.gz")}])
    with pytest.raises(FileNotFoundError, match="datalist not found"):
        AxialSliceDataset(tmp_path / "none.json")


def test_png_slice_dataset_both_encodings(demo_dir, tmp_path):
    ds = png_slice_dataset(demo_dir / "covid_ct", encoding="hu16", window="full")
    sample = ds[0]
    raw = np.asarray(Image.open(ds.data[0]["image"])).astype(np.float64).T  # MONAI's (X, Y)
    np.testing.assert_allclose(sample["image"][0].numpy(), np.clip((raw - 1024 + 1024) / 4095, 0, 1), atol=1e-5)
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) * 4).save(tmp_path / "s.png")
    eight = png_slice_dataset(tmp_path, encoding="uint8", in_channels=3)[0]["image"]
    assert eight.shape == (3, 8, 8) and float(eight.max()) == pytest.approx(252 / 255)


def test_class_folder_loader(demo_dir):
    train = class_folder_datalist(demo_dir / "covid_ct", "train", classes=COVID_CLASSES)
    test = class_folder_datalist(demo_dir / "covid_ct", "test", classes=COVID_CLASSES)
    assert {s["label"] for s in train} == {0, 1}
    assert not {s["image"] for s in train} & {s["image"] for s in test}
    ds = downstream_dataset("class_folders", demo_dir / "covid_ct", "val", encoding="hu16", window="lung", in_channels=3)
    assert ds[0]["image"].shape == (3, 64, 64) and ds[0]["label"] in (0, 1)
    with pytest.raises(FileNotFoundError, match="split file not found"):
        class_folder_datalist(demo_dir / "covid_ct", "train", classes=("Missing",))


def test_medmnist_loader(demo_dir, tmp_path):
    train = medmnist_datalist(demo_dir / "organ_mnist.npz", "train")
    assert train[0]["image"].shape == (28, 28) and train[0]["image"].dtype == np.uint8
    ds = downstream_dataset("medmnist", demo_dir / "organ_mnist.npz", "test")
    assert ds[0]["image"].shape == (1, 28, 28) and 0 <= ds[0]["label"] < len(ORGAN_CLASSES)
    np.savez(tmp_path / "bad.npz", images=np.zeros((2, 28, 28)))
    with pytest.raises(ValueError, match="not a MedMNIST file, missing train_images"):
        medmnist_datalist(tmp_path / "bad.npz", "train")


def test_table_loaders_csv_and_json(demo_dir, tmp_path):
    files = class_folder_datalist(demo_dir / "covid_ct", "train", classes=COVID_CLASSES)[:4]
    csv = tmp_path / "list.csv"
    csv.write_text("image,label,split\n" + "".join(f"{f['image']},{f['label']},{'train' if i < 3 else 'test'}\n"
                                                  for i, f in enumerate(files)))
    assert len(table_datalist(csv, "train")) == 3 and len(table_datalist(csv, "test")) == 1
    js = tmp_path / "list.json"
    js.write_text(json.dumps({"training": files[:2], "validation": files[2:], "test": []}))
    assert [s["label"] for s in table_datalist(js, "val")] == [f["label"] for f in files[2:]]
    (tmp_path / "patients.csv").write_text("image,label,split,patient\n" + "".join(
        f"{f['image']},{f['label']},train,{Path(f['image']).name.split('_')[1]}\n" for f in files))
    named = downstream_dataset("table", tmp_path / "patients.csv", "train")
    by_pattern = downstream_dataset("class_folders", demo_dir / "covid_ct", "train", classes=COVID_CLASSES,
                                    patient_pattern=r"demo_(\d+)_")
    assert [d["patient"] for d in named.data] == [d["patient"] for d in by_pattern.data][:4]
    with pytest.raises(ValueError, match=r"demo_\d+_0.png: the file name has no patient id matching 'case"):
        downstream_dataset("class_folders", demo_dir / "covid_ct", "train", classes=COVID_CLASSES,
                           patient_pattern=r"case(\d+)")
    ds = downstream_dataset("table", csv, "train", encoding="hu16")
    assert ds[2]["image"].shape == (1, 64, 64)
    (tmp_path / "bad.csv").write_text("path,y\na,1\n")
    with pytest.raises(ValueError, match="needs the columns image and label"):
        table_datalist(tmp_path / "bad.csv", "train")
    (tmp_path / "nosplit.csv").write_text("image,label\n" + "".join(f"{f['image']},{f['label']}\n" for f in files))
    with pytest.raises(ValueError, match=r"nosplit.csv: a CSV datalist needs a split column .* the val split"):
        table_datalist(tmp_path / "nosplit.csv", "val")
    (tmp_path / "nosplit.json").write_text(json.dumps({"training": files}))
    with pytest.raises(ValueError, match=r"nosplit.json: a JSON datalist needs a list 'test' for the test split"):
        table_datalist(tmp_path / "nosplit.json", "test")


def _auc(scores, labels):
    from sklearn.metrics import roc_auc_score

    auc = roc_auc_score(labels, scores)
    return max(auc, 1 - auc)


def test_demo_labels_are_not_separable_by_mean_intensity_or_size(tmp_path):
    from medssl_monai.data.demo import make_demo_data

    out = make_demo_data(tmp_path, seed=3, patients=1, size=96, slices=2, covid_images=80, organ_patches=330, workers=2)
    samples = sum((class_folder_datalist(out / "covid_ct", s, classes=COVID_CLASSES) for s in ("train", "val", "test")), [])
    images = [np.asarray(Image.open(s["image"])).astype(np.float64) - 1024 for s in samples]
    labels = [s["label"] for s in samples]
    assert _auc([im.mean() for im in images], labels) < 0.8
    assert _auc([(im > -500).sum() for im in images], labels) < 0.8  # body size
    organ = np.load(out / "organ_mnist.npz")
    x = np.concatenate([organ[f"{s}_images"] for s in ("train", "val", "test")]).astype(np.float64)
    y = np.concatenate([organ[f"{s}_labels"] for s in ("train", "val", "test")]).ravel()
    assert set(y) == set(range(len(ORGAN_CLASSES)))
    means = x.mean(axis=(1, 2))
    for c in range(len(ORGAN_CLASSES)):
        assert _auc(means, y == c) < 0.97, ORGAN_CLASSES[c]


def test_demo_organ_patches_are_split_by_patient(demo_dir):
    organ = np.load(demo_dir / "organ_mnist.npz")
    patients = {s: set(organ[f"{s}_patients"].tolist()) for s in ("train", "val", "test")}
    assert {d["patient"] for d in medmnist_datalist(demo_dir / "organ_mnist.npz", "test")} == set(
        map(str, patients["test"]))
    assert all(patients.values()) and not (patients["train"] & patients["val"] or patients["train"] & patients["test"]
                                           or patients["val"] & patients["test"])
    assert all(len(organ[f"{s}_patients"]) == len(organ[f"{s}_labels"]) for s in patients)


def test_demo_organ_patches_are_in_the_window_of_pre_training(demo_dir):
    """The organ patches, read back through the pre-training bundles' HU window, show each tissue's HU: the
    tasks and pre-training see one window (bone, above it, saturated)."""
    from medssl_monai.bundle import bundle_default

    lo, hi = resolve_window(bundle_default("spark_pretrain", "window"))
    organ = np.load(demo_dir / "organ_mnist.npz")
    hu = organ["train_images"].astype(np.float64) / 255 * (hi - lo) + lo  # (N, 28, 28)
    labels = organ["train_labels"].ravel()
    centre = np.median(hu[:, 12:16, 12:16].reshape(len(hu), -1), axis=1)  # (N,)
    expected = {"lung": (-900, -700), "fat": (-130, -70), "muscle": (25, 70), "liver": (40, 75)}
    for name, (low, high) in expected.items():
        assert low <= np.median(centre[labels == ORGAN_CLASSES.index(name)]) <= high, name
    for name in ("vertebra", "rib"):
        assert np.median(centre[labels == ORGAN_CLASSES.index(name)]) == hi, name


def test_demo_data_is_generated_again_only_when_its_generator_or_sizes_changed(tmp_path):
    from medssl_monai.data.demo import DEMO_VERSION, ensure_demo_data

    sizes = {"seed": 4, "patients": 1, "size": 48, "slices": 3, "covid_images": 4, "organ_patches": 22, "workers": 1}
    out = ensure_demo_data(tmp_path / "demo", **sizes)
    marker = json.loads((out / "demo.json").read_text())
    assert marker["version"] == DEMO_VERSION and marker["patients"] == 1
    stamp = (out / "demo.json").stat().st_mtime_ns
    assert ensure_demo_data(out, **sizes) == out and (out / "demo.json").stat().st_mtime_ns == stamp  # kept
    (out / "stray.txt").write_text("from an older generator")
    (out / "demo.json").write_text(json.dumps({**marker, "version": DEMO_VERSION - 1}))
    ensure_demo_data(out, **sizes)
    assert not (out / "stray.txt").exists() and json.loads((out / "demo.json").read_text())["version"] == DEMO_VERSION
    assert not (out / ".demo_incomplete").exists()
    (out / "demo.json").unlink()
    (out / ".demo_incomplete").touch()  # a generation killed before its end is made again
    assert (ensure_demo_data(out, **sizes) / "demo.json").is_file()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "scan.nii.gz").write_text("a user's file")
    with pytest.raises(FileExistsError, match="no demo collection"):  # never removed
        ensure_demo_data(mine, **sizes)
    assert (mine / "scan.nii.gz").is_file()


def test_a_killed_demo_generation_leaves_no_worker_and_is_made_again(tmp_path):
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "medssl_monai.cli", "demo-data", "--out", str(out), "--seed", "4", "--patients",
           "2", "--size", "96", "--slices", "12", "--covid-images", "4", "--organ-patches", "22", "--workers", "2"]
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(workers := descendants(process.pid)) < 2:  # the pool's two workers, generating patients
        assert process.poll() is None, "the generation ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert_ended(workers)
    assert (out / ".demo_incomplete").is_file() and not (out / "demo.json").exists()
    assert subprocess.run(cmd, capture_output=True, timeout=300).returncode == 0
    assert (out / "demo.json").is_file() and not (out / ".demo_incomplete").exists()


def test_demo_data_cli_is_deterministic(tmp_path):
    args = ["--seed", "4", "--patients", "1", "--size", "48", "--slices", "3", "--covid-images", "4",
            "--organ-patches", "22", "--workers", "1"]
    assert main(["demo-data", "--out", str(tmp_path / "a"), *args]) == 0
    assert main(["demo-data", "--out", str(tmp_path / "b"), *args]) == 0
    for f in (tmp_path / "a").rglob("*"):
        if f.is_file() and f.suffix in (".dcm", ".png", ".json", ".npz"):
            assert f.read_bytes() == (tmp_path / "b" / f.relative_to(tmp_path / "a")).read_bytes(), f


def test_demo_label_volumes_share_their_image_grid_and_the_split_is_by_patient(demo_dir):
    import nibabel as nib

    from medssl_monai.data.synthetic import ORGAN_LABELS

    datalist = json.loads((demo_dir / "datalist.json").read_text())
    assert datalist["labels"] == {str(i): name for i, name in enumerate(ORGAN_LABELS)}
    splits = {key: [e["image"] for e in datalist[key]] for key in ("training", "validation", "test")}
    assert [len(splits[key]) for key in splits] == [2, 1, 1]
    assert len(set(sum(splits.values(), []))) == 4  # each patient in one split
    for entry in sum((datalist[key] for key in splits), []):
        image, label = nib.load(demo_dir / entry["image"]), nib.load(demo_dir / entry["label"])
        assert label.shape == image.shape and np.array_equal(label.affine, image.affine)
        values = np.asarray(label.dataobj)
        assert values.dtype == np.uint8 and values.max() < len(ORGAN_LABELS)
        hu = np.asarray(image.dataobj)
        dense = np.isin(values, [3, 4, 5, 7, 8, 9])  # liver, heart, aorta, bone: all but the air-filled organs
        assert np.median(hu[dense]) > -100 > -400 > np.median(hu[np.isin(values, [1, 2])])  # image not flipped


class _WorkerFacts(torch.utils.data.Dataset, Randomizable):
    """Each item: the reading worker's scheduling policy and a draw from the dataset's own random state (which
    MONAI's worker_init_fn seeds per worker)."""

    def __len__(self):
        return 4

    def __getitem__(self, i):
        return torch.tensor([os.sched_getscheduler(0), self.R.randint(1 << 30)])


@pytest.mark.parametrize(("priority", "device", "policy"), [("auto", "cpu", "SCHED_IDLE"), ("idle", "cuda", "SCHED_IDLE"),
                                                            ("auto", "cuda", "SCHED_OTHER"), ("normal", "cpu", "SCHED_OTHER")])
def test_loader_workers_yield_the_cpu_to_a_cpu_step(priority, device, policy):
    from monai.data import DataLoader

    from medssl_monai.data import WorkerInit

    def facts(worker_init_fn):
        loader = DataLoader(_WorkerFacts(), batch_size=2, num_workers=2, generator=torch.Generator().manual_seed(1),
                            **({"worker_init_fn": worker_init_fn} if worker_init_fn else {}))
        return torch.cat(list(loader))

    ours, monais = facts(WorkerInit(priority, device)), facts(None)
    assert set(ours[:, 0].tolist()) == {getattr(os, policy)}
    assert set(monais[:, 0].tolist()) == {os.SCHED_OTHER} and os.sched_getscheduler(0) == os.SCHED_OTHER
    assert torch.equal(ours[:, 1], monais[:, 1])  # MONAI's per-worker seeding is kept
    assert len(set(ours[:, 1].tolist())) == 4


def test_loader_priority_is_checked():
    from medssl_monai.data import resolve_loader_priority

    assert resolve_loader_priority(" Auto", torch.device("cpu")) == "idle"
    with pytest.raises(ValueError, match="loader_priority must be one of auto, idle, normal, got 'low'"):
        resolve_loader_priority("low", "cpu")
