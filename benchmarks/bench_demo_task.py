"""Can the demo's COVID-like task be learned? A plain ResNet18 from scratch, through the ct_classification bundle.

Before any pre-training method is compared on the demo, the supervised baseline must learn the task with all
labels and do clearly worse with few: this prints the test AUC (95 % bootstrap interval) of a ResNet18 trained
from random initialisation at each label fraction and seed, and the wall time of each run.

Usage: python benchmarks/bench_demo_task.py [--dataset_dir data/demo/covid_ct] [--fractions 1.0 0.05]
       [--seeds 0] [--image_size 128] [--max_epochs 20] [--out /tmp/demo_task]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from medssl_monai.data import class_folder_datalist, stratified_subset

ROOT = Path(__file__).resolve().parents[1]


def run(dataset_dir: str, fraction: float, seed: int, image_size: int, max_epochs: int, out: str
        ) -> tuple[dict, int, float]:
    """(test metrics, training images, seconds) of one ResNet18 trained from scratch on ``fraction`` of the labels."""
    folder = Path(out) / f"fraction_{fraction:g}" / f"seed_{seed}"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file",
           str(ROOT / "bundles" / "ct_classification" / "configs" / "train.json"), "--dataset_dir", dataset_dir,
           "--pretrained_checkpoint", "none", "--backbone", "resnet18", "--image_size", str(image_size),
           "--max_epochs", str(max_epochs), "--freeze_epochs", "0", "--batch_size", "32",
           "--num_workers", "2", "--label_fraction", str(fraction), "--seed", str(seed), "--resume", "false",
           "--ckpt_dir", str(folder / "models"), "--log_dir", str(folder / "logs"), "--output_dir",
           str(folder / "eval")]
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(folder / "run.log", "w") as log:
        subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=True)
    seconds = time.perf_counter() - start
    n_train = len(stratified_subset(class_folder_datalist(dataset_dir, "train"), fraction, seed))
    return json.loads((folder / "eval" / "metrics.json").read_text()), n_train, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset_dir", default=None, help="COVID-CT layout folder (default: the demo's)")
    parser.add_argument("--fractions", type=float, nargs="+", default=[1.0, 0.05])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--image_size", type=int, default=128)
    parser.add_argument("--max_epochs", type=int, default=20)
    parser.add_argument("--out", default="/tmp/demo_task")
    args = parser.parse_args()
    if args.dataset_dir is None:
        from medssl_monai.bundle import demo_data_dir

        args.dataset_dir = demo_data_dir() + "/covid_ct"
    print(f"machine: {platform.node()} ({platform.processor() or platform.machine()}), "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"ResNet18 from scratch, {args.image_size} px, {args.max_epochs} epochs, batch 32, {args.dataset_dir}")
    print("| fraction | seed | train images | test AUC [95 % CI] | accuracy | time |")
    print("|---|---|---|---|---|---|")
    for fraction in args.fractions:
        for seed in args.seeds:
            metrics, n_train, seconds = run(args.dataset_dir, fraction, seed, args.image_size, args.max_epochs, args.out)
            auc = metrics["auc"]
            print(f"| {fraction:g} | {seed} | {n_train} | {auc['value']:.3f} "
                  f"[{auc['ci_low']:.3f}, {auc['ci_high']:.3f}] | {metrics['accuracy']['value']:.3f} | "
                  f"{seconds:.0f} s |", flush=True)


if __name__ == "__main__":
    main()
