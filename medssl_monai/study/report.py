"""The study's outputs from its rows: ``results.csv``, ``summary.json``/``summary.md`` (mean and standard
deviation over seeds per method and fraction, best per column in bold), ``auc_vs_fraction.png`` and
``robustness.png`` (AUC at each fraction relative to AUC with all labels, the reference study's question)."""

from __future__ import annotations

import csv
import math
import statistics
from collections import defaultdict
from pathlib import Path

from medssl_monai.utils import atomic_path, write_json

__all__ = ["RESULT_FIELDS", "SUMMARY_METRICS", "aggregate", "write_report"]

RESULT_FIELDS = ("task", "method", "fraction", "seed", "auc", "auc_low", "auc_high", "accuracy", "accuracy_low",
                 "accuracy_high", "f1", "f1_low", "f1_high", "balanced_accuracy", "balanced_accuracy_low",
                 "balanced_accuracy_high", "n_test", "seconds", "run_dir")
SUMMARY_METRICS = ("auc", "accuracy", "f1")


def aggregate(rows: list[dict]) -> dict:
    """``{task: {metric: {method: {fraction: {"mean", "std", "n"}}}}}`` over seeds (std 0 for one seed)."""
    groups: dict = defaultdict(list)
    for r in rows:
        groups[(r["task"], r["method"], float(r["fraction"]))].append(r)
    out: dict = {}
    for (task, method, fraction), members in sorted(groups.items()):
        for metric in SUMMARY_METRICS:
            values = [float(m[metric]) for m in members if not math.isnan(float(m[metric]))]
            cell = {"mean": statistics.mean(values) if values else float("nan"),
                    "std": statistics.stdev(values) if len(values) > 1 else 0.0, "n": len(values)}
            out.setdefault(task, {}).setdefault(metric, {}).setdefault(method, {})[f"{fraction:g}"] = cell
    return out


def _markdown(summary: dict, methods: list[str], fractions: list[str]) -> str:
    lines = ["# Label-fraction study", "",
             "Mean +- standard deviation over seeds of the test metrics; columns are the share of the training "
             "labels used; the best mean of each column is in bold.", ""]
    for task, metrics in summary.items():
        for metric, table in metrics.items():
            lines += [f"## {task}: {metric}", "", "| method | " + " | ".join(fractions) + " |",
                      "|---|" + "---|" * len(fractions)]
            best = {f: max((table[m][f]["mean"] for m in methods if f in table.get(m, {})
                            and not math.isnan(table[m][f]["mean"])), default=None) for f in fractions}
            for m in methods:
                cells = []
                for f in fractions:
                    cell = table.get(m, {}).get(f)
                    if cell is None:
                        cells.append("-")
                        continue
                    text = f"{cell['mean']:.3f} +- {cell['std']:.3f}"
                    cells.append(f"**{text}**" if best[f] is not None and cell["mean"] == best[f] else text)
                lines.append(f"| {m} | " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines)


def _plots(summary: dict, methods: list[str], fractions: list[str], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(summary)
    for name, relative in (("auc_vs_fraction.png", False), ("robustness.png", True)):
        fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4.2), squeeze=False)
        for ax, task in zip(axes[0], tasks):
            table = summary[task]["auc"]
            for m in methods:
                points = [(float(f), table[m][f]) for f in fractions if f in table.get(m, {})]
                if not points:
                    continue
                xs = [p[0] for p in points]
                if relative:
                    full = table[m].get("1", {}).get("mean")
                    if not full:
                        continue
                    ax.plot(xs, [c["mean"] / full for _, c in points], marker="o", label=m)
                else:
                    ax.errorbar(xs, [c["mean"] for _, c in points], yerr=[c["std"] for _, c in points],
                                marker="o", capsize=3, label=m)
            ax.set_xscale("log")
            ax.set_xticks([float(f) for f in fractions], fractions)
            ax.set_xlabel("share of training labels")
            ax.set_ylabel("test AUC / test AUC with all labels" if relative else "test ROC AUC (mean +- std)")
            ax.set_title(task)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        with atomic_path(out / name) as tmp:
            fig.savefig(tmp, format="png", dpi=120)
        plt.close(fig)


def write_report(rows: list[dict], out: str | Path) -> dict:
    """Write every output of the study from its rows; returns the summary."""
    out = Path(out)
    with atomic_path(out / "results.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=RESULT_FIELDS)
        writer.writeheader()
        writer.writerows({k: r[k] for k in RESULT_FIELDS} for r in rows)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fractions = [f"{f:g}" for f in sorted({float(r["fraction"]) for r in rows}, reverse=True)]
    summary = aggregate(rows)
    write_json(out / "summary.json", summary)
    with atomic_path(out / "summary.md") as tmp:
        tmp.write_text(_markdown(summary, methods, fractions))
    _plots(summary, methods, fractions, out)
    return summary
