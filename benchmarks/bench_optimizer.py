"""The ``foreach`` lever with each pre-training bundle's own optimiser: one optimiser step over a ResNet50's
parameters, the per-tensor loop against the multi-tensor (foreach) kernels.

``bench_pretrain.py`` times ``foreach`` inside a whole step with SGD, the optimiser its peers share; the bundles
use LAMB (SparK), SGD (MoCo v2), Adam (BYOL) and LARS (SwAV), built by ``medssl_monai.optimizers.build_optimizer``
with the settings of the bundle's ``optimizer`` entry. Both variants step the same weights with the same
gradients in one process, ``--steps`` each per round (:func:`common.time_blocks`: after an untimed round, the
order rotated and reversed from round to round); median per step over ``--rounds``. Also
says whether the two give bit-identical weights after those steps (if not, switching changes a run's numbers).
Usage: python benchmarks/bench_optimizer.py [--methods spark moco byol swav --steps 5 --rounds 5]
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch
import torchvision
from common import device_name, median_range, ranged, repeated, time_blocks

from medssl_monai.bundle import bundle_root
from medssl_monai.optimizers import build_optimizer

SETTINGS = ("name", "betas", "momentum")  # the optimiser entry's literal settings; lr and decay below


def bundle_optimizer(method: str) -> dict:
    """The literal settings of ``<method>_pretrain``'s ``optimizer`` entry (name, betas or momentum)."""
    entry = json.loads((Path(bundle_root(f"{method}_pretrain")) / "configs" / "train.json").read_text())["optimizer"]
    return {k: v for k, v in entry.items() if k in SETTINGS}


def measure(method: str, steps: int, rounds: int) -> dict:
    """ms per step of the loop and foreach variants and loop / foreach within a round (each median, lowest,
    highest), and whether the weights agree."""
    torch.manual_seed(0)
    base = torchvision.models.resnet50()
    grads = [torch.randn_like(p) * 1e-2 for p in base.parameters()]
    settings = bundle_optimizer(method)
    models, optimisers = {}, {}
    for foreach in (False, True):
        models[foreach] = copy.deepcopy(base)
        optimisers[foreach] = build_optimizer(models[foreach], lr=1e-2, weight_decay=1e-4, foreach=foreach, **settings)
        for p, g in zip(models[foreach].parameters(), grads):
            p.grad = g.clone()
    seconds = time_blocks({foreach: repeated(optimisers[foreach].step, steps) for foreach in (False, True)}, rounds)
    times = {foreach: [s / steps * 1e3 for s in seconds[foreach]] for foreach in (False, True)}
    same = all(torch.equal(a, b) for a, b in zip(models[False].parameters(), models[True].parameters()))
    ratio = median_range([loop / foreach for loop, foreach in zip(times[False], times[True])])  # within a round
    return {"optimizer": settings["name"], "loop": median_range(times[False]), "foreach": median_range(times[True]),
            "speedup": ratio, "identical": same}


def _measure(kind: str, method: str, steps: int, rounds: int, queue) -> None:
    """:func:`measure` in a child process of ``common.alternate`` (``kind`` is a label only)."""
    queue.put(measure(method, steps, rounds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["spark", "moco", "byol", "swav"])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(f"device: {device_name()}; torch {torch.__version__}; {torch.get_num_threads()} threads; ResNet50 parameters")
    for method in args.methods:
        r = measure(method, args.steps, args.rounds)
        print(f"{method} ({r['optimizer']}): loop {r['loop'][0]:.1f} ms, foreach {r['foreach'][0]:.1f} ms, "
              f"loop / foreach {ranged(r['speedup'])}; weights identical: {r['identical']}")


if __name__ == "__main__":
    main()
