"""Peak memory and throughput of pre-training as the archive grows, per cache mode: what an archive needs.

Two demo collections of ``--patients`` (default 4 and 16) volumes of 512 x 512 x 64 voxels are generated; on
each, one epoch of the SparK bundle (ResNet18, 64 px, batch 8, no loader workers, so the process's own peak
RSS is the run's) with ``cache`` ``disk`` (the slice store) and ``memory`` (every volume in the process), each in
a fresh process, alternating. The throughput is also compared in one process per cache mode, where a shared
VM's slow spells cannot fall on one collection only (:func:`_paired`): a trainer per collection, their blocks of
iterations alternating over ``--pairs`` rounds. Prints each run's peak RSS and images/s after the first
iterations, the growth from the smallest to the largest collection with the one-process throughput ratio, and
the slice store's bytes per slice, from which the disk and RAM an archive of ``--archive_slices`` slices
(LIDC-IDRI: about 250,000 of 512 x 512) needs follow.
Usage: python benchmarks/bench_memory.py [--patients 4 16 --caches disk memory --size 512 --slices 64 --pairs 6]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
from common import alternate, device_name, in_child, median_range, ranged, repeated, time_blocks

from medssl_monai.data.demo import make_demo_data

SETTINGS = {"backbone": "resnet18", "image_size": 64, "batch_size": 8, "num_workers": 0, "max_epochs": 1}
WARMUP = 2  # iterations before the timed ones
BLOCK = 20  # iterations in a block of the one-process throughput comparison


def _measure(kind: str, collections: dict[int, str], queue: mp.Queue) -> None:
    """One epoch of ``kind`` = ``<cache> <patients>``; puts (peak RSS MiB, images/s, store bytes per slice)."""
    from bench_loader import _workflow
    from ignite.engine import Events

    cache, patients = kind.split()
    with tempfile.TemporaryDirectory() as tmp:
        overrides = {**SETTINGS, "dataset_dir": collections[int(patients)], "cache": cache, "cache_dir": f"{tmp}/cache"}
        workflow = _workflow("spark_pretrain", overrides, tmp)
        stamps: list[float] = []
        workflow.trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda _: stamps.append(time.perf_counter()))
        workflow.run()
        if len(stamps) <= WARMUP + 1:
            raise ValueError(f"{collections[int(patients)]}: {len(stamps)} iterations in an epoch, too few to time "
                             f"after {WARMUP} of warm-up; use more patients or slices")
        rate = (len(stamps) - WARMUP) * SETTINGS["batch_size"] / (stamps[-1] - stamps[WARMUP - 1])
        per_slice = 0.0
        if cache == "disk":
            files = list(Path(f"{tmp}/cache").rglob("*.npy"))
            per_slice = sum(f.stat().st_size for f in files) / sum(np.load(f, mmap_mode="r").shape[0] for f in files)
    queue.put((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, rate, per_slice))


def _paired(cache: str, collections: dict[int, str], rounds: int, queue: mp.Queue) -> None:
    """Images/s of ``cache`` on every collection in this one process: a SparK trainer per collection, then
    ``rounds`` rounds (after an untimed one) of one block of :data:`BLOCK` iterations per collection
    (:func:`common.time_blocks`), each iteration reading its batch (no loader workers) and stepping; puts
    {patients: images/s per round}."""
    from bench_loader import _batches, _workflow

    with tempfile.TemporaryDirectory() as tmp:
        blocks = {}
        for n, path in collections.items():
            overrides = {**SETTINGS, "dataset_dir": path, "cache": cache, "cache_dir": f"{tmp}/cache"}
            trainer = _workflow("spark_pretrain", overrides, f"{tmp}/run{n}").trainer
            batches = _batches(trainer.data_loader)
            blocks[n] = repeated(lambda t=trainer, b=batches: t._iteration(t, next(b)), BLOCK)
        seconds = time_blocks(blocks, rounds)
    queue.put({n: [BLOCK * SETTINGS["batch_size"] / s for s in seconds[n]] for n in collections})


def paired_throughput(cache: str, collections: dict[int, str], rounds: int) -> dict[int, list[float]]:
    """:func:`_paired` in a fresh process: {patients: images/s per round}."""
    return in_child(_paired, cache, collections, rounds)


def make_collections(patients: list[int], size: int, slices: int, root: str) -> dict[int, str]:
    """A demo collection of each number of ``patients`` (volumes of ``size`` x ``size`` x ``slices``) under
    ``root``: {patients: its directory}."""
    return {n: str(make_demo_data(Path(root) / f"demo{n}", seed=0, patients=n, size=size, slices=slices,
                                  covid_images=20, organ_patches=50)) for n in patients}


def compare(caches: list[str], collections: dict[int, str], rounds: int) -> dict[str, list[tuple[float, float, float]]]:
    """(peak RSS MiB, images/s, store bytes per slice) of every ``<cache> <patients>`` kind over ``rounds``, each
    run in a fresh process."""
    return alternate(_measure, [f"{c} {n}" for c in caches for n in collections], rounds, collections)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--caches", nargs="+", choices=["disk", "memory", "none"], default=["disk", "memory"])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--slices", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--pairs", type=int, default=6, help="rounds of the one-process throughput blocks")
    parser.add_argument("--archive_slices", type=int, default=250_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        collections = make_collections(args.patients, args.size, args.slices, root)
        results = compare(args.caches, collections, args.rounds)
        paired = {cache: paired_throughput(cache, collections, args.pairs) for cache in args.caches}
    print(f"device: {device_name()}; SparK {SETTINGS}, volumes {args.size}x{args.size}x{args.slices}")
    for kind, values in results.items():
        rss, rate = max(v[0] for v in values), min(v[1] for v in values)
        print(f"{kind:>10} patients: peak RSS {rss:8.0f} MiB, {rate:6.1f} images/s")
    low, high = min(args.patients), max(args.patients)
    for cache in args.caches:
        grow = max(v[0] for v in results[f"{cache} {high}"]) / max(v[0] for v in results[f"{cache} {low}"])
        ratio = [h / lo for lo, h in zip(paired[cache][low], paired[cache][high])]
        print(f"{cache}: peak RSS {low} -> {high} patients x{grow:.2f}; images/s {high} / {low} patients in one "
              f"process, {args.pairs} rounds of {BLOCK}-iteration blocks: {ranged(median_range(ratio))}")
    if "disk" in args.caches:
        per_slice = results[f"disk {high}"][0][2]
        print(f"slice store: {per_slice:,.0f} bytes a slice; {args.archive_slices:,} slices: "
              f"{per_slice * args.archive_slices / 1e9:,.0f} GB of disk")


if __name__ == "__main__":
    main()
