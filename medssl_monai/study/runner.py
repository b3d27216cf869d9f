"""Run a label-fraction study through the bundles: pre-train once per method, then evaluate every (method,
task, protocol, fraction, seed), each run in its own folder with its overrides, log and metrics (a
classification task with ct_classification, a segmentation task with ct_segmentation).

Every run is a run of a bundle's ``train.json`` (with its ``train_3d.json`` overlay in a 3D study) with the
overrides its ``config.json`` records, executed by MONAI's bundle parser in this process (one Python start-up,
about 10 s, for the whole study instead of one per run). ``--protocol finetune`` runs train and test; the frozen
protocols (``linear``, ``knn``) of one encoder, task and seed share one parse of the bundle and one feature pass
(its ``probe#evaluator`` with a feature cache), then evaluate each labelled subset: what ``python -m monai.bundle
run`` with that run's overrides gives.

Resumable: a run's ``done.json`` is written only after the bundle succeeded, so a killed study started again
skips every finished run, and the interrupted one continues from its own last checkpoint (the bundles resume).
Once ``done.json`` is written a fine-tuning run's training checkpoints are removed (its ``model.pt`` stays).
``done.json`` records the run's identity (its bundle, overrides and the pre-trained encoder's SHA-256): a
finished run whose identity differs from what the study now asks for is refused, never reused.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path

from medssl_monai.bundle import bundle_root
from medssl_monai.utils.identity import file_sha256, identity_differences
from medssl_monai.study.config import StudyConfig
from medssl_monai.study.report import RESULT_FIELDS, write_report
from medssl_monai.utils import environment, write_json

__all__ = ["Study", "StudyError", "Run", "run_bundle"]

logger = logging.getLogger(__name__)
DONE = "done.json"
ENVIRONMENT = "environment.json"  # the environments (CPU, packages) a study ran in
FROZEN = ("linear", "knn")


class StudyError(RuntimeError):
    """A bundle run of the study failed; the message names its log."""


@dataclass(frozen=True)
class Run:
    """One evaluation run of the study."""

    arm: str
    task: str
    protocol: str
    fraction: float
    seed: int

    @property
    def folder(self) -> str:
        return f"runs/{self.arm}/{self.task}/{self.protocol}/fraction_{self.fraction:g}/seed_{self.seed}"


def _cli(overrides: dict) -> list[str]:
    """Bundle overrides as ``monai.bundle run`` arguments (fire parses Python literals)."""
    args = []
    for key, value in overrides.items():
        text = value if isinstance(value, str) else repr(value)  # lists, numbers, True/False/None
        args += [f"--{key}", text]
    return args


@contextlib.contextmanager
def _logged(path: Path) -> Iterator[None]:
    """Log records (INFO and up), stdout and stderr (progress bars) of what runs inside go to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    level = root.level
    with open(path, "a", buffering=1) as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        handler = logging.StreamHandler(log)
        handler.setFormatter(logging.Formatter("%(asctime)s - %(name)s - %(levelname)s - %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        try:
            yield
        except Exception:
            log.write(traceback.format_exc())
            raise
        finally:
            root.removeHandler(handler)
            root.setLevel(level)
            _drop_handlers_on(log)


def _drop_handlers_on(stream) -> None:
    """Remove every logging handler writing to ``stream``: libraries that attach a ``StreamHandler(sys.stdout)``
    to a named logger inside a run (MONAI's StatsHandler) would otherwise write to the closed file of the
    first run, with a "Logging error" traceback on every message of each later run."""
    loggers = [logging.getLogger()] + [lg for lg in logging.Logger.manager.loggerDict.values()
                                       if isinstance(lg, logging.Logger)]
    for logger in loggers:
        for h in list(logger.handlers):
            if getattr(h, "stream", None) is stream:
                logger.removeHandler(h)


def _config_paths(bundle: str, config_files: Sequence[str]) -> list[Path]:
    """The paths of ``config_files`` (names in ``bundle``'s ``configs/``), in the order they are merged."""
    return [Path(bundle_root(bundle)) / "configs" / name for name in config_files]


def _parser(bundle: str, overrides: dict, config_files: Sequence[str] = ("train.json",)):
    """MONAI's parser of ``bundle``'s ``config_files`` (merged in order, as ``monai.bundle run --config_file
    "[...]"`` merges them) and metadata with ``overrides`` applied, as ``monai.bundle run`` builds it."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(p) for p in _config_paths(bundle, config_files)])
    parser.read_meta(Path(bundle_root(bundle)) / "configs" / "metadata.json")
    parser.update(overrides)
    return parser


def describe(err: BaseException) -> str:
    """``Type: message`` of the exception that started ``err``'s chain (what MONAI's config evaluation and ignite
    wrap: a full disk, a missing file), then of ``err`` itself where that is another."""
    root, seen = err, {id(err)}
    while (cause := root.__cause__ or root.__context__) is not None and id(cause) not in seen:
        root = cause
        seen.add(id(root))
    text = f"{type(root).__name__}: {root}"
    return text if root is err else f"{text}; raised as {type(err).__name__}: {str(err).strip()}"


def run_bundle(bundle: str, overrides: dict, folder: Path, config_files: Sequence[str] = ("train.json",)) -> float:
    """Run ``bundle``'s ``config_files`` (initialize, run, finalize) with ``overrides`` in this process, logging to
    ``folder/run.log``; seconds taken. A failure is a :class:`StudyError` naming the log."""
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "config.json", {"bundle": bundle, "config_files": list(config_files), "overrides": overrides})
    start = time.perf_counter()
    try:
        with _logged(folder / "run.log"):
            parser = _parser(bundle, overrides, config_files)
            for section in ("initialize", "run", "finalize"):
                if section in parser:
                    parser.get_parsed_content(section)
            del parser
    except Exception as err:
        tail = (folder / "run.log").read_text().strip().splitlines()[-3:]
        raise StudyError(f"{bundle} failed ({describe(err)}); log: {folder / 'run.log'}\n"
                         + "\n".join(tail)) from err
    finally:
        gc.collect()  # engines hold reference cycles: free the run's network, optimiser and data now
    return time.perf_counter() - start


class Study:
    """A study in folder ``out``.

    Args:
        config: what to run.
        out: the study folder (``study.json``, ``environment.json``, ``pretrain/``, ``runs/``, ``features/``,
            ``results.csv``, ``summary.md``, plots).
    """

    def __init__(self, config: StudyConfig, out: str | Path) -> None:
        self.config, self.out = config, Path(out)

    def runs(self) -> list[Run]:
        """Every evaluation run, grouped by method, task and seed (the frozen protocols of a group share one
        feature pass)."""
        c = self.config
        return [Run(arm, task, protocol, float(f), s) for arm in c.arms for task in c.tasks for s in c.seeds_of(task)
                for protocol in c.protocols_of(task) for f in c.fractions]

    def encoder(self, arm: str) -> str | None:
        """The starting weights of ``arm``: none for scratch, the file of an external encoder, or the encoder
        the study pre-trained."""
        if arm == "scratch":
            return None
        if arm in self.config.external:
            return str(self.config.external[arm])
        return str(self.out / "pretrain" / arm / "models" / "encoder.pt")

    def _identity(self, bundle: str, overrides: dict) -> dict:
        """What defines a bundle run of the study: the bundle, the SHA-256 of its config files (a changed default
        is another run), its overrides and the starting weights' hash."""
        files = _config_paths(bundle, self.config.config_files)
        hashes = {"config_sha256": file_sha256(files[0])}  # train.json's, as 2D studies have always recorded it
        hashes.update({f"{p.stem}_sha256": file_sha256(p) for p in files[1:]})  # train_3d_sha256
        identity = json.loads(json.dumps({"bundle": bundle, **hashes, **overrides}))
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
        """The ids of one evaluation run (``protocol`` says which)."""
        folder = self.out / run.folder
        task = {k: v for k, v in self.config.tasks[run.task].items() if k not in ("kind", "seeds")}
        # the study's own ids last: what defines the run (StudyConfig refuses them in the overrides)
        overrides = {**self.config.finetune.get("overrides", {}), **task,
                     "protocol": run.protocol, "ckpt_dir": str(folder / "models"), "log_dir": str(folder / "logs"),
                     "output_dir": str(folder / "eval"), "label_fraction": run.fraction, "seed": run.seed,
                     "pretrained_checkpoint": self.encoder(run.arm) or "none",  # a CLI None would mean "default"
                     # no resumable training state (134 MB a ResNet18 epoch): a run of a few epochs is cheaper
                     # to redo when killed than its checkpoints are to write; the best model.pt is kept
                     "ckpt_interval": 0}
        if self.config.bundle(run.task) == "ct_segmentation":  # which fine-tunes only: no protocol id
            del overrides["protocol"]
        if run.protocol in FROZEN:
            overrides["feature_cache"] = str(self.out / "features")
        return overrides

    def plan(self) -> list[str]:
        """Every bundle run the study would make, one line each (bundle, its overlay, folder, ids), without running
        any."""
        overlay = "".join(f" + {name}" for name in self.config.config_files[1:])
        lines = [f"pretrain {m}: {m}_pretrain{overlay} in {self.out / 'pretrain' / m}: "
                 + " ".join(_cli(self.pretrain_overrides(m))) for m in self.config.methods if m != "scratch"]
        lines += [f"{r.protocol} {r.arm} {r.task} fraction {r.fraction:g} seed {r.seed}: {self.config.bundle(r.task)}"
                  f"{overlay} in {self.out / r.folder}: " + " ".join(_cli(self.finetune_overrides(r)))
                  for r in self.runs()]
        return lines

    def pretrain(self, method: str) -> None:
        folder = self.out / "pretrain" / method
        overrides = self.pretrain_overrides(method)
        identity = self._identity(f"{method}_pretrain", overrides)
        if self._finished(folder, identity) is not None:
            return
        logger.info(f"pre-training {method} in {folder}")
        seconds = run_bundle(f"{method}_pretrain", overrides, folder, self.config.config_files)
        write_json(folder / DONE, {"method": method, "seconds": round(seconds, 1), "encoder": self.encoder(method),
                                   "identity": identity})

    def _row(self, run: Run, seconds: float, identity: dict) -> dict:
        """The results row of a finished run (from its metrics.json), also written as its ``done.json``."""
        folder = self.out / run.folder
        metrics = json.loads((folder / "eval" / "metrics.json").read_text())
        row = {"task": run.task, "method": run.arm, "protocol": run.protocol, "fraction": run.fraction,
               "seed": run.seed, "seconds": round(seconds, 2), "run_dir": run.folder}
        segmentation = self.config.bundle(run.task) == "ct_segmentation"
        for name in ("dice", "hd95") if segmentation else ("auc", "accuracy", "f1", "balanced_accuracy"):
            cell = metrics[name]["mean"] if segmentation else metrics[name]  # over organs, over patients
            row[name], row[f"{name}_low"], row[f"{name}_high"] = cell["value"], cell["ci_low"], cell["ci_high"]
        row["n_test"] = metrics["n_patients" if segmentation else "n"]
        row = {k: row.get(k, "") for k in RESULT_FIELDS}  # the other kind's metrics empty
        write_json(folder / DONE, {**row, "identity": identity})
        return row

    def finetune(self, run: Run) -> dict:
        """One fine-tuning run (or its recorded row when already done)."""
        folder = self.out / run.folder
        overrides = self.finetune_overrides(run)
        bundle = self.config.bundle(run.task)
        identity = self._identity(bundle, overrides)
        done = self._finished(folder, identity)
        if done is not None:
            return {k: v for k, v in done.items() if k != "identity"}
        seconds = run_bundle(bundle, overrides, folder, self.config.config_files)
        return self._row(run, seconds, identity)

    def frozen(self, runs: list[Run]) -> list[dict]:
        """The frozen-protocol runs of one method, task and seed: one parse of the bundle and one feature pass
        (the bundle's ``probe#evaluator``), then each run's protocol and labelled subset."""
        pending, rows = [], {}
        for run in runs:
            overrides = self.finetune_overrides(run)
            identity = self._identity("ct_classification", overrides)
            done = self._finished(self.out / run.folder, identity)
            if done is not None:
                rows[run] = {k: v for k, v in done.items() if k != "identity"}
            else:
                pending.append((run, overrides, identity))
        if pending:
            import monai

            first = pending[0][1]
            group_log = self.out / "runs" / runs[0].arm / runs[0].task / f"features_seed_{runs[0].seed}.log"
            start = time.perf_counter()
            try:
                with _logged(group_log):
                    parser = _parser("ct_classification", first)
                    monai.utils.set_determinism(seed=first["seed"])  # as the bundle's initialize, before the network
                    parser.get_parsed_content("load_pretrained")
                    probe = parser.get_parsed_content("probe#evaluator")
                    probe.features()
            except Exception as err:
                raise StudyError(f"features of {runs[0].arm} on {runs[0].task} failed ({describe(err)}); "
                                 f"log: {group_log}") from err
            shared = (time.perf_counter() - start) / len(pending)  # the feature pass, shared by the runs
            for run, overrides, identity in pending:
                folder = self.out / run.folder
                folder.mkdir(parents=True, exist_ok=True)
                write_json(folder / "config.json", {"bundle": "ct_classification", "overrides": overrides})
                start = time.perf_counter()
                try:
                    with _logged(folder / "run.log"):
                        probe.evaluate(run.protocol, run.fraction, run.seed, overrides["output_dir"])
                except Exception as err:
                    raise StudyError(f"{run.protocol} of {run.arm} on {run.task} failed ({describe(err)}); "
                                     f"log: {folder / 'run.log'}") from err
                rows[run] = self._row(run, shared + time.perf_counter() - start, identity)
        return [rows[run] for run in runs]

    def _record_environment(self) -> None:
        """Add this invocation's environment to ``environment.json`` (every distinct one the study ran in): the
        numbers move with CPUs and package versions, so a study continued elsewhere says so."""
        path = self.out / ENVIRONMENT
        seen = json.loads(path.read_text()) if path.is_file() else []
        current = environment()
        if current not in seen:
            if seen:
                logger.warning(f"this study continues in another environment than it ran in before (all are in "
                               f"{path}): its results mix them")
            write_json(path, seen + [current])

    def run(self, progress: bool = True) -> list[dict]:
        """Everything not yet done, then ``results.csv``, ``summary.md`` and the plots; returns the rows."""
        self.out.mkdir(parents=True, exist_ok=True)
        write_json(self.out / "study.json", self.config.to_dict())
        self._record_environment()
        for method in self.config.methods:
            if method != "scratch":
                self.pretrain(method)
        runs, rows = self.runs(), []

        def report(run: Run, row: dict, fresh: bool) -> None:
            rows.append(row)
            if progress:
                state = f"done in {row['seconds']:.1f} s" if fresh else "already done"
                score = f"AUC {row['auc']:.3f}" if row["auc"] != "" else f"mean Dice {row['dice']:.3f}"
                print(f"[{len(rows)}/{len(runs)}] {run.arm} {run.task} {run.protocol} fraction {run.fraction:g} "
                      f"seed {run.seed}: {score} ({state})", flush=True)

        for _, group in groupby(runs, key=lambda r: (r.arm, r.task, r.seed)):
            group = list(group)
            fresh = {r for r in group if not (self.out / r.folder / DONE).is_file()}
            for run in (r for r in group if r.protocol not in FROZEN):
                report(run, self.finetune(run), run in fresh)
            frozen = [r for r in group if r.protocol in FROZEN]
            for run, row in zip(frozen, self.frozen(frozen) if frozen else []):
                report(run, row, run in fresh)
        write_report(rows, self.out)
        return rows
