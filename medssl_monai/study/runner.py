"""Run a label-fraction study through the bundles: pre-train once per method, fine-tune per (method, task,
fraction, seed), each run in its own folder with its overrides, log and metrics.

Resumable: a run's ``done.json`` is written only after the bundle succeeded, so a killed study started again
skips every finished run, and the interrupted one continues from its own last checkpoint (the bundles resume).
``done.json`` records the run's identity (its bundle, overrides and the pre-trained encoder's SHA-256): a
finished run whose identity differs from what the study now asks for is refused, never reused.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from medssl_monai.bundle import bundle_root
from medssl_monai.engines.identity import file_sha256, identity_differences
from medssl_monai.study.config import StudyConfig
from medssl_monai.study.report import RESULT_FIELDS, write_report
from medssl_monai.utils import write_json

__all__ = ["Study", "StudyError", "Run"]

logger = logging.getLogger(__name__)
DONE = "done.json"


class StudyError(RuntimeError):
    """A bundle run of the study failed; the message names its log."""


@dataclass(frozen=True)
class Run:
    """One fine-tuning run of the study."""

    arm: str
    task: str
    fraction: float
    seed: int

    @property
    def folder(self) -> str:
        return f"runs/{self.arm}/{self.task}/fraction_{self.fraction:g}/seed_{self.seed}"


def _cli(overrides: dict) -> list[str]:
    """Bundle overrides as ``monai.bundle run`` arguments (fire parses Python literals)."""
    args = []
    for key, value in overrides.items():
        text = value if isinstance(value, str) else repr(value)  # lists, numbers, True/False/None
        args += [f"--{key}", text]
    return args


class Study:
    """A study in folder ``out``.

    Args:
        config: what to run.
        out: the study folder (``study.json``, ``pretrain/``, ``runs/``, ``results.csv``, ``summary.md``, plots).
        python: interpreter that runs the bundles.
    """

    def __init__(self, config: StudyConfig, out: str | Path, python: str = sys.executable) -> None:
        self.config, self.out, self.python = config, Path(out), python

    def runs(self) -> list[Run]:
        c = self.config
        return [Run(arm, task, float(f), int(s)) for arm in c.arms for task in c.tasks for f in c.fractions
                for s in c.seeds]

    def _bundle(self, bundle: str, overrides: dict, folder: Path) -> float:
        """Run ``bundle``'s train config with ``overrides``, logging to ``folder/run.log``; seconds taken."""
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / "config.json", {"bundle": bundle, "overrides": overrides})
        config = Path(bundle_root(bundle)) / "configs" / "train.json"
        start = time.perf_counter()
        with open(folder / "run.log", "a") as log:
            result = subprocess.run([self.python, "-m", "monai.bundle", "run", "--config_file", str(config),
                                     *_cli(overrides)], stdout=log, stderr=subprocess.STDOUT, cwd=folder)
        if result.returncode != 0:
            tail = (folder / "run.log").read_text().strip().splitlines()[-5:]
            raise StudyError(f"{bundle} failed (exit {result.returncode}); log: {folder / 'run.log'}\n" + "\n".join(tail))
        return time.perf_counter() - start

    def encoder(self, arm: str) -> str | None:
        """The starting weights of ``arm``: none for scratch, the file of an external encoder, or the encoder
        the study pre-trained."""
        if arm == "scratch":
            return None
        if arm in self.config.external:
            return str(self.config.external[arm])
        return str(self.out / "pretrain" / arm / "models" / "encoder.pt")

    @staticmethod
    def _identity(bundle: str, overrides: dict) -> dict:
        """What defines a bundle run of the study: the bundle, its overrides and the starting weights' hash."""
        identity = json.loads(json.dumps({"bundle": bundle, **overrides}))  # as done.json stores it
        if overrides.get("pretrained_checkpoint", "none") != "none":
            identity["pretrained_sha256"] = file_sha256(overrides["pretrained_checkpoint"])
        return identity

    @staticmethod
    def _finished(folder: Path, identity: dict) -> dict | None:
        """The ``done.json`` of a run finished with ``identity``; None when not finished; a StudyError when it
        was finished with other settings."""
        if not (folder / DONE).is_file():
            return None
        done = json.loads((folder / DONE).read_text())
        differences = identity_differences(done.get("identity", {}), identity)
        if differences:
            raise StudyError(f"{folder} was finished with other settings: {'; '.join(differences)}. Give the study "
                             f"another --out, or delete {folder} to run it again with the current settings")
        return done

    def pretrain_overrides(self, method: str) -> dict:
        """The ids of ``method``'s pre-training run."""
        folder = self.out / "pretrain" / method
        settings = self.config.pretrain
        return {"dataset_dir": settings["dataset_dir"], "ckpt_dir": str(folder / "models"),
                "log_dir": str(folder / "logs"), **settings.get("overrides", {}), **settings.get(method, {})}

    def finetune_overrides(self, run: Run) -> dict:
        """The ids of one fine-tuning run."""
        folder = self.out / run.folder
        return {**self.config.tasks[run.task], "ckpt_dir": str(folder / "models"), "log_dir": str(folder / "logs"),
                "output_dir": str(folder / "eval"), "label_fraction": run.fraction, "seed": run.seed,
                "pretrained_checkpoint": self.encoder(run.arm) or "none",  # a CLI None would mean "default"
                **self.config.finetune.get("overrides", {})}

    def plan(self) -> list[str]:
        """Every bundle run the study would make, one line each (bundle, folder, ids), without running any."""
        lines = [f"pretrain {m}: {m}_pretrain in {self.out / 'pretrain' / m}: " + " ".join(_cli(self.pretrain_overrides(m)))
                 for m in self.config.methods if m != "scratch"]
        lines += [f"finetune {r.arm} {r.task} fraction {r.fraction:g} seed {r.seed}: ct_classification in "
                  f"{self.out / r.folder}: " + " ".join(_cli(self.finetune_overrides(r))) for r in self.runs()]
        return lines

    def pretrain(self, method: str) -> None:
        folder = self.out / "pretrain" / method
        overrides = self.pretrain_overrides(method)
        identity = self._identity(f"{method}_pretrain", overrides)
        if self._finished(folder, identity) is not None:
            return
        logger.info(f"pre-training {method} in {folder}")
        seconds = self._bundle(f"{method}_pretrain", overrides, folder)
        write_json(folder / DONE, {"method": method, "seconds": round(seconds, 1), "encoder": self.encoder(method),
                                   "identity": identity})

    def finetune(self, run: Run) -> dict:
        folder = self.out / run.folder
        overrides = self.finetune_overrides(run)
        identity = self._identity("ct_classification", overrides)
        done = self._finished(folder, identity)
        if done is not None:
            return {k: v for k, v in done.items() if k != "identity"}
        seconds = self._bundle("ct_classification", overrides, folder)
        metrics = json.loads((folder / "eval" / "metrics.json").read_text())
        row = {"task": run.task, "method": run.arm, "fraction": run.fraction, "seed": run.seed,
               "seconds": round(seconds, 1), "run_dir": run.folder}
        for name in ("auc", "accuracy", "f1", "balanced_accuracy"):
            row[name] = metrics[name]["value"]
            row[f"{name}_low"], row[f"{name}_high"] = metrics[name]["ci_low"], metrics[name]["ci_high"]
        row["n_test"] = metrics["n"]
        write_json(folder / DONE, {**{k: row[k] for k in RESULT_FIELDS}, "identity": identity})
        return row

    def run(self, progress: bool = True) -> list[dict]:
        """Everything not yet done, then ``results.csv``, ``summary.md`` and the plots; returns the rows."""
        self.out.mkdir(parents=True, exist_ok=True)
        write_json(self.out / "study.json", self.config.to_dict())
        for method in self.config.methods:
            if method != "scratch":
                self.pretrain(method)
        runs, rows = self.runs(), []
        for i, run in enumerate(runs, 1):
            fresh = not (self.out / run.folder / DONE).is_file()
            rows.append(self.finetune(run))
            if progress:
                state = f"done in {rows[-1]['seconds']:.0f} s" if fresh else "already done"
                print(f"[{i}/{len(runs)}] {run.arm} {run.task} fraction {run.fraction:g} seed {run.seed}: "
                      f"AUC {rows[-1]['auc']:.3f} ({state})", flush=True)
        write_report(rows, self.out)
        return rows
