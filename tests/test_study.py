"""The label-fraction study end to end on the smoke preset: outputs, resuming, and the summary's arithmetic."""

import csv
import json
import statistics

import pytest
import yaml

from medssl_monai.study import Study, load_study_config


@pytest.fixture(scope="module")
def study(demo_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    (root / "study.yaml").write_text(yaml.safe_dump({
        "preset": "smoke",  # scratch and spark, fractions 1.0 and 0.5, seed 0, ResNet18 at 64 px
        "tasks": {"covid": {"dataset_dir": str(demo_dir / "covid_ct"), "class_names": ["NonCOVID", "COVID"],
                            "window": "lung", "encoding": "hu16", "layout": "class_folders"}},
        "pretrain": {"dataset_dir": str(demo_dir)},
        "finetune": {"overrides": {"batch_size": 8, "num_workers": 0}},
    }))
    config = load_study_config(root / "study.yaml")
    rows = Study(config, root / "out").run(progress=False)
    return root / "out", config, rows


def test_smoke_study_writes_every_output(study):
    out, config, rows = study
    assert config.pretrain["overrides"]["max_epochs"] == 1 and config.finetune["overrides"]["batch_size"] == 8
    assert len(rows) == 4 and {r["method"] for r in rows} == {"scratch", "spark"}
    for name in ("results.csv", "summary.md", "summary.json", "auc_vs_fraction.png", "robustness.png", "study.json"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "pretrain" / "spark" / "models" / "encoder.pt").is_file()
    spark_run = out / "runs" / "spark" / "covid" / "fraction_0.5" / "seed_0"
    overrides = json.loads((spark_run / "config.json").read_text())["overrides"]
    assert overrides["label_fraction"] == 0.5 and overrides["pretrained_checkpoint"].endswith("spark/models/encoder.pt")
    assert "loaded 120 backbone tensors" in (spark_run / "run.log").read_text()
    assert (spark_run / "eval" / "metrics.json").is_file()
    scratch_log = (out / "runs" / "scratch" / "covid" / "fraction_1" / "seed_0" / "run.log").read_text()
    assert "trained from scratch" in scratch_log


def test_summary_is_the_aggregation_of_the_csv(study):
    out, _, _ = study
    with open(out / "results.csv") as f:
        table = list(csv.DictReader(f))
    summary = json.loads((out / "summary.json").read_text())
    markdown = (out / "summary.md").read_text()
    for method in ("scratch", "spark"):
        for fraction in ("1", "0.5"):
            members = [r for r in table if r["method"] == method and float(r["fraction"]) == float(fraction)]
            for metric in ("auc", "accuracy", "f1"):
                mean = statistics.mean(float(r[metric]) for r in members)
                cell = summary["covid"][metric][method][fraction]
                assert cell["mean"] == pytest.approx(mean) and cell["n"] == len(members)
                assert f"{mean:.3f} +- 0.000" in markdown


def test_a_stopped_study_continues_without_redoing_finished_runs(study):
    out, config, _ = study
    finished = out / "runs" / "scratch" / "covid" / "fraction_1" / "seed_0"
    stopped = out / "runs" / "spark" / "covid" / "fraction_0.5" / "seed_0"
    (stopped / "done.json").unlink()  # as if killed before the run finished
    log_before = (finished / "run.log").read_text()
    done_before = (finished / "done.json").stat().st_mtime_ns
    pretrain_before = (out / "pretrain" / "spark" / "run.log").read_text()
    rows = Study(config, out).run(progress=False)
    assert len(rows) == 4 and (stopped / "done.json").is_file()
    assert (finished / "run.log").read_text() == log_before and (finished / "done.json").stat().st_mtime_ns == done_before
    assert (out / "pretrain" / "spark" / "run.log").read_text() == pretrain_before  # pre-trained once
    # the bundle found its own last checkpoint (the run had ended before done.json) and did not train again
    assert "this run is already finished" in (stopped / "run.log").read_text()


def test_finished_runs_with_other_settings_are_refused_not_reused(study):
    import dataclasses

    from medssl_monai.study import StudyError

    out, config, _ = study
    changed = dataclasses.replace(config, finetune={"overrides": {**config.finetune["overrides"], "lr": 0.001}})
    with pytest.raises(StudyError, match=r"fraction_1/seed_0 was finished with other settings: lr: recorded "
                                         r"'<not recorded>', this run 0.001\. Give the study another --out"):
        Study(changed, out).run(progress=False)
    done = json.loads((out / "runs" / "spark" / "covid" / "fraction_1" / "seed_0" / "done.json").read_text())
    assert done["identity"]["pretrained_sha256"] and done["identity"]["label_fraction"] == 1.0


def test_bad_study_configs_fail_clearly(tmp_path):
    (tmp_path / "bad.yaml").write_text("methods: [scratch, simclr]\n")
    with pytest.raises(ValueError, match=r"unknown methods \['simclr'\]"):
        load_study_config(tmp_path / "bad.yaml", demo_dir=str(tmp_path))
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        load_study_config(preset="huge")
    (tmp_path / "typo.yaml").write_text("fractoins: [0.5]\n")
    with pytest.raises(ValueError, match=r"unknown study fields \['fractoins'\]"):
        load_study_config(tmp_path / "typo.yaml", demo_dir=str(tmp_path))


def test_the_shipped_example_config_is_the_demo_preset(tmp_path):
    from pathlib import Path

    example = load_study_config(Path(__file__).parents[1] / "studies" / "example.yaml", demo_dir=str(tmp_path))
    demo = load_study_config(preset="demo", demo_dir=str(tmp_path))
    assert example == demo and example.tasks["covid"]["dataset_dir"] == f"{tmp_path}/covid_ct"
    assert len(Study(example, tmp_path / "s").runs()) == 5 * 5 * 3


# the reference study's table (shared/reference/paper_protocol.md), as the bundle ids that hold each value:
# (batch, epochs, lr per 256 images [peak lr = base_lr x batch / 256], warm-up epochs, method settings)
PAPER = {
    "spark": {"batch_size": 32, "max_epochs": 1600, "base_lr": 2e-4, "warmup_epochs": 40},
    "moco": {"batch_size": 128, "max_epochs": 800, "base_lr": 0.03, "temperature": 0.07, "queue_size": 65536,
             "momentum": 0.999},  # lr 0.015 at batch 128
    "byol": {"batch_size": 64, "base_lr": 0.004, "warmup_epochs": 10, "tau": [0.996, 1.0]},  # lr 1e-3 at 64
    "swav": {"batch_size": 128, "max_epochs": 800, "base_lr": 0.3, "warmup_epochs": 10, "local_size": 96,
             "num_prototypes": 500, "temperature": 0.1},  # lr 0.15 at batch 128
}
DOWNSTREAM = {"backbone": "resnet50", "lr": 1e-4, "weight_decay": 5e-4, "batch_size": 64, "max_epochs": 70,
              "freeze_epochs": 10, "image_size": 224, "in_channels": 3}


def test_the_paper_plan_holds_the_protocol_and_runs_nothing(tmp_path, capsys):
    from medssl_monai.cli import main

    config = load_study_config(preset="paper")
    study = Study(config, tmp_path / "paper")
    for method, settings in PAPER.items():
        overrides = study.pretrain_overrides(method)
        assert {k: overrides[k] for k in settings} == settings, method
        assert overrides["image_size"] == 224 and overrides["in_channels"] == 3
    for run in study.runs():
        overrides = study.finetune_overrides(run)
        assert {k: overrides[k] for k in DOWNSTREAM} == DOWNSTREAM
    assert main(["study", "--preset", "paper", "--plan", "--out", str(tmp_path / "paper")]) == 0
    out = capsys.readouterr().out
    assert "pretrain spark: spark_pretrain in" in out and "--max_epochs 1600 --base_lr 0.0002 --warmup_epochs 40" in out
    assert "--temperature 0.07 --queue_size 65536" in out and "--max_epochs 70 --freeze_epochs 10" in out
    assert f"{4 + 5 * 2 * 5 * 3} bundle runs planned" in out and not (tmp_path / "paper").exists()
