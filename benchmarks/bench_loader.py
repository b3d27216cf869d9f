"""A bundle end to end against its bare step: is the data pipeline keeping the step fed?

The bundle's own config (``bundles/<bundle>/configs/train.json``, demo data; pre-training: k-NN monitor off;
fine-tuning: from random initialisation, the backbone not frozen, no validation inside the timed iterations) is
built once per process through MONAI's ConfigWorkflow. End to end: its trainer fed by its DataLoader
(``num_workers`` processes reading slices, windowing, cropping, making the views), with its handlers, stopped
after ``--warmup`` + ``--steps`` iterations; images/s from those after the warm-up. Bare: the same trainer's step
on one batch held in memory, no loader and no handlers. Each in its own process, alternating, median of ``--rounds``.

The step fed by the loader is also timed against the bare step in one process per round, where a shared VM's
slow spells cannot fall on one side only, and so is the ``loader_priority`` lever: after one untimed round,
``--blocks`` rounds of three blocks of ``--block`` iterations of the trainer's step, fed by the bundle's
DataLoader with its workers at idle CPU priority, at normal priority, and on one batch held in memory, each round
in another of the six orders of the three; a block's first iterations (``prefetch_factor`` x ``num_workers``: a
fed block's are served from what its workers fetched while another block ran, and meanwhile the previous block's
workers refill) are not timed. Each ratio is the median over the rounds: fed at the bundle's priority over bare
(the step with its loader running beside it, without the handlers), idle over normal. Prints the rates and the
ratios (the project's target: end to end at least 0.9 of the bare step).
Usage: python benchmarks/bench_loader.py --bundle spark_pretrain [--backbone resnet50 --image_size 96
--batch_size 8 --num_workers 2 --steps 24 --rounds 2 --blocks 3 --block 10 --dataset_dir data/demo]
"""

from __future__ import annotations

import argparse
import copy
import itertools
import multiprocessing as mp
import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import alternate, device_name, sync

ROOT = Path(__file__).resolve().parents[1]
PRETRAIN = ("moco_pretrain", "byol_pretrain", "swav_pretrain", "spark_pretrain")
BUNDLES = (*PRETRAIN, "ct_classification", "ct_segmentation")
KINDS = ("end to end", "bare", "paired")


def _workflow(bundle: str, overrides: dict, ckpt_dir: str):
    from monai.bundle import ConfigWorkflow

    if bundle in PRETRAIN:
        overrides = {"monitor_interval": 0, **overrides}
    else:  # no encoder to look for, the backbone trained from the start, no validation between the timed iterations
        overrides = {"pretrained_checkpoint": None, "freeze_epochs": 0, "val_interval": 10**6, "max_epochs": 10**6,
                     **overrides}
    workflow = ConfigWorkflow(config_file=str(ROOT / "bundles" / bundle / "configs" / "train.json"),
                              workflow_type="train", ckpt_dir=ckpt_dir, log_dir=f"{ckpt_dir}/logs", progress=False,
                              resume=False, **overrides)
    workflow.initialize()
    return workflow


def _at_priority(loader, priority: str, device: torch.device):
    """A shallow copy of the bundle's DataLoader (same dataset, sampler, generator) whose workers start at
    ``priority``, with an iterator of its own."""
    from medssl_monai.data import WorkerInit

    other = copy.copy(loader)
    other.__dict__.update(worker_init_fn=WorkerInit(priority, device), _iterator=None)
    return other


def _batches(loader):
    """The loader's batches, epoch after epoch."""
    while True:
        yield from loader


def _paired_blocks(trainer, device: torch.device, blocks: int, block: int) -> dict[str, float]:
    """In this one process, ``blocks`` rounds (after an untimed one) of three blocks of ``block`` iterations of
    the trainer's step, each round in another of their orders: fed by idle-priority workers, by normal-priority
    ones, and on one batch held in memory (bare). Returns the medians over the rounds of ``priority``, the rate
    with idle workers over that with normal ones, and ``fed``, the rate fed at the bundle's own priority over the
    bare rate."""
    loaders = {p: _at_priority(trainer.data_loader, p, device) for p in ("idle", "normal")}
    skipped = (trainer.data_loader.prefetch_factor or 0) * trainer.data_loader.num_workers
    if block <= skipped + 1:
        raise ValueError(f"a block of {block} iterations leaves too few to time after the {skipped} prefetched")
    batches = {p: _batches(loader) for p, loader in loaders.items()}
    own = trainer.data_loader.worker_init_fn.priority  # the bundle's loader_priority as it resolves here
    batches["bare"] = itertools.repeat(next(batches[own]))  # one batch, held in memory
    orders, ratios = list(itertools.permutations(batches)), {"priority": [], "fed": []}
    for r in range(blocks + 1):
        seconds = {}
        for kind in orders[r % len(orders)]:
            for i in range(block):
                if i == skipped:  # timed equally for all three, after the batches prefetched by a fed block
                    sync(device)
                    start = time.perf_counter()
                trainer._iteration(trainer, next(batches[kind]))
            sync(device)
            seconds[kind] = time.perf_counter() - start
        if r:  # the first round starts the workers and warms the step up
            ratios["priority"].append(seconds["normal"] / seconds["idle"])
            ratios["fed"].append(seconds["bare"] / seconds[own])
    return {name: statistics.median(values) for name, values in ratios.items()}


def _measure(kind: str, bundle: str, overrides: dict, steps: int, warmup: int, blocks: int, block: int,
             queue: mp.Queue) -> None:
    from ignite.engine import Events

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as ckpt_dir:
        workflow = _workflow(bundle, overrides, ckpt_dir)
        trainer = workflow.trainer
        batch = overrides["batch_size"]
        device = workflow.parser.get_parsed_content("device")
        if kind == "paired":
            queue.put(_paired_blocks(trainer, device, blocks, block))
            return
        if kind == "bare":
            data = next(iter(trainer.data_loader))  # one batch, held in memory
            for i in range(warmup + steps):
                if i == warmup:
                    sync(device)
                    start = time.perf_counter()
                trainer._iteration(trainer, data)
            sync(device)
            queue.put(steps * batch / (time.perf_counter() - start))
            return
        stamps: list[float] = []
        trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda _: stamps.append(time.perf_counter()))
        trainer.add_event_handler(Events.ITERATION_COMPLETED(once=warmup + steps), lambda e: e.terminate())
        trainer.run()  # the bundle's training alone (fine-tuning bundles test after it)
        timed = stamps[warmup - 1:]  # from the end of the warm-up iterations to the end of the last one
        queue.put((len(timed) - 1) * batch / (timed[-1] - timed[0]))


def compare(bundle: str, overrides: dict, steps: int, warmup: int, rounds: int, blocks: int = 3,
            block: int = 10) -> dict[str, list[float]]:
    """Over ``rounds``, alternating: images/s of the bundle ``end to end`` (its default levers) and of its
    ``bare`` step, and from one process per round (:func:`_paired_blocks`, ``blocks`` rounds of blocks):
    ``priority``, the step's rate fed by idle-priority workers over normal-priority ones, and ``fed``, the step's
    rate fed at the bundle's priority over its bare rate."""
    results = alternate(_measure, KINDS, rounds, bundle, overrides, steps, warmup, blocks, block)
    paired = results.pop("paired")
    return {**results, **{name: [p[name] for p in paired] for name in ("priority", "fed")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bundle", choices=BUNDLES, default="spark_pretrain")
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--image_size", type=int, default=96)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--num_workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--blocks", type=int, default=3)
    parser.add_argument("--block", type=int, default=10)
    parser.add_argument("--dataset_dir", default=None, help="default: the bundle's demo collection")
    args = parser.parse_args()
    overrides = {"backbone": args.backbone, "image_size": args.image_size, "batch_size": args.batch_size,
                 "num_workers": args.num_workers}
    if args.dataset_dir:
        overrides["dataset_dir"] = args.dataset_dir
    rates = compare(args.bundle, overrides, args.steps, args.warmup, args.rounds, args.blocks, args.block)
    print(f"device: {device_name()}; torch {torch.__version__}; {args.bundle}, {args.backbone}, batch "
          f"{args.batch_size}, {args.image_size} px, {args.num_workers} loader workers, {args.steps} steps after "
          f"{args.warmup}")
    median = {kind: statistics.median(values) for kind, values in rates.items()}
    for kind in ("end to end", "bare"):
        print(f"{kind:>10}: {median[kind]:7.2f} images/s ({min(rates[kind]):.2f}-{max(rates[kind]):.2f})")
    print(f"ratio end to end / bare step: {median['end to end'] / median['bare']:.2f}")
    print(f"step fed by the loader at the bundle's priority / bare step (one process, {args.blocks} rounds of "
          f"{args.block}-iteration blocks): {median['fed']:.2f} ({min(rates['fed']):.2f}-{max(rates['fed']):.2f})")
    print(f"idle / normal-priority workers (the same blocks): {median['priority']:.2f}x "
          f"({min(rates['priority']):.2f}-{max(rates['priority']):.2f})")


if __name__ == "__main__":
    main()
