"""A pre-training bundle end to end against its bare step: is the data pipeline keeping the step fed?

The bundle's own config (``bundles/<method>_pretrain/configs/train.json``, demo data, k-NN monitor off) is
built once per process through MONAI's ConfigWorkflow. End to end: its trainer fed by its DataLoader
(``num_workers`` processes reading slices, windowing, cropping, making the views), with its handlers, stopped
after ``--warmup`` + ``--steps`` iterations; images/s from those after the warm-up. Bare: the same trainer's
step on one batch held in memory, no loader and no handlers. The ``loader_priority`` lever too: end to end once
more with the workers at ``normal`` CPU priority (the default ``auto`` puts them at idle priority when the step runs
on the CPU). Each measurement in its own process, alternating, median of ``--rounds``. Prints the rates and the
ratios (the project's target: end to end at least 0.9 of the bare step).
Usage: python benchmarks/bench_loader.py --method spark [--backbone resnet50 --image_size 96 --batch_size 8
--num_workers 2 --steps 24 --rounds 2 --dataset_dir data/demo]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import alternate, device_name

ROOT = Path(__file__).resolve().parents[1]


def _workflow(method: str, overrides: dict, ckpt_dir: str):
    from monai.bundle import ConfigWorkflow

    workflow = ConfigWorkflow(config_file=str(ROOT / "bundles" / f"{method}_pretrain" / "configs" / "train.json"),
                              workflow_type="train", ckpt_dir=ckpt_dir, log_dir=f"{ckpt_dir}/logs", monitor_interval=0,
                              progress=False, resume=False, **overrides)
    workflow.initialize()
    return workflow


KINDS = {"end to end": {}, "bare": {}, "end to end, normal priority": {"loader_priority": "normal"}}


def _measure(kind: str, method: str, overrides: dict, steps: int, warmup: int, queue: mp.Queue) -> None:
    from ignite.engine import Events

    torch.manual_seed(0)
    overrides = {**overrides, **KINDS[kind]}
    with tempfile.TemporaryDirectory() as ckpt_dir:
        workflow = _workflow(method, overrides, ckpt_dir)
        trainer = workflow.trainer
        batch = overrides["batch_size"]
        if kind == "bare":
            data = next(iter(trainer.data_loader))  # one batch, held in memory
            for i in range(warmup + steps):
                if i == warmup:
                    start = time.perf_counter()
                trainer._iteration(trainer, data)
            queue.put(steps * batch / (time.perf_counter() - start))
            return
        stamps: list[float] = []
        trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda _: stamps.append(time.perf_counter()))
        trainer.add_event_handler(Events.ITERATION_COMPLETED(once=warmup + steps), lambda e: e.terminate())
        workflow.run()
        timed = stamps[warmup - 1:]  # from the end of the warm-up iterations to the end of the last one
        queue.put((len(timed) - 1) * batch / (timed[-1] - timed[0]))


def compare(method: str, overrides: dict, steps: int, warmup: int, rounds: int) -> dict[str, list[float]]:
    """images/s of the bundle ``end to end`` (its default levers), of its ``bare`` step, and ``end to end, normal
    priority`` (the workers at normal CPU priority) over ``rounds``, alternating."""
    return alternate(_measure, list(KINDS), rounds, method, overrides, steps, warmup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--method", choices=["spark", "moco", "byol", "swav"], default="spark")
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--image_size", type=int, default=96)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--num_workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--dataset_dir", default=None, help="default: the demo collection")
    args = parser.parse_args()
    overrides = {"backbone": args.backbone, "image_size": args.image_size, "batch_size": args.batch_size,
                 "num_workers": args.num_workers}
    if args.dataset_dir:
        overrides["dataset_dir"] = args.dataset_dir
    rates = compare(args.method, overrides, args.steps, args.warmup, args.rounds)
    print(f"device: {device_name()}; torch {torch.__version__}; {args.method}, {args.backbone}, batch {args.batch_size}, "
          f"{args.image_size} px, {args.num_workers} loader workers, {args.steps} steps after {args.warmup}")
    median = {kind: statistics.median(values) for kind, values in rates.items()}
    for kind, values in rates.items():
        print(f"{kind:>27}: {median[kind]:7.2f} images/s ({min(values):.2f}-{max(values):.2f})")
    print(f"ratio end to end / bare step: {median['end to end'] / median['bare']:.2f}; with the workers at normal "
          f"priority: {median['end to end, normal priority'] / median['bare']:.2f}")


if __name__ == "__main__":
    main()
