"""Choose the demo preset's pre-training learning rates on the validation split, never on test.

The bundles scale a method's ``base_lr`` to its batch linearly (lr = base_lr * batch / 256), the rule of the
methods' papers for batches of 256-4096 and hundreds of epochs. The demo pre-trains in batches of 8 for a few
hundred steps, where that rule leaves the encoder close to its initialisation. This script pre-trains each method
with the demo preset's settings at ``base_lr`` times each multiplier (and any other bundle settings given with
``--set``) and scores the encoder by cross-validated k-NN accuracy (the study's k and temperature) on the
training and validation images of each classification task of the preset, beside the random encoder: the
patients are dealt into ``FOLDS`` folds and each fold's images are classified against the other folds' (so no
image is matched with its own patient's). That scores every training and validation image (about 550 a task)
instead of the validation split alone (82 organ patches of 2 patients, too few to rank encoders a few points
apart). The setting with the best mean over the tasks (of the first column) is the one to put in the preset;
the test split is not read.

Beside each score it prints a diagnostic, not a protocol: the same k-NN after the encoder's batch-norm running
statistics were re-estimated on the task's training images (no labels, weights unchanged; AdaBN, Li et al.
2016). A pre-trained encoder carries the statistics of the pre-training slices into the frozen protocols; where
the task's images differ from those slices (the organ patches: crops at 2-3 times the magnification), the gap
between the two columns is what that shift costs. The random encoder's statistics are its initial ones (mean
0, variance 1), so the shift does not apply to it in the same way.

Usage: python scripts/tune_demo_pretraining.py --out demo_tuning [--multipliers 1 4 16] [--methods spark moco]
[--set num_prototypes=100 queue_length=256]
Prints a Markdown table and writes ``tuning.json`` (``tuning_<id><value>.json`` with ``--set``) in ``--out``;
finished pre-trainings are reused.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import monai
import torch
from monai.data import DataLoader
from torch.optim.swa_utils import update_bn

from medssl_monai.bundle import bundle_default, demo_root
from medssl_monai.data.demo import ensure_demo_data
from medssl_monai.evaluation import encode, knn_predict
from medssl_monai.study import Study, load_study_config
from medssl_monai.study.runner import Run, _parser
from medssl_monai.utils import write_json


FOLDS = 5


def cross_validated_knn(study: Study, arm: str, task: str) -> dict[str, float]:
    """k-NN accuracy of ``task``'s training and validation images, each fold of patients against the others, on
    ``arm``'s frozen encoder in ``study``: ``{"knn": with the encoder as the study uses it, "knn_bn": with its
    batch-norm statistics re-estimated on the task's training images}``."""
    overrides = study.finetune_overrides(Run(arm, task, "knn", 1.0, 0))
    parser = _parser("ct_classification", overrides)
    monai.utils.set_determinism(seed=0)
    parser.get_parsed_content("load_pretrained")
    probe = parser.get_parsed_content("probe#evaluator")
    train, val = probe.datasets["train"], probe.datasets["val"]

    def accuracy() -> float:
        (train_x, train_y, train_p), (val_x, val_y, val_p) = encode(probe.network, train), encode(probe.network, val)
        x, y = torch.cat([train_x, val_x]), torch.cat([train_y, val_y])  # (N, D), (N,)
        fold_of = {patient: i % FOLDS for i, patient in enumerate(sorted(set(train_p + val_p)))}
        fold = torch.tensor([fold_of[p] for p in train_p + val_p])  # (N,)
        correct = 0
        for f in range(FOLDS):
            held = fold == f
            predicted = knn_predict(x[~held], y[~held], x[held], len(probe.class_names), probe.k, probe.temperature)
            correct += int((predicted == y[held]).sum())
        return correct / len(y)

    scores = {"knn": accuracy()}
    batches = DataLoader(train, batch_size=64)
    images = (torch.as_tensor(getattr(b["image"], "as_tensor", lambda: b["image"])()) for b in batches)
    update_bn(images, probe.network)  # (B, C, H, W) batches; running statistics as a cumulative mean
    scores["knn_bn"] = accuracy()
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--multipliers", nargs="+", type=float, default=[1.0, 4.0, 16.0])
    parser.add_argument("--methods", nargs="+", default=["spark", "moco", "byol", "swav"])
    parser.add_argument("--set", nargs="+", default=[], metavar="ID=VALUE",
                        help="further pre-training bundle settings for every method tried (values as JSON)")
    args = parser.parse_args()
    settings = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}
    tag = "".join(f"_{k}{v}" for k, v in settings.items())
    ensure_demo_data(demo_root())
    base = load_study_config(preset=args.preset)
    tasks = [t for t, spec in base.tasks.items() if spec.get("kind", "classification") == "classification"]

    results: dict = {"preset": args.preset, "tasks": tasks, "random": {}, "methods": {}}
    random_study = Study(base, args.out / "random")
    results["random"] = {task: cross_validated_knn(random_study, "scratch", task) for task in tasks}
    rows = [("random encoder", "", results["random"])]
    for method in args.methods:
        default_lr = base.pretrain.get(method, {}).get("base_lr", bundle_default(f"{method}_pretrain", "base_lr"))
        results["methods"][method] = {}
        for multiplier in args.multipliers:
            config = load_study_config(preset=args.preset)
            base_lr = default_lr * multiplier
            config.pretrain[method] = {**config.pretrain.get(method, {}), **settings, "base_lr": base_lr}
            study = Study(config, args.out / f"{method}_x{multiplier:g}{tag}")
            study.pretrain(method)
            scores = {task: cross_validated_knn(study, method, task) for task in tasks}
            seconds = json.loads((study.out / "pretrain" / method / "done.json").read_text())["seconds"]
            results["methods"][method][f"{multiplier:g}{tag}"] = {"base_lr": base_lr, **settings,
                                                                    "knn": scores, "seconds": seconds}
            rows.append((method, f"x{multiplier:g} ({base_lr:.3g}){tag.replace('_', ' ')}", scores))
            write_json(args.out / f"tuning{tag}.json", results)
            print(f"{method} base_lr x{multiplier:g}: " + ", ".join(f"{t} {s['knn']:.3f}" for t, s in scores.items()),
                  flush=True)

    print(f"\nk-NN accuracy over the training and validation images, {FOLDS} folds of patients ({args.preset} "
          "preset); in brackets with batch-norm statistics re-estimated on the task's training images (a diagnostic)\n")
    print("| encoder | base_lr | " + " | ".join(tasks) + " | mean |")
    print("|---|---|" + "---|" * (len(tasks) + 1))
    for name, lr, scores in rows:
        mean = sum(s["knn"] for s in scores.values()) / len(scores)
        cells = " | ".join(f"{scores[t]['knn']:.3f} ({scores[t]['knn_bn']:.3f})" for t in tasks)
        print(f"| {name} | {lr} | {cells} | {mean:.3f} |")


if __name__ == "__main__":
    main()
