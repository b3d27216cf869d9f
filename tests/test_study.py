"""The label-fraction study end to end on the smoke preset: outputs, resuming, and the summary's arithmetic."""

import csv
import json
import statistics

from pathlib import Path

import pytest
import torch
import yaml

from medssl_monai.study import Study, load_study_config


@pytest.fixture(scope="module")
def study(demo_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    (root / "study.yaml").write_text(yaml.safe_dump({
        "preset": "smoke",  # scratch and spark, fractions 1.0 and 0.5, seeds 0 and 1, three protocols, 64 px
        "tasks": {"covid": {"dataset_dir": str(demo_dir / "covid_ct"), "class_names": ["NonCOVID", "COVID"],
                            "window": "lung", "encoding": "hu16", "layout": "class_folders",
                            "patient_pattern": "demo_(\\d+)_"}},
        "pretrain": {"dataset_dir": str(demo_dir)},
        "finetune": {"overrides": {"batch_size": 8, "num_workers": 0}},
    }))
    config = load_study_config(root / "study.yaml")
    rows = Study(config, root / "out").run(progress=False)
    return root / "out", config, rows


def _run_dir(out, method, protocol, fraction, seed):
    return out / "runs" / method / "covid" / protocol / f"fraction_{fraction}" / f"seed_{seed}"


def test_smoke_study_writes_every_output(study):
    out, config, rows = study
    assert config.pretrain["overrides"]["max_epochs"] == 1 and config.finetune["overrides"]["batch_size"] == 8
    assert len(rows) == 2 * 3 * 2 * 2 and {r["method"] for r in rows} == {"scratch", "spark"}
    assert {r["protocol"] for r in rows} == {"finetune", "linear", "knn"}
    for name in ("results.csv", "summary.md", "summary.json", "auc_vs_fraction.png", "difference_vs_scratch.png",
                 "study.json"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "pretrain" / "spark" / "models" / "encoder.pt").is_file()
    (environment,) = json.loads((out / "environment.json").read_text())  # one invocation so far, one environment
    assert environment["packages"]["torch"].startswith(torch.__version__.split("+")[0]) and environment["cpu"]
    spark_run = _run_dir(out, "spark", "finetune", 0.5, 0)
    overrides = json.loads((spark_run / "config.json").read_text())["overrides"]
    assert overrides["label_fraction"] == 0.5 and overrides["pretrained_checkpoint"].endswith("spark/models/encoder.pt")
    assert overrides["protocol"] == "finetune"
    assert "loaded 120 backbone tensors" in (spark_run / "run.log").read_text()
    assert (spark_run / "eval" / "metrics.json").is_file() and (spark_run / "eval" / "predictions.csv").is_file()
    scratch_log = (_run_dir(out, "scratch", "finetune", 1, 0) / "run.log").read_text()
    assert "trained from scratch" in scratch_log
    for protocol in ("linear", "knn"):
        metrics = json.loads((_run_dir(out, "spark", protocol, 0.5, 1) / "eval" / "metrics.json").read_text())
        assert metrics["protocol"] == protocol and metrics["resampled"] == "patients"
        # one seed, one labelled subset, whatever the method
        other = json.loads((_run_dir(out, "scratch", protocol, 0.5, 1) / "eval" / "metrics.json").read_text())
        assert metrics["n_train"] == other["n_train"] < json.loads(
            (_run_dir(out, "spark", protocol, 1, 1) / "eval" / "metrics.json").read_text())["n_train"]
    assert json.loads((_run_dir(out, "spark", "linear", 1, 0) / "eval" / "metrics.json").read_text())["C"] > 0


def test_summary_is_recomputed_from_the_predictions(study):
    """Means, paired differences and their bookkeeping, against scikit-learn on each run's predictions.csv."""
    from sklearn.metrics import roc_auc_score

    out, _, _ = study
    with open(out / "results.csv") as f:
        table = list(csv.DictReader(f))
    summary = json.loads((out / "summary.json").read_text())
    markdown = (out / "summary.md").read_text()

    def auc(row):
        with open(out / row["run_dir"] / "eval" / "predictions.csv") as f:
            preds = list(csv.DictReader(f))
        return roc_auc_score([int(p["label"]) for p in preds], [float(p["prob_COVID"]) for p in preds])

    for protocol in ("finetune", "linear", "knn"):
        for fraction in ("1", "0.5"):
            cell = summary["covid"][protocol][fraction]
            per_seed = {}
            for method in ("scratch", "spark"):
                members = sorted((r for r in table if r["method"] == method and r["protocol"] == protocol
                                  and float(r["fraction"]) == float(fraction)), key=lambda r: r["seed"])
                per_seed[method] = [auc(r) for r in members]
                assert per_seed[method] == pytest.approx([float(r["auc"]) for r in members], abs=1e-5)
                entry = cell["methods"][method]
                assert entry["mean"] == pytest.approx(statistics.mean(per_seed[method]), abs=1e-5)
                assert entry["ci_low"] <= entry["mean"] <= entry["ci_high"] and entry["n_seeds"] == 2
                assert f"{entry['mean']:.3f} [{entry['ci_low']:.3f}, {entry['ci_high']:.3f}]" in markdown
            paired = cell["vs_scratch"]["spark"]
            difference = statistics.mean(a - b for a, b in zip(per_seed["spark"], per_seed["scratch"]))
            assert paired["difference"] == pytest.approx(difference, abs=1e-5)
            assert paired["ci_low"] <= paired["difference"] <= paired["ci_high"]
            assert 0 < paired["p_value"] <= paired["p_holm"] <= 1 and paired["n_seeds"] == 2
            assert f"{paired['difference']:+.3f} [{paired['ci_low']:+.3f}, {paired['ci_high']:+.3f}]" in markdown
    assert "## covid: knn" in markdown and "random-init encoder (frozen)" in markdown and "Not resolved" in markdown


@pytest.mark.parametrize("method", ["spark", "scratch"])  # scratch: the random encoder's initialisation too
def test_a_frozen_run_of_the_study_is_the_bundle_run_it_records(study, tmp_path, method):
    """The study evaluates frozen protocols in process from shared features; ``python -m monai.bundle run``
    with the overrides the run's config.json records gives the same predictions."""
    import subprocess
    import sys

    from medssl_monai.study.runner import _cli

    out, _, _ = study
    run = _run_dir(out, method, "knn", 0.5, 1)
    overrides = json.loads((run / "config.json").read_text())["overrides"]
    overrides.update(output_dir=str(tmp_path / "eval"), feature_cache="none", ckpt_dir=str(tmp_path / "m"))
    config = Path(__file__).parents[1] / "bundles" / "ct_classification" / "configs" / "train.json"
    result = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file", str(config),
                             *_cli(overrides)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "eval" / "predictions.csv").read_text() == (run / "eval" / "predictions.csv").read_text()
    assert not list((tmp_path / "m").glob("**/*.pt"))  # nothing trained


def test_a_stopped_study_continues_without_redoing_finished_runs(study):
    out, config, _ = study
    finished = _run_dir(out, "scratch", "finetune", 1, 0)
    stopped = _run_dir(out, "spark", "finetune", 0.5, 0)
    frozen = _run_dir(out, "spark", "linear", 0.5, 0)
    (stopped / "done.json").unlink()  # as if killed before the run finished
    (frozen / "done.json").unlink()
    log_before = (finished / "run.log").read_text()
    done_before = (finished / "done.json").stat().st_mtime_ns
    pretrain_before = (out / "pretrain" / "spark" / "run.log").read_text()
    predictions_before = (frozen / "eval" / "predictions.csv").read_text()
    metrics_before = json.loads((stopped / "eval" / "metrics.json").read_text())
    # a finished run keeps its best model, not its training checkpoints (134 MB each at ResNet18)
    assert (stopped / "models" / "model.pt").is_file() and not list((stopped / "models").glob("checkpoint_*"))
    rows = Study(config, out).run(progress=False)
    assert len(rows) == 24 and (stopped / "done.json").is_file() and (frozen / "done.json").is_file()
    assert (finished / "run.log").read_text() == log_before and (finished / "done.json").stat().st_mtime_ns == done_before
    assert (out / "pretrain" / "spark" / "run.log").read_text() == pretrain_before  # pre-trained once
    # the unfinished run ran again (its checkpoints were gone) and gave the same result: seeded, in process
    assert (stopped / "run.log").read_text().count("loaded 120 backbone tensors") == 2
    metrics_after = json.loads((stopped / "eval" / "metrics.json").read_text())
    assert metrics_after["auc"] == metrics_before["auc"] and metrics_after["confusion_matrix"] == \
        metrics_before["confusion_matrix"]
    assert (frozen / "eval" / "predictions.csv").read_text() == predictions_before  # from the cached features


def test_finished_runs_with_other_settings_are_refused_not_reused(study):
    import dataclasses

    from medssl_monai.study import StudyError

    out, config, _ = study
    changed = dataclasses.replace(config, finetune={"overrides": {**config.finetune["overrides"], "lr": 0.001}})
    with pytest.raises(StudyError, match=r"finetune/fraction_1/seed_0 was finished with other settings: lr: "
                                         r"recorded '<not recorded>', this run 0.001\. Give the study another --out"):
        Study(changed, out).run(progress=False)
    done = json.loads((_run_dir(out, "spark", "finetune", 1, 0) / "done.json").read_text())
    assert done["identity"]["pretrained_sha256"] and done["identity"]["label_fraction"] == 1.0
    from medssl_monai.utils import file_sha256  # a changed bundle default is another run too

    config = Path(__file__).parents[1] / "bundles" / "ct_classification" / "configs" / "train.json"
    assert done["identity"]["config_sha256"] == file_sha256(config)


def test_bad_study_configs_fail_clearly(tmp_path):
    (tmp_path / "owned.yaml").write_text("finetune: {overrides: {seed: 3, image_size: 64}}\n")
    with pytest.raises(ValueError, match="finetune.overrides sets seed, which the study sets for each run"):
        load_study_config(tmp_path / "owned.yaml", demo_dir=str(tmp_path))
    (tmp_path / "bad.yaml").write_text("methods: [scratch, simclr]\n")
    with pytest.raises(ValueError, match=r"unknown methods \['simclr'\]"):
        load_study_config(tmp_path / "bad.yaml", demo_dir=str(tmp_path))
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        load_study_config(preset="huge")
    (tmp_path / "typo.yaml").write_text("fractoins: [0.5]\n")
    with pytest.raises(ValueError, match=r"unknown study fields \['fractoins'\]"):
        load_study_config(tmp_path / "typo.yaml", demo_dir=str(tmp_path))


def test_a_failed_bundle_run_names_its_first_cause_and_its_log(tmp_path):
    """MONAI's config evaluation wraps what went wrong ("Failed to instantiate component ..."): the study's error
    leads with the exception that started it."""
    from medssl_monai.study import StudyError
    from medssl_monai.study.runner import run_bundle

    with pytest.raises(StudyError, match=r"spark_pretrain failed \(FileNotFoundError: datalist not found: "
                                         r".*nowhere.datalist\.json; raised as RuntimeError: Failed to ") as error:
        run_bundle("spark_pretrain", {"dataset_dir": str(tmp_path / "nowhere"), "backbone": "resnet18"},
                   tmp_path / "run")
    assert f"log: {tmp_path / 'run' / 'run.log'}" in str(error.value)


def test_the_shipped_example_config_is_the_demo_preset(tmp_path):
    from pathlib import Path

    example = load_study_config(Path(__file__).parents[1] / "studies" / "example.yaml", demo_dir=str(tmp_path))
    demo = load_study_config(preset="demo", demo_dir=str(tmp_path))
    assert example == demo and example.tasks["covid"]["dataset_dir"] == f"{tmp_path}/covid_ct"
    assert example.tasks["organs"]["dataset_dir"] == f"{tmp_path}/organ_mnist.npz"
    # methods x fractions x (classification tasks x protocols x seeds + the segmentation task's one seed)
    assert len(Study(example, tmp_path / "s").runs()) == 5 * 5 * (2 * 3 * 3 + 1)


# the reference study's table (shared/reference/paper_protocol.md), row by row, as the resolved ids of each
# bundle under the paper preset: input and crops, batch and length, optimiser, lr (peak = base_lr x batch / 256)
# and warm-up, weight-decay schedule, method settings, augmentations
_CONTRASTIVE_AUG = {"size": 224, "scale": [0.2, 1.0], "rotation": 180.0, "rotation_prob": 0.5, "flips": True,
                    "blur_sigma": [0.1, 2.0], "blur_prob": 0.5, "noise_prob": 0.5}
_SWAV_AUG = {"intensity_prob": 0.8, "blur_prob": 0.5, "flips": False, "rotation_prob": 0.0}
PROTOCOL = {
    "spark": {"image_size": 224, "in_channels": 3, "train#preprocessing#transforms#0#scale": [0.67, 1.0],
              "train#preprocessing#transforms#1#prob": 0.5, "batch_size": 32, "max_epochs": 1600,
              "optimizer#name": "lamb", "optimizer#betas": [0.9, 0.95], "grad_clip": 5.0, "optimizer#lr": 2.5e-5,
              "warmup_epochs": 40, "train#schedule#final_lr_ratio": 0.001, "weight_decay": [0.04, 0.2],
              "mask_ratio": 0.6},
    "moco": {"image_size": 224, "in_channels": 3, "batch_size": 128, "max_epochs": 800, "optimizer#name": "sgd",
             "optimizer#momentum": 0.9, "weight_decay": [1e-4, 1e-4], "optimizer#lr": 0.015, "warmup_epochs": 0,
             "train#schedule#final_lr_ratio": 0.0, "queue_size": 65536, "temperature": 0.07, "momentum": 0.999,
             "augmentation": _CONTRASTIVE_AUG},
    "byol": {"image_size": 224, "in_channels": 3, "batch_size": 64, "max_steps": 300000, "optimizer#name": "adam",
             "weight_decay": [1.5e-6, 1.5e-6], "optimizer#lr": 1e-3, "warmup_epochs": 10,
             "train#schedule#final_lr_ratio": 0.0, "tau": [0.996, 1.0], "augmentation": _CONTRASTIVE_AUG},
    "swav": {"image_size": 224, "in_channels": 3, "batch_size": 128, "max_epochs": 800, "optimizer#name": "lars",
             "weight_decay": [1e-6, 1e-6], "optimizer#lr": 0.15, "warmup_epochs": 10,
             "train#schedule#final_lr_ratio": 0.0, "num_global_views": 2, "num_local_views": 6, "local_size": 96,
             "global_augmentation": {**_SWAV_AUG, "size": 224, "scale": [0.9, 1.0]},
             "local_augmentation": {**_SWAV_AUG, "size": 96, "scale": [0.1, 0.33]}, "num_prototypes": 500,
             "temperature": 0.1, "sinkhorn_epsilon": 0.05, "sinkhorn_iterations": 3,
             "freeze_prototypes_iterations": "$len(@train#dataloader)"},
}
# the heads of the table, as (in, out) of each linear layer
HEADS = {"moco": ("head", [(2048, 2048), (2048, 128)]), "byol": ("projector", [(2048, 4096), (4096, 256)]),
         "swav": ("head", [(2048, 2048), (2048, 128)])}


def _resolved(bundle: str, overrides: dict, key: str):
    """An id of a bundle's train.json under ``overrides``: a value, an evaluated expression, or for a
    ``ct_augmentation`` component its arguments with the function's defaults filled in."""
    import inspect

    from monai.bundle import ConfigParser

    from medssl_monai.data import ct_augmentation

    parser = ConfigParser()
    parser.read_config(Path(__file__).parents[1] / "bundles" / bundle / "configs" / "train.json")
    parser.update(overrides)
    raw = parser[key]
    if isinstance(raw, dict) and raw.get("_target_") == "medssl_monai.data.ct_augmentation":
        defaults = {k: v.default for k, v in inspect.signature(ct_augmentation).parameters.items()}
        args = {k: parser.get_parsed_content(f"{key}#{k}") for k in raw if k != "_target_"}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in {**defaults, **args}.items()}
    if isinstance(raw, str) and "@train#" in raw:  # needs the data: compared as written
        return raw
    return parser.get_parsed_content(key)


def _pick(resolved: dict, expected: dict) -> dict:
    """The entries of ``resolved`` that ``expected`` names, floats to 12 digits (2e-4 x 32 / 256 is 2.5e-5)."""
    def tidy(v):
        return float(f"{v:.12g}") if isinstance(v, float) else [tidy(x) for x in v] if isinstance(v, list) else v

    return {k: ({i: tidy(resolved[k][i]) for i in v} if isinstance(v, dict) else tidy(resolved[k]))
            for k, v in expected.items()}


DOWNSTREAM = {"backbone": "resnet50", "lr": 1e-4, "weight_decay": 5e-4, "batch_size": 64, "max_epochs": 70,
              "freeze_epochs": 10, "image_size": 224, "in_channels": 3}


def test_the_paper_plan_holds_the_protocol_and_runs_nothing(tmp_path, capsys):
    from medssl_monai.cli import main

    config = load_study_config(preset="paper")
    study = Study(config, tmp_path / "paper")
    for method, row in PROTOCOL.items():
        overrides = study.pretrain_overrides(method)
        resolved = {key: _resolved(f"{method}_pretrain", overrides, key) for key in row}
        assert _pick(resolved, row) == row, method
        assert overrides["cache"] == "disk" and overrides["window"] == "full"  # streamed; HU, no min-max
    for method, (name, shapes) in HEADS.items():
        from monai.bundle import ConfigParser

        parser = ConfigParser()
        parser.read_config(Path(__file__).parents[1] / "bundles" / f"{method}_pretrain" / "configs" / "train.json")
        parser.update(study.pretrain_overrides(method))
        for needs_data in ("network_def#total_iterations", "network_def#dataset_size",
                           "freeze_prototypes_iterations"):  # schedule lengths, not the heads
            if needs_data in parser:
                parser[needs_data] = 1000
        layers = [m for m in getattr(parser.get_parsed_content("network_def"), name).modules()
                  if isinstance(m, torch.nn.Linear)]
        assert [(m.in_features, m.out_features) for m in layers] == shapes, method
    for run in study.runs():
        overrides = study.finetune_overrides(run)
        assert {k: overrides[k] for k in DOWNSTREAM} == DOWNSTREAM
    assert main(["study", "--preset", "paper", "--plan", "--out", str(tmp_path / "paper")]) == 0
    out = capsys.readouterr().out
    assert "pretrain spark: spark_pretrain in" in out and "--max_epochs 1600 --base_lr 0.0002 --warmup_epochs 40" in out
    assert "--temperature 0.07 --queue_size 65536" in out and "--max_epochs 70 --freeze_epochs 10" in out
    assert "linear spark organs fraction 0.05 seed 2: ct_classification in" in out and "--protocol knn" in out
    assert f"{4 + 5 * 2 * 3 * 5 * 3} bundle runs planned" in out and not (tmp_path / "paper").exists()


def test_a_run_log_leaves_no_handler_on_its_closed_file(tmp_path, capsys):
    """A library logger given a StreamHandler(sys.stdout) inside one run (as MONAI's StatsHandler does) must not
    write into that run's closed log during the next run."""
    import logging
    import sys

    from medssl_monai.study.runner import _logged

    with _logged(tmp_path / "one.log"):
        library = logging.getLogger("medssl_test_library")
        library.addHandler(logging.StreamHandler(sys.stdout))
        library.warning("first run")
    with _logged(tmp_path / "two.log"):
        library.warning("second run")
    assert "Logging error" not in (tmp_path / "two.log").read_text() + capsys.readouterr().err
    assert "second run" in (tmp_path / "two.log").read_text() and "first run" in (tmp_path / "one.log").read_text()
    assert not library.handlers


def test_a_segmentation_task_is_fine_tuned_and_compared_by_patient_dice(study, demo_dir):
    """The smoke study again with an organ-segmentation task of its own seed, resampled to 6 mm pixels: the
    classification runs are reused, the new task is fine-tuned by ct_segmentation only (no frozen protocols) with
    seed 1 alone, and its summary is the paired per-patient Dice."""
    out, config, _ = study
    from medssl_monai.study.report import read_patient_dice

    tasks = {**config.tasks, "organ_seg": {"kind": "segmentation", "dataset_dir": str(demo_dir), "image_size": 64,
                                           "spacing": 6.0, "samples_per_epoch": 8, "seeds": [1]}}
    rows = Study(type(config)(**{**config.to_dict(), "tasks": tasks}), out).run(progress=False)
    seg = [r for r in rows if r["task"] == "organ_seg"]
    assert len(rows) == 2 * 3 * 2 * 2 + len(seg) and len(seg) == 2 * 2  # methods x fractions, one seed
    assert {r["seed"] for r in seg} == {1}
    assert {r["protocol"] for r in seg} == {"finetune"} and all(r["auc"] == "" and 0 <= r["dice"] <= 1 for r in seg)
    run = out / "runs" / "spark" / "organ_seg" / "finetune" / "fraction_0.5" / "seed_1"
    overrides = json.loads((run / "config.json").read_text())
    assert overrides["bundle"] == "ct_segmentation" and "protocol" not in overrides["overrides"]
    assert overrides["overrides"]["spacing"] == 6.0 and "seeds" not in overrides["overrides"]
    assert "loaded 120 backbone tensors" in (run / "run.log").read_text()
    cell = json.loads((out / "summary.json").read_text())["organ_seg"]["finetune"]["0.5"]
    dice = {m: statistics.mean(statistics.mean(read_patient_dice(
        out / "runs" / m / "organ_seg" / "finetune" / "fraction_0.5" / f"seed_{s}" / "eval" / "per_patient.csv").values())
        for s in (1,)) for m in ("spark", "scratch")}
    assert cell["methods"]["spark"]["mean"] == pytest.approx(dice["spark"])
    assert cell["vs_scratch"]["spark"]["difference"] == pytest.approx(dice["spark"] - dice["scratch"])
    assert 0 < cell["vs_scratch"]["spark"]["p_value"] <= 1
    summary = (out / "summary.md").read_text()
    assert "## organ_seg: finetune (test mean Dice, 1 seed)" in summary and "## covid: knn (test ROC AUC, 2 seeds)" in summary
    with open(out / "results.csv", newline="") as f:
        assert sum(r["task"] == "organ_seg" for r in csv.DictReader(f)) == 4


def test_a_3d_study_composes_the_overlays_and_compares_by_patient_dice(demo_dir, tmp_path):
    """The demo_3d preset at its smallest (one pre-training step, one fine-tuning step, one fraction): every run
    composes its bundle's train_3d.json, records it, exports a 3D encoder the 3D U-Net starts from, and the
    summary compares 3D SparK with 3D scratch by per-patient Dice; a classification task is refused in 3D."""
    from medssl_monai.study.runner import Run, _cli

    config = load_study_config(preset="demo_3d", demo_dir=str(demo_dir))
    assert config.config_files == ["train.json", "train_3d.json"]
    assert set(config.methods) == {"scratch", "spark", "moco"}
    small = {**config.to_dict(), "methods": ["scratch", "spark"], "fractions": [1.0]}
    small["pretrain"]["overrides"].update(samples_per_epoch=2, num_workers=0)
    small["tasks"]["organ_seg"].update(samples_per_epoch=2)
    config = type(config)(**small)
    study = Study(config, tmp_path / "out")
    assert all(" + train_3d.json in " in line for line in study.plan())
    rows = study.run(progress=False)
    assert [(r["method"], r["fraction"]) for r in rows] == [("scratch", 1.0), ("spark", 1.0)]
    assert all(0 <= r["dice"] <= 1 and r["auc"] == "" for r in rows)
    recorded = json.loads((tmp_path / "out" / "pretrain" / "spark" / "config.json").read_text())
    assert recorded["config_files"] == ["train.json", "train_3d.json"]
    encoder = torch.load(tmp_path / "out" / "pretrain" / "spark" / "models" / "encoder.pt", weights_only=True)
    assert encoder["conv1.weight"].shape == (64, 1, 7, 7, 7)  # MONAI's 3D ResNet18 stem
    run = tmp_path / "out" / Run("spark", "organ_seg", "finetune", 1.0, 0).folder
    settings = json.loads((run / "models" / "model.json").read_text())["settings"]
    assert settings["spatial_dims"] == 3 and settings["patch_size"] == [32, 32, 16]
    assert "--patch_size [32, 32, 16]" in " ".join(_cli(json.loads((run / "config.json").read_text())["overrides"]))
    assert "## organ_seg: finetune (test mean Dice, 1 seed)" in (tmp_path / "out" / "summary.md").read_text()
    # a finished 3D run is another run than a 2D one with the same ids: the overlay's hash is in its identity
    assert "train_3d_sha256" in json.loads((run / "done.json").read_text())["identity"]
    with pytest.raises(ValueError, match="3D study .* segmentation tasks only"):
        type(config)(**{**small, "tasks": {"covid": {"dataset_dir": "x", "class_names": ["a", "b"]}}})
