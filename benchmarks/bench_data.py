"""Data-path throughput next to what one ResNet50 training step consumes, on the same machine.

Prints: slices/s of the cached 2D axial-slice pipeline with augmentation (DataLoader, N workers), images/s
of a ResNet50 forward+backward+SGD step at the same batch and size, their ratio (> 1: data is not the
bottleneck), and prepare-dicom slices/s. Usage: python benchmarks/bench_data.py [--size 224 --batch 16]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch
import torchvision
from common import device_name
from monai.transforms import Compose, RandFlipd, RandSpatialCropd, Resized

from medssl_monai.data import AxialSliceDataset
from medssl_monai.data.demo import make_demo_data
from medssl_monai.data.prepare import prepare_dicom


def data_rate(datalist: Path, size: int, batch: int, workers: int, batches: int) -> float:
    augment = Compose([
        RandSpatialCropd("image", roi_size=(170, 170), max_roi_size=(256, 256), random_size=True),
        Resized("image", spatial_size=(size, size)),
        RandFlipd("image", prob=0.5, spatial_axis=0),
    ])
    ds = AxialSliceDataset(datalist, window="lung", in_channels=3, transform=augment)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                                         persistent_workers=workers > 0)
    seen, it = 0, iter(loader)
    next(it)  # start the workers
    start = time.perf_counter()
    while seen < batches * batch:
        try:
            seen += next(it)["image"].shape[0]
        except StopIteration:
            it = iter(loader)
    return seen / (time.perf_counter() - start)


def step_rate(size: int, batch: int, steps: int) -> float:
    model = torchvision.models.resnet50(num_classes=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 2, (batch,))
    for i in range(steps + 1):
        if i == 1:
            start = time.perf_counter()
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return steps * batch / (time.perf_counter() - start)


def measure(size: int = 224, batch: int = 16, workers: int = 2, batches: int = 20, steps: int = 3) -> dict[str, float]:
    """slices/s of ``prepare-dicom`` and of the cached slice pipeline, images/s of a ResNet50 step, on a small demo
    collection made in a temporary folder."""
    tmp = Path(tempfile.mkdtemp())
    try:
        demo = make_demo_data(tmp / "demo", seed=0, covid_images=4, organ_patches=22)
        n_slices = sum(1 for _ in (demo / "dicom").rglob("*.dcm")) - 1  # less the radiograph
        start = time.perf_counter()
        prepare_dicom(demo / "dicom", tmp / "prepared", progress=False)
        prepare = n_slices / (time.perf_counter() - start)
        data = data_rate(demo / "datalist.json", size, batch, workers, batches)
        return {"prepare": prepare, "prepared_slices": n_slices, "pipeline": data, "step": step_rate(size, batch, steps)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _measure(kind: str, queue) -> None:
    """:func:`measure` with its defaults in a process of its own (:func:`common.alternate`): the ResNet50 step's
    memory then stays out of the process that starts the other measurements, whose peak RSS its children
    would inherit."""
    queue.put(measure())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    print(f"device: {device_name()}; torch {torch.__version__}")
    r = measure(args.size, args.batch, args.workers, args.batches, args.steps)
    print(f"cached 2D slice pipeline + augmentation ({args.workers} workers): {r['pipeline']:8.1f} slices/s")
    print(f"ResNet50 training step (batch {args.batch}, {args.size}x{args.size}, 3 ch): {r['step']:8.1f} images/s")
    print(f"ratio data/step: {r['pipeline'] / r['step']:.1f}x (> 1: the data path is not the bottleneck)")
    print(f"prepare-dicom: {r['prepare']:8.1f} slices/s ({r['prepared_slices']} slices of 256x256)")


if __name__ == "__main__":
    main()
