"""The study's outputs from its rows and the runs' test predictions.

- ``results.csv``: every run (task, method, protocol, fraction, seed, test metrics with their own intervals).
- ``summary.json`` / ``summary.md``: per task, protocol and fraction, each method's mean test metric (ROC AUC; a
  segmentation task's per-patient mean Dice, from each run's ``per_patient.csv``) over seeds
  with a 95 % interval (bootstrap over seeds and test patients), and its paired difference to ``scratch`` (the
  randomly initialised encoder, trained in ``finetune``, frozen in ``linear`` and ``knn``): mean difference,
  95 % interval, permutation p-value and the Holm-adjusted p-value over the table's comparisons
  (:mod:`medssl_monai.evaluation.paired`). The report then lists which differences are resolved (interval
  excluding 0 and Holm-adjusted p < 0.05) and which are not.
- ``auc_vs_fraction.png``: the mean metric (AUC, or Dice) with its interval per method;
  ``difference_vs_scratch.png``: the paired differences with their intervals.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import numpy as np

from medssl_monai.evaluation.paired import (
    holm,
    method_interval,
    paired_comparison,
    paired_score_comparison,
    score_interval,
)
from medssl_monai.utils import atomic_path, write_json

__all__ = ["RESULT_FIELDS", "BASELINE", "read_predictions", "read_patient_dice", "summarise", "write_report"]

RESULT_FIELDS = ("task", "method", "protocol", "fraction", "seed", "auc", "auc_low", "auc_high", "accuracy",
                 "accuracy_low", "accuracy_high", "f1", "f1_low", "f1_high", "balanced_accuracy",
                 "balanced_accuracy_low", "balanced_accuracy_high", "dice", "dice_low", "dice_high", "hd95",
                 "hd95_low", "hd95_high", "n_test", "seconds", "run_dir")  # each row fills its task kind's metrics
BASELINE = "scratch"
ALPHA = 0.05
_BASELINE_NAME = {"finetune": "scratch (random init, fine-tuned)", "linear": "random-init encoder (frozen)",
                  "knn": "random-init encoder (frozen)"}


def read_predictions(path: str | Path) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    """Labels (N,), probabilities (N, C) and patient ids (or None) of a run's ``predictions.csv``."""
    with open(path, newline="") as f:
        table = list(csv.DictReader(f))
    if not table:
        raise ValueError(f"{path}: no predictions")
    columns = [c for c in table[0] if c.startswith("prob_")]
    labels = np.array([int(r["label"]) for r in table])
    probs = np.array([[float(r[c]) for c in columns] for r in table])
    patients = [r["patient"] for r in table]
    return labels, probs, patients if all(patients) else None


def read_patient_dice(path: str | Path) -> dict[str, float]:
    """Each test patient's mean Dice over the organs its label volume has, from a segmentation run's
    ``per_patient.csv`` (patients with no organ at all are left out)."""
    with open(path, newline="") as f:
        table = list(csv.DictReader(f))
    if not table:
        raise ValueError(f"{path}: no patients")
    scores: dict[str, list[float]] = defaultdict(list)
    for r in table:
        if r["dice"] not in ("nan", "NaN", ""):
            scores[r["patient"]].append(float(r["dice"]))
    return {p: float(np.mean(v)) for p, v in scores.items() if v}


def _score_matrix(runs: dict, seeds: list[int], patients: list[str]) -> np.ndarray:
    """(S, N) scores of ``{seed: {patient: score}}``."""
    return np.array([[runs[s][p] for p in patients] for s in seeds])


def _segmentation_entry(loaded: dict, where: str, n_bootstrap: int, n_permutations: int) -> dict:
    """A summary cell of a segmentation task from ``{method: {seed: {patient: Dice}}}``."""
    entry: dict = {"methods": {}, "vs_scratch": {}}
    for method, runs in loaded.items():
        seeds = sorted(runs)
        patients = sorted(runs[seeds[0]])
        if any(sorted(runs[s]) != patients for s in seeds):
            raise ValueError(f"{where}: {method}'s seeds were tested on different patients")
        entry["methods"][method] = score_interval(_score_matrix(runs, seeds, patients), n_bootstrap)
    if BASELINE in loaded:
        for method, runs in loaded.items():
            seeds = sorted(set(runs) & set(loaded[BASELINE]))
            if method == BASELINE or not seeds:
                continue
            patients = sorted(runs[seeds[0]])
            if sorted(loaded[BASELINE][seeds[0]]) != patients:
                raise ValueError(f"{where}: {method} and {BASELINE} were tested on different patients; their "
                                 "per_patient.csv cannot be paired")
            entry["vs_scratch"][method] = paired_score_comparison(
                _score_matrix(runs, seeds, patients), _score_matrix(loaded[BASELINE], seeds, patients), n_bootstrap,
                n_permutations)
    return entry


def summarise(rows: list[dict], out: str | Path, n_bootstrap: int = 2000, n_permutations: int = 2000) -> dict:
    """``{task: {protocol: {fraction: {"methods": {method: interval}, "vs_scratch": {method: comparison}}}}}``
    from the runs' predictions under ``out``; seeds missing from either side of a pair are left out of it."""
    out = Path(out)
    cells: dict = defaultdict(dict)  # (task, protocol, fraction) -> method -> seed -> row
    for r in rows:
        cells[(r["task"], r["protocol"], f"{float(r['fraction']):g}")].setdefault(r["method"], {})[int(r["seed"])] = r
    summary: dict = {}
    for (task, protocol, fraction), methods in sorted(cells.items(), key=lambda kv: (kv[0][0], kv[0][1],
                                                                                        -float(kv[0][2]))):
        if any(r.get("dice", "") != "" for seeds in methods.values() for r in seeds.values()):  # segmentation
            loaded = {m: {s: read_patient_dice(out / r["run_dir"] / "eval" / "per_patient.csv")
                          for s, r in seeds.items()} for m, seeds in methods.items()}
            summary.setdefault(task, {}).setdefault(protocol, {})[fraction] = _segmentation_entry(
                loaded, f"{task} {protocol} fraction {fraction}", n_bootstrap, n_permutations)
            continue
        loaded = {m: {s: read_predictions(out / r["run_dir"] / "eval" / "predictions.csv") for s, r in seeds.items()}
                  for m, seeds in methods.items()}
        entry: dict = {"methods": {}, "vs_scratch": {}}
        for method, runs in loaded.items():
            labels, _, groups = next(iter(runs.values()))
            probs = np.stack([runs[s][1] for s in sorted(runs)])  # (S, N, C)
            entry["methods"][method] = method_interval(labels, probs, groups, n_bootstrap)
        if BASELINE in loaded:
            for method, runs in loaded.items():
                seeds = sorted(set(runs) & set(loaded[BASELINE]))
                if method == BASELINE or not seeds:
                    continue
                labels, _, groups = runs[seeds[0]]
                for s in seeds:  # a pair must predict the same test images
                    theirs = loaded[BASELINE][s]
                    if not np.array_equal(runs[s][0], theirs[0]) or runs[s][2] != theirs[2]:
                        raise ValueError(f"{task} {protocol} fraction {fraction} seed {s}: {method} and {BASELINE} "
                                         "predicted different test sets (labels or patients differ); their "
                                         "predictions.csv cannot be paired")
                entry["vs_scratch"][method] = paired_comparison(
                    labels, np.stack([runs[s][1] for s in seeds]), np.stack([loaded[BASELINE][s][1] for s in seeds]),
                    groups, n_bootstrap, n_permutations)
        summary.setdefault(task, {}).setdefault(protocol, {})[fraction] = entry
    for task in summary.values():  # Holm over each table's comparisons (methods x fractions)
        for protocol in task.values():
            comparisons = [c for entry in protocol.values() for c in entry["vs_scratch"].values()]
            for c, adjusted in zip(comparisons, holm([c["p_value"] for c in comparisons])):
                c["p_holm"] = adjusted
                c["resolved"] = bool(adjusted < ALPHA and (c["ci_low"] > 0 or c["ci_high"] < 0))
    return summary


def _interval(cell: dict, key: str = "mean") -> str:
    return f"{cell[key]:.3f} [{cell['ci_low']:.3f}, {cell['ci_high']:.3f}]"


def _markdown(summary: dict, methods: list[str], fractions: list[str], seeds: dict[str, int],
              metrics: dict[str, str]) -> str:
    lines = ["# Label-fraction study", "",
             f"The test metric of each task (classification: ROC AUC; segmentation: each test patient's mean Dice "
             f"over its organs), mean over the task's seeds with its 95 % interval (bootstrap over seeds and test "
             "patients); columns are the share of the training labels. A seed draws the same labelled subset for "
             "every method and protocol. Below each table, each method's paired difference to `scratch` (a "
             "randomly initialised encoder: trained from scratch in fine-tuning, frozen in the linear and k-NN "
             "protocols): mean difference [95 % interval], permutation p-value, and the Holm-adjusted p-value "
             f"over the table's comparisons. A difference is called resolved when its interval excludes 0 and its "
             f"adjusted p-value is below {ALPHA}.", ""]
    for task, protocols in summary.items():
        for protocol, table in protocols.items():
            lines += [f"## {task}: {protocol} (test {metrics[task]}, {seeds[task]} seed{'s' * (seeds[task] > 1)})", "",
                      "| method | " + " | ".join(fractions) + " |",
                      "|---|" + "---|" * len(fractions)]
            for m in methods:
                name = _BASELINE_NAME.get(protocol, m) if m == BASELINE else m
                cells = [_interval(table[f]["methods"][m]) if m in table.get(f, {}).get("methods", {}) else "-"
                         for f in fractions]
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
            lines += ["", f"Paired difference to {_BASELINE_NAME.get(protocol, BASELINE)}:", "",
                      "| method | " + " | ".join(fractions) + " |", "|---|" + "---|" * len(fractions)]
            resolved, unresolved = [], []
            for m in methods:
                if m == BASELINE:
                    continue
                cells = []
                for f in fractions:
                    c = table.get(f, {}).get("vs_scratch", {}).get(m)
                    if c is None:
                        cells.append("-")
                        continue
                    text = f"{c['difference']:+.3f} [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}] p={c['p_value']:.3g} " \
                           f"(Holm {c['p_holm']:.3g})"
                    cells.append(f"**{text}**" if c["resolved"] else text)
                    (resolved if c["resolved"] else unresolved).append(
                        f"{m} at {f} ({'+' if c['difference'] > 0 else '-'}{abs(c['difference']):.3f})")
                lines.append(f"| {m} | " + " | ".join(cells) + " |")
            lines += ["", "Resolved (in bold): " + (", ".join(resolved) if resolved else "none") + ".",
                      "Not resolved: " + (", ".join(unresolved) if unresolved else "none") + ".", ""]
    return "\n".join(lines)


def _plots(summary: dict, methods: list[str], fractions: list[str], out: Path, metrics: dict[str, str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(summary)
    protocols = list(dict.fromkeys(p for t in tasks for p in summary[t]))
    xs = [float(f) for f in fractions]
    for name, paired in (("auc_vs_fraction.png", False), ("difference_vs_scratch.png", True)):
        # a row per task, a column per protocol
        fig, grid = plt.subplots(len(tasks), len(protocols), figsize=(4.6 * len(protocols), 3.8 * len(tasks)),
                                 squeeze=False)
        for ax, (task, protocol) in ((grid[i][j], (t, p)) for i, t in enumerate(tasks)
                                     for j, p in enumerate(protocols)):
            if protocol not in summary[task]:
                ax.set_visible(False)
                continue
            table = summary[task][protocol]
            shown = [m for m in methods if not (paired and m == BASELINE)]
            for k, m in enumerate(shown):
                key = "vs_scratch" if paired else "methods"
                points = [(x, table[f][key][m]) for x, f in zip(xs, fractions) if m in table.get(f, {}).get(key, {})]
                if not points:
                    continue
                jitter = 1 + 0.04 * (k - (len(shown) - 1) / 2)  # side by side on the log axis
                value = "difference" if paired else "mean"
                ys = np.array([c[value] for _, c in points])
                err = np.array([[y - c["ci_low"] for y, (_, c) in zip(ys, points)],
                                [c["ci_high"] - y for y, (_, c) in zip(ys, points)]])
                ax.errorbar([x * jitter for x, _ in points], ys, yerr=np.maximum(err, 0), marker="o", capsize=3,
                            label=m)
            if paired:
                ax.axhline(0, color="black", lw=0.8)
            ax.set_xscale("log")
            ax.set_xticks(xs, fractions)
            ax.minorticks_off()
            ax.set_xlabel("share of training labels")
            ax.set_ylabel(f"test {metrics[task]} - scratch's (paired, 95 % CI)" if paired
                          else f"test {metrics[task]} (mean, 95 % CI)")
            ax.set_title(f"{task}: {protocol}")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        with atomic_path(out / name) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
        plt.close(fig)


def write_report(rows: list[dict], out: str | Path, n_bootstrap: int = 2000, n_permutations: int = 2000) -> dict:
    """Write every output of the study from its rows (and the runs' predictions); returns the summary."""
    out = Path(out)
    with atomic_path(out / "results.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=RESULT_FIELDS)
        writer.writeheader()
        writer.writerows({k: r.get(k, "") for k in RESULT_FIELDS} for r in rows)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fractions = [f"{f:g}" for f in sorted({float(r["fraction"]) for r in rows}, reverse=True)]
    summary = summarise(rows, out, n_bootstrap, n_permutations)
    metrics = {r["task"]: "mean Dice" if r.get("dice", "") != "" else "ROC AUC" for r in rows}
    write_json(out / "summary.json", summary)
    with atomic_path(out / "summary.md") as tmp:
        seeds = {task: len({int(r["seed"]) for r in rows if r["task"] == task}) for task in metrics}
        tmp.write_text(_markdown(summary, methods, fractions, seeds, metrics))
    _plots(summary, methods, fractions, out, metrics)
    return summary
