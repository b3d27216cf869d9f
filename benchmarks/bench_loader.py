"""A bundle end to end against its bare step: is the data pipeline keeping the step fed?

The bundle's own config (``bundles/<bundle>/configs/train.json``, demo data; pre-training: k-NN monitor off;
fine-tuning: from random initialisation, the backbone not frozen, no validation inside the timed iterations) is
built once per process through MONAI's ConfigWorkflow, and its run is timed against its bare step in that one
process, where a shared VM's slow spells cannot fall on one side only (:func:`_blocks`): after an untimed round,
``--blocks`` rounds of one block of ``--block`` iterations per kind. End to end: the bundle's own run, its
trainer fed by its DataLoader (``num_workers`` processes reading slices, windowing, cropping, making the views),
with its handlers. Bare: the same trainer's step on one batch held in memory, no loader and no handlers. Fed by
the loader without the handlers, its workers at idle or at normal CPU priority: the ``loader_priority`` lever.
Each round runs the kinds in another order (rotated and reversed); a block's first iterations
(``prefetch_factor`` x ``num_workers``: a fed block's are served from what its workers fetched while another block
ran, and meanwhile the previous block's workers refill) are not timed. ``--processes`` such processes, one after
the other; each ratio is taken within a round, then the median and range over the rounds of all processes.
Prints the rates and the ratios (the project's target: end to end at least 0.9 of the bare step).
Usage: python benchmarks/bench_loader.py --bundle spark_pretrain [--backbone resnet50 --image_size 96
--batch_size 8 --num_workers 2 --processes 2 --blocks 3 --block 10 --dataset_dir data/demo]
"""

from __future__ import annotations

import argparse
import copy
import itertools
import multiprocessing as mp
import tempfile
import time
from pathlib import Path

import torch
from common import block_order, device_name, in_child, median_range, ranged, sync

ROOT = Path(__file__).resolve().parents[1]
PRETRAIN = ("moco_pretrain", "byol_pretrain", "swav_pretrain", "spark_pretrain")
BUNDLES = (*PRETRAIN, "ct_classification", "ct_segmentation")
KINDS = ("end to end", "idle", "normal", "bare")  # timed block by block in one process (:func:`_blocks`)


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


def _blocks(workflow, blocks: int, block: int) -> dict:
    """Time, in this one process, ``blocks`` rounds (after an untimed one) of one block of ``block`` iterations
    of each of :data:`KINDS`, each round in the order :func:`common.block_order` gives: ``end to end`` is the
    bundle's own run (its trainer's engine loop, fed by its DataLoader, with its handlers), paused after each of
    its blocks while the other kinds' blocks run the same trainer's step fed by a copy of the loader at ``idle``
    or ``normal`` CPU priority, or on one batch held in memory (``bare``). A block's first iterations, as many as
    the loader prefetches, are not timed. Returns {"rates": {kind: images/s per round}, "priority": the
    bundle's ``loader_priority`` as it resolves here}. (Not :func:`common.time_blocks`, which calls each block:
    here the engine's loop calls, and the other kinds run from its handlers.)"""
    from ignite.engine import Events

    trainer = workflow.trainer
    device = workflow.parser.get_parsed_content("device")
    batch = trainer.data_loader.batch_size
    skipped = (trainer.data_loader.prefetch_factor or 0) * trainer.data_loader.num_workers
    if block <= skipped + 1:
        raise ValueError(f"a block of {block} iterations leaves too few to time after the {skipped} prefetched")
    feeds = {p: _batches(_at_priority(trainer.data_loader, p, device)) for p in ("idle", "normal")}
    own = trainer.data_loader.worker_init_fn.priority
    feeds["bare"] = itertools.repeat(next(feeds[own]))  # one batch, held in memory
    schedule = [(r, kind) for r in range(blocks + 1) for kind in block_order(KINDS, r)]
    rates: dict[str, list[float]] = {kind: [] for kind in KINDS}
    at = {"entry": 0, "iteration": 0, "start": 0.0}  # the schedule's entry, the engine's block's iteration

    def record(seconds: float) -> None:
        r, kind = schedule[at["entry"]]
        if r:  # the first round starts the workers and warms the step up
            rates[kind].append((block - skipped) * batch / seconds)
        at["entry"] += 1

    def others(engine) -> None:
        """The blocks up to the next of the engine's own, then back to the engine (or its end)."""
        while at["entry"] < len(schedule) and schedule[at["entry"]][1] != "end to end":
            kind = schedule[at["entry"]][1]
            for i in range(block):
                if i == skipped:
                    sync(device)
                    start = time.perf_counter()
                trainer.state.batch = next(feeds[kind])  # as the engine's loop sets it: MONAI's trainers
                trainer._iteration(trainer, trainer.state.batch)  # decollate it after the step (else a stale one)
            sync(device)
            record(time.perf_counter() - start)
        if at["entry"] == len(schedule):
            engine.terminate()
        sync(device)
        at["iteration"], at["start"] = 0, time.perf_counter()  # the start, unless iterations are skipped

    def end_to_end(engine) -> None:
        """After each of the engine's iterations and all the bundle's handlers of it."""
        at["iteration"] += 1
        if at["iteration"] == skipped:
            sync(device)
            at["start"] = time.perf_counter()
        elif at["iteration"] == block:
            sync(device)
            record(time.perf_counter() - at["start"])
            others(engine)

    trainer.add_event_handler(Events.STARTED, others)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, end_to_end)
    trainer.run()
    return {"rates": rates, "priority": own}


def _measure(bundle: str, overrides: dict, blocks: int, block: int, queue: mp.Queue) -> None:
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as ckpt_dir:
        queue.put(_blocks(_workflow(bundle, overrides, ckpt_dir), blocks, block))


def compare(bundle: str, overrides: dict, processes: int, blocks: int = 3, block: int = 10) -> dict[str, list[float]]:
    """:func:`_blocks` in ``processes`` fresh processes, one after the other; returns, over all their timed
    rounds, each kind's images/s (:data:`KINDS`) and the ratios within a round: ``end to end / bare``, ``fed /
    bare`` (the step fed at the bundle's ``loader_priority``, without the handlers) and ``idle / normal``."""
    runs = [in_child(_measure, bundle, overrides, blocks, block) for _ in range(processes)]
    rates = {kind: [rate for run in runs for rate in run["rates"][kind]] for kind in KINDS}
    own = runs[0]["priority"]
    return {**rates,
            "end to end / bare": [e / b for e, b in zip(rates["end to end"], rates["bare"])],
            "fed / bare": [f / b for f, b in zip(rates[own], rates["bare"])],
            "idle / normal": [i / n for i, n in zip(rates["idle"], rates["normal"])]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bundle", choices=BUNDLES, default="spark_pretrain")
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--image_size", type=int, default=96)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--num_workers", type=int, default=2)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--blocks", type=int, default=3)
    parser.add_argument("--block", type=int, default=10)
    parser.add_argument("--dataset_dir", default=None, help="default: the bundle's demo collection")
    args = parser.parse_args()
    overrides = {"backbone": args.backbone, "image_size": args.image_size, "batch_size": args.batch_size,
                 "num_workers": args.num_workers}
    if args.dataset_dir:
        overrides["dataset_dir"] = args.dataset_dir
    results = compare(args.bundle, overrides, args.processes, args.blocks, args.block)
    print(f"device: {device_name()}; torch {torch.__version__}; {args.bundle}, {args.backbone}, batch "
          f"{args.batch_size}, {args.image_size} px, {args.num_workers} loader workers; {args.processes} "
          f"process(es) x {args.blocks} rounds of {args.block}-iteration blocks")
    for name, values in results.items():
        unit = " images/s" if name in KINDS else ""
        print(f"{name:>18}: {ranged(median_range(values))}{unit}")


if __name__ == "__main__":
    main()
