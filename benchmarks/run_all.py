"""Every benchmark of the project in one run, written to ``docs/benchmarks.md``: the file is this script's output.

Runs, on this machine: the data path (``bench_data``), memory as the archive grows (``bench_memory``), each
pre-training method's step against its peer and its compute ideal with the speed levers (``bench_pretrain``),
each bundle's optimiser with and without ``foreach`` (``bench_optimizer``), each bundle end to end against its
bare step (``bench_loader``), the 3D steps, and whether the demo task can be learned (``bench_demo_task``). The
report names the machine, the date and the library versions, puts the ratios and the project's targets first, and
gives every rate as the median with its range over the rounds.
Peers: lightly (the ``test`` extra) and, with ``--spark_repo``, a checkout of the official SparK (the ``bench``
extra); neither is a runtime dependency.
Usage: python benchmarks/run_all.py [--spark_repo /tmp/SparK] [--rounds 6] [--sections pretrain loader]
       [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from common import alternate, device_name, median_range, ranged

from medssl_monai.bundle import bundle_default
from medssl_monai.data import resolve_loader_priority
from medssl_monai.utils import as_bool, cpu_has_bf16, resolve_amp

ROOT = Path(__file__).resolve().parents[1]
METHODS = {"moco": "MoCo v2", "byol": "BYOL", "swav": "SwAV", "spark": "SparK"}
# torch.compile is measured by hand: it compiles again at every start; amp where there is bf16 or a GPU
LEVERS = ["channels_last", "foreach"] + (["amp"] if cpu_has_bf16() or torch.cuda.is_available() else [])
NOISE = 0.05  # a lever within this of 1x neither wins nor loses


@dataclasses.dataclass
class Target:
    """One of the project's targets, what this run measured for it, and whether that meets it."""

    name: str
    goal: str
    measured: str
    met: bool

    def row(self) -> str:
        return f"| {self.name} | {self.goal} | {self.measured} | {'yes' if self.met else '**no**'} |"


def ratio_target(name: str, top: tuple[float, float, float], bottom: tuple[float, float, float], goal: float,
                 at_least: bool = True) -> Target:
    """The target that the ratio of two ranged rates (:func:`median_range`) be at least (at most) ``goal``; the
    ratio's range runs from the lowest over the highest to the highest over the lowest."""
    return goal_target(name, (top[0] / bottom[0], top[1] / bottom[2], top[2] / bottom[1]), goal, at_least)


def goal_target(name: str, ratio: tuple[float, float, float], goal: float, at_least: bool = True) -> Target:
    """The target that a ranged ratio's median be at least (at most) ``goal``."""
    return Target(name, f"{'>=' if at_least else '<='} {goal:g}", ranged(ratio),
                  ratio[0] >= goal if at_least else ratio[0] <= goal)


def _lever_on(lever: str, default: object, device: str) -> bool:
    """Whether a lever's default turns it on here (``auto`` as it resolves; ``loader_priority`` on: idle)."""
    if lever == "amp":
        return resolve_amp(default, device)
    if lever == "loader_priority":
        return resolve_loader_priority(default, device) == "idle"
    return as_bool(default, lever)


def lever_effects(label: str, bundle: str, levers: dict[str, tuple[float, float, float]],
                  targets: list[Target] | None, config: str = "train.json") -> list[str]:
    """Each lever's effect (median, lowest, highest) beside the bundle's default (from ``config``), as table
    cells; adds to ``targets`` (unless None) the target that a lever be on by default where its median wins here
    and off where it loses (``amp: auto`` as it resolves here)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cells = []
    for lever, effect in levers.items():
        default = bundle_default(bundle, lever, config)
        cells.append(f"{ranged(effect)}x (default {json.dumps(default)})")
        if default is None or targets is None:  # None: torch's own choice
            continue
        on = _lever_on(lever, default, device)
        wins, loses = effect[0] >= 1 + NOISE, effect[0] <= 1 - NOISE
        found = f"{ranged(effect)}x, {'on' if on else 'off'}" + (" (auto)" if default == "auto" else "")
        targets.append(Target(f"{label}: `{lever}` by default where it wins", "on if faster, off if slower", found,
                              not (wins and not on or loses and on)))
    return cells


def section_data(args, targets: list[Target]) -> str:
    import bench_data

    r = alternate(bench_data._measure, ["data path"], 1)["data path"][0]
    return f"""## Data path (`python benchmarks/bench_data.py`)

The cached 2D axial-slice pipeline (lung window, 3 channels, in-memory cache, random-size crop 170-256 px resized
to 224, flip) through a DataLoader with 2 workers, next to the images/s one ResNet50 training step consumes
(forward, backward, SGD; batch 16, 224 x 224, 3 channels), and `prepare-dicom` over a small demo DICOM tree
({r['prepared_slices']} slices of 256 x 256). One round.

| ratio pipeline / step | slice pipeline | ResNet50 step | prepare-dicom |
|---|---|---|---|
| {r['pipeline'] / r['step']:.1f}x | {r['pipeline']:.0f} slices/s | {r['step']:.2f} images/s | {r['prepare']:.0f} slices/s |

Above 1x the data path is not what limits training on this machine.
"""


def section_memory(args, targets: list[Target]) -> str:
    import bench_memory

    patients = [4, 16]
    with tempfile.TemporaryDirectory() as root:
        collections = bench_memory.make_collections(patients, 512, 64, root)
        results = bench_memory.compare(["disk", "memory"], collections, args.memory_rounds)
        paired = {cache: bench_memory.paired_throughput(cache, collections, args.rounds) for cache in ("disk", "memory")}
    rss = {kind: max(v[0] for v in values) for kind, values in results.items()}
    rate = {kind: median_range([v[1] for v in values]) for kind, values in results.items()}
    growth = {cache: median_range([h / low for low, h in zip(paired[cache][4], paired[cache][16])])
              for cache in paired}
    per_slice = results["disk 16"][0][2]
    targets.append(ratio_target("peak RSS, `cache disk`, 16 / 4 patients", (rss["disk 16"],) * 3,
                                (rss["disk 4"],) * 3, 1.25, at_least=False))
    targets.append(goal_target("images/s, `cache disk`, 16 / 4 patients, in one process", growth["disk"], 1.0))
    rows = "\n".join(f"| `{kind.split()[0]}` | {kind.split()[1]} | {rss[kind]:,.0f} MiB | {ranged(rate[kind], 1)} |"
                     for kind in results)
    archive = 250_000
    return f"""## Memory as the archive grows (`python benchmarks/bench_memory.py`)

Demo collections of 4 and 16 patients of 512 x 512 x 64 voxels; one epoch of the SparK bundle on each (ResNet18,
64 px, batch 8, no loader workers, so the process's peak RSS is the run's), `cache` `disk` (the slice store,
read a slice at a time) and `memory` (every volume in the process), each in its own process,
{args.memory_rounds} round(s). The throughput is also compared in one process per cache mode, where a slow
spell of the machine cannot fall on one collection only: a trainer on each collection, then after an untimed
round {args.rounds} rounds of one block of {bench_memory.BLOCK} iterations each (reading and stepping), in an
order rotated and reversed from round to round; the ratio is taken within a round, then the median and range.

| growth 4 -> 16 patients | `disk` | `memory` |
|---|---|---|
| peak RSS | {rss['disk 16'] / rss['disk 4']:.2f}x | {rss['memory 16'] / rss['memory 4']:.2f}x |
| images/s, in one process | {ranged(growth['disk'])}x | {ranged(growth['memory'])}x |

| cache | patients | peak RSS | images/s, own process |
|---|---|---|---|
{rows}

The slice store holds {per_slice:,.0f} bytes a slice of 512 x 512 (int16 HU and its share of a file header).
For LIDC-IDRI (about {archive:,} slices of 512 x 512), from that figure:

| cache | disk | RAM of each training process |
|---|---|---|
| `disk` (the `paper` preset) | {per_slice * archive / 1e9:,.0f} GB of slice store | what it is at 4 and 16 patients above (the pages read sit in the OS page cache, which the kernel reclaims) |
| `memory` | none | at least {per_slice * archive / 1e9:,.0f} GB: every slice in the process |
"""


def section_pretrain(args, targets: list[Target]) -> str:
    import bench_pretrain

    rows, levers, memory = [], [], []
    columns = [*LEVERS, *bench_pretrain.NETWORK_LEVERS]
    for method, name in METHODS.items():
        setting = bench_pretrain.Setting(method, backbone="resnet50", size=128, batch=8, steps=3, in_channels=3,
                                         spark_repo=args.spark_repo)
        measured = [*LEVERS, *(lever for lever, of in bench_pretrain.NETWORK_LEVERS.items() if method in of)]
        s = bench_pretrain.summarise(setting, bench_pretrain.compare(setting, measured, args.rounds))
        peer = {"lightly": "lightly", "official": "official SparK", "supervised": "supervised step"}[s.peer]
        goal = 1.5 if s.peer == "official" else 1.0
        targets.append(goal_target(f"{name} step / {peer}'s", s.ours_over_peer, goal))
        targets.append(goal_target(f"{name} step / its compute ideal", s.ours_over_ideal, 0.9))
        passes = {"spark": "1 (unmasked step)", "swav": "1 (step over its 8 views)"}.get(method, f"{s.passes:.2f}")
        rows.append(f"| {name} | {ranged(s.ours_over_peer)} | {ranged(s.ours_over_ideal)} | "
                    f"{ranged(s.rates['ours'])} | "
                    f"{peer} {ranged(s.rates[s.peer])} | {ranged(s.rates[bench_pretrain.IDEALS[method]])} | "
                    f"{passes} | {s.ideal[0]:.2f} |")
        effects = dict(zip(measured, lever_effects(name, f"{method}_pretrain", {k: s.levers[k] for k in measured},
                                                   targets)))
        levers.append(f"| {name} | " + " | ".join(effects.get(lever, "n/a") for lever in columns) + " |")
        memory.append(f"{name} {s.peaks['ours']:,.0f} / {s.peaks[s.peer]:,.0f}")
    unit = "MiB of CUDA peak allocation" if torch.cuda.is_available() else "MiB max RSS"
    return f"""## Pre-training steps (`python benchmarks/bench_pretrain.py --method M --backbone resnet50 --size 128 --batch 8 --in_channels 3 --rounds {args.rounds} --levers {','.join(LEVERS)}[,batch_views]`)

Each method's training step at the same settings as its peer: ResNet50, batch 8, 128 x 128, 3 channels (the
official SparK reconstructs 3), SGD, random inputs of each method's view shapes (SwAV: 2 global and 6 local
crops of 96/224 of the size; MoCo: queue 4,096). Peers: MoCo v2, BYOL and SwAV assembled from lightly
{_version('lightly')}'s heads, losses and momentum helpers as lightly's examples do; SparK: the official SparK
({'a checkout of github.com/keyu-tian/SparK, its `pretrain/` code as its `main.py` builds the model, on timm ' + _version('timm') if args.spark_repo else 'not given (`--spark_repo`), so a supervised step'}).
The compute ideal: a supervised step (backbone, linear layer, cross-entropy) divided by the backbone passes the
method needs (a forward alone counts 1/3 of a forward + backward: MoCo 4/3, BYOL 8/3); for SwAV one supervised
step over its own 8 crops (each size as one batch, as ours batches them: a crop's cost is not its share of the
pixels); for SparK its own encoder, projections and decoder run unmasked (plain layers, mean squared error on
the whole image), so the ratio is what masking costs. All kinds of a method are timed in one process, where a
slow spell of the machine cannot fall on one side only: an untimed round, then {args.rounds} rounds of one
block of 3 steps per kind, the order rotated and reversed from round to round. Every ratio is taken within a
round (ours over the peer or the ideal; for a lever, ours with it over ours without), then the median over the
rounds with its range: so the ratio columns are not the quotients of the rate columns, which are each kind's
median images/s (the samples of a batch) over the rounds. Ours is the method as the bundle builds its network
(BYOL and SwAV: the views of one size in one pass, `batch_views`) with the trainer's levers off; each trainer
lever is measured on top of it with the others off, `batch_views` by turning it off (a pass per view, as
lightly's examples compute them). Peak memory: each kind alone in a fresh process over two steps.

| method | ours / peer | ours / ideal | ours, images/s | peer, images/s | ideal's step, images/s | passes | ideal, images/s |
|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Speed levers, the rate with each on over the rate without, and the bundle's default:

| method | {' | '.join(f'`{lever}`' for lever in columns)} |
|---{'|---' * len(columns)}|
{chr(10).join(levers)}

A default of `null` is torch's own choice (for `foreach`: on for CUDA tensors, off on a CPU). Within {NOISE:.0%} of 1x
a lever neither wins nor loses here. Peak memory, ours / peer ({unit}): {', '.join(memory)}.
Mixed precision (the `amp` id): {'measured above' if 'amp' in LEVERS else 'not measured, this CPU has no bf16 instructions and there is no GPU'}.
"""


def section_optimizer(args, targets: list[Target]) -> str:
    import bench_optimizer

    rows = []
    for method, name in METHODS.items():
        r = alternate(bench_optimizer._measure, ["optimizer"], 1, method, 5, 5)["optimizer"][0]
        default = bundle_default(f"{method}_pretrain", "foreach")
        rows.append(f"| {name} | {r['optimizer']} | {ranged(r['speedup'])} | {ranged(r['loop'], 1)} | "
                    f"{ranged(r['foreach'], 1)} | {'yes' if r['identical'] else 'no'} | {json.dumps(default)} |")
    return f"""## The bundles' optimisers, `foreach` (`python benchmarks/bench_optimizer.py`)

One optimiser step over a ResNet50's parameters with each bundle's own optimiser and settings, the per-tensor
loop against the multi-tensor kernels (`foreach`), in one process: after an untimed round, 5 rounds of 5 steps
each, the order rotated and reversed from round to round; the speed-up is taken within a round (the pre-training
section times `foreach` inside a whole step, with SGD for all). `null`: each library's choice, on for CUDA
tensors and off on a CPU.

| method | optimiser | foreach speed-up, x | loop, ms per step | foreach, ms per step | identical weights | default |
|---|---|---|---|---|---|---|
{chr(10).join(rows)}
"""


def section_loader(args, targets: list[Target]) -> str:
    import bench_loader

    rows = []
    names = {**{f"{m}_pretrain": name for m, name in METHODS.items()}, "ct_classification": "`ct_classification`",
             "ct_segmentation": "`ct_segmentation`"}
    for bundle in bench_loader.BUNDLES:
        overrides = {"backbone": "resnet50", "image_size": 96, "batch_size": 8, "num_workers": 2}
        r = {k: median_range(v) for k, v in bench_loader.compare(bundle, overrides, args.loader_processes).items()}
        targets.append(goal_target(f"{names[bundle]} bundle end to end / its bare step", r["end to end / bare"], 0.9))
        idle = lever_effects(f"{names[bundle]} end to end", bundle, {"loader_priority": r["idle / normal"]}, targets)
        rows.append(f"| {names[bundle]} | {ranged(r['end to end / bare'])} | {ranged(r['fed / bare'])} | "
                    f"{ranged(r['end to end'])} | {ranged(r['bare'])} | {idle[0]} |")
    return f"""## Bundles end to end (`python benchmarks/bench_loader.py --bundle B --processes {args.loader_processes}`)

Each bundle's own config on the demo data (ResNet50, batch 8, 96 px, `num_workers` 2, its default levers;
pre-training: k-NN monitor off; fine-tuning: from random initialisation, the backbone trained from the first
iteration, no validation between the timed iterations), built through MONAI's ConfigWorkflow, and its run timed
against its bare step in one process, where a slow spell of the machine cannot fall on one side only: after an
untimed round, 3 rounds of one 10-iteration block of each of four kinds, in an order rotated and reversed from
round to round. End to end: the bundle's own run (its engine loop fed by its DataLoader, with all its handlers),
paused after each of its blocks while the other kinds run. Bare: the same trainer's step on one batch held in
memory. Fed: the step fed by a copy of the bundle's DataLoader without the handlers, its workers at idle or at
normal CPU priority: the `loader_priority` lever (`auto`: idle when the step runs on the CPU, so that the
workers take only the cycles the step leaves instead of stalling its parallel regions; normal on a GPU). A
block's first 4 iterations (what 2 workers prefetch while another block runs) are not timed. Each ratio is taken
within a round, then the median and range over the rounds of {args.loader_processes} processes run one after the other.
The rates are each kind's images/s over the same rounds.

| bundle | end to end / bare | fed / bare | end to end, images/s | bare step, images/s | `loader_priority` idle / normal |
|---|---|---|---|---|---|
{chr(10).join(rows)}
"""


def section_3d(args, targets: list[Target]) -> str:
    import bench_pretrain

    rows, levers = [], [lever for lever in LEVERS if lever != "foreach"]  # foreach: the optimiser's, as in 2D
    for method in ("spark", "moco"):
        setting = bench_pretrain.Setting(method, backbone="resnet18", size=48, batch=2, steps=2, spatial_dims=3)
        s = bench_pretrain.summarise(setting, bench_pretrain.compare(setting, levers, 2))
        peer = "lightly" if method == "moco" else "supervised step"
        effects = lever_effects(f"3D {METHODS[method]}", f"{method}_pretrain", {k: s.levers[k] for k in levers},
                                None, "train_3d.json")
        rows.append(f"| {METHODS[method]} | {ranged(s.ours_over_peer)} ({peer}) | {ranged(s.ours_over_ideal)} | "
                    f"{s.rates['ours'][0]:.3f} | {s.rates[s.peer][0]:.3f} | "
                    f"{s.peaks['ours']:,.0f} / {s.peaks[s.peer]:,.0f} | " + " | ".join(effects) + " |")
    return f"""## 3D steps (`python benchmarks/bench_pretrain.py --spatial_dims 3 --method M --backbone resnet18 --size 48 --batch 2 --steps 2 --rounds 2 --levers {','.join(levers)}`)

48-cubed patches of 1 channel; every backbone MONAI's stock 3D ResNet18 (ours and the peers' alike); SparK at its
default decoder width 768, its ideal its own network unmasked as in 2D; timed as in 2D, in one process, with 2
rounds of one block of 2 steps per kind; patches/s counts the samples of a batch.

| method | ours / peer | ours / ideal | ours, patches/s | peer, patches/s | peak memory ours / peer, MiB | {' | '.join(f'`{lever}`' for lever in levers)} |
|---|---|---|---|---|---{'|---' * len(levers)}|
{chr(10).join(rows)}

The levers as in 2D, each over ours without it, beside the 3D overlay's default (`train_3d.json`): two rounds,
reported and not yet held to the on-where-it-wins target (the 3D overlays keep `channels_last` off until
several rounds decide it; `amp` is `auto` as in 2D).
"""


def section_demo_task(args, targets: list[Target]) -> str:
    import bench_demo_task

    from medssl_monai.bundle import demo_data_dir

    rows, aucs = [], {}
    with tempfile.TemporaryDirectory() as out:
        for fraction in (1.0, 0.05):
            metrics, n_train, seconds = bench_demo_task.run(demo_data_dir() + "/covid_ct", fraction, 0, 128, 20, out)
            auc = metrics["auc"]
            aucs[fraction] = auc["value"]
            rows.append(f"| {fraction:g} | {n_train} | {auc['value']:.3f} [{auc['ci_low']:.3f}, {auc['ci_high']:.3f}] "
                        f"| {metrics['accuracy']['value']:.3f} | {seconds:.0f} s |")
    targets.append(Target("demo COVID-like task, ResNet18 from scratch, all labels: test AUC", ">= 0.9",
                          f"{aucs[1.0]:.3f}", aucs[1.0] >= 0.9))
    return f"""## Can the demo task be learned? (`python benchmarks/bench_demo_task.py`)

A ResNet18 from random initialisation through the `ct_classification` bundle (128 px, 20 epochs, batch 32, Adam
1e-4, no frozen epochs) on the demo's COVID-like task, test AUC with its 95 % bootstrap interval, seed 0. The
study (`medssl-monai study --preset demo`) gives the spread over seeds.

| label fraction | training images | test AUC [95 % CI] | accuracy | time |
|---|---|---|---|---|
{chr(10).join(rows)}
"""


SECTIONS: dict[str, Callable] = {"pretrain": section_pretrain, "optimizer": section_optimizer,
                                 "loader": section_loader, "memory": section_memory,
                                 "data": section_data, "3d": section_3d, "demo_task": section_demo_task}


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def header(command: str, minutes: float) -> str:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    versions = ", ".join(f"{p} {_version(p)}" for p in ("torch", "torchvision", "monai", "lightly", "timm"))
    return f"""# Benchmarks

Written by `{command}` on {datetime.date.today().isoformat()} in {minutes:.0f} minutes: rerun it to regenerate this
file, do not edit it by hand (`docs/performance.md` says what the figures led to).

- Machine: {device_name()}, {platform.machine()}, {memory:.0f} GiB of memory; bf16 instructions:
  {'yes' if cpu_has_bf16() else 'no'}; GPU: {gpu}.
- Python {platform.python_version()}; {versions}.
- What is compared is measured alternating, in one process block by block where a section says so, else each
  kind in its own process round by round, so a slow spell of a shared machine falls on all of them; rates and
  ratios are medians with the range over the rounds (or the processes, where a section says so) in brackets.
  Read the ratios: absolute rates move between runs of the same machine.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spark_repo", default=None, help="a checkout of github.com/keyu-tian/SparK")
    parser.add_argument("--rounds", type=int, default=6, help="rounds of the pre-training steps' blocks")
    parser.add_argument("--loader_processes", type=int, default=2, help="processes of the bundles' blocks")
    parser.add_argument("--memory_rounds", type=int, default=1)
    parser.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    args = parser.parse_args()
    start = time.perf_counter()
    targets: list[Target] = []
    bodies = []
    for name in args.sections:
        print(f"[{time.perf_counter() - start:6.0f} s] {name}", flush=True)
        bodies.append(SECTIONS[name](args, targets))
    command = "python benchmarks/run_all.py " + " ".join(sys.argv[1:])
    table = "\n".join(t.row() for t in targets)
    met = sum(t.met for t in targets)
    report = f"""{header(command.strip(), (time.perf_counter() - start) / 60)}
## Against the project's targets ({met} of {len(targets)} met)

A lever row counts as met when the bundle's default follows the measurement: on where the lever is more than
{NOISE:.0%} faster, off where it is more than {NOISE:.0%} slower, either within that.

| target | goal | measured (range) | met |
|---|---|---|---|
{table}

""" + "\n".join(bodies)
    Path(args.out).write_text(report)
    print(report)


if __name__ == "__main__":
    main()
