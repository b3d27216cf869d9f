"""What a label-fraction study runs: methods, downstream tasks, training fractions, seeds, and the bundle
overrides of its pre-training and fine-tuning runs. Presets ``smoke``, ``demo`` and ``paper``; a YAML file
overrides any field of the preset it names (``preset: demo``) or of ``demo``."""

from __future__ import annotations

import copy
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from medssl_monai.data.demo import COVID_CLASSES, ORGAN_CLASSES
from medssl_monai.evaluation.probes import PROTOCOLS

__all__ = ["METHODS", "PRESETS", "TASK_BUNDLES", "StudyConfig", "load_study_config"]

METHODS = ("scratch", "spark", "moco", "byol", "swav")
# a task's ``kind`` (default classification) and the bundle that fine-tunes and tests on it
TASK_BUNDLES = {"classification": "ct_classification", "segmentation": "ct_segmentation"}

_DEMO_TASK = {"dataset_dir": "{demo}/covid_ct", "layout": "class_folders", "encoding": "hu16", "window": "lung",
              "class_names": list(COVID_CLASSES), "patient_pattern": "demo_(\\d+)_"}
_DEMO_ORGANS = {"dataset_dir": "{demo}/organ_mnist.npz", "layout": "medmnist", "encoding": "uint8",
                "class_names": list(ORGAN_CLASSES)}
# organ segmentation of the pool's validation and test scans (9 organs, 11 test patients), fine-tuned from the
# 90 training scans' label maps at the given share of patients
_DEMO_ORGAN_SEG = {"kind": "segmentation", "dataset_dir": "{demo}", "window": "lung"}
PRETRAIN_STEPS, FINETUNE_STEPS = 800, 300  # of the demo_3d preset, batches of 2 patches

PRESETS: dict[str, dict] = {
    # the tests' study: two methods, two fractions, two seeds, the three protocols, ResNet18 at 64 px
    "smoke": {
        "methods": ["scratch", "spark"], "fractions": [1.0, 0.5], "seeds": [0, 1], "protocols": list(PROTOCOLS),
        "tasks": {"covid": _DEMO_TASK},
        "pretrain": {"dataset_dir": "{demo}", "overrides": {"max_epochs": 1, "backbone": "resnet18",
                                                             "image_size": 64, "monitor_interval": 0}},
        "finetune": {"overrides": {"max_epochs": 2, "freeze_epochs": 1, "backbone": "resnet18", "image_size": 64,
                                   "batch_size": 16, "n_bootstrap": 100, "figures": False}},
    },
    # the embedded demo: all methods, both classification tasks with the three protocols and organ segmentation,
    # the paper's five fractions and 3 seeds (segmentation: 1), ResNet18, in under an hour on 2 CPU cores (40 min
    # 48 s measured from a fresh clone on 2026-12-06, alone on the machine; docs/results/demo). Twice the
    # pre-training (every slice) was measured on validation and did not lift the frozen protocols, so the
    # remaining time is not spent on it.
    # What is given up for that:
    # - pre-training: one epoch over every 2nd slice of the pool (2,160 slices, 270 steps of 8 at 64 px, 1-2 min
    #   a method); SwAV with 2 local views of 32 px instead of 6 (its step costs about that of the others) and
    #   10 prototypes instead of 500 (500 is the reference study's count for batches of 128; a batch of 8 spread
    #   over 500 clusters gives near-uniform codes: 5-fold k-NN accuracy on the training and validation images,
    #   COVID-like / organs, 500 prototypes 0.611 / 0.484, 100 0.614 / 0.487, 30 0.637 / 0.489, 10 0.651 / 0.487,
    #   random encoder 0.605 / 0.460; scripts/tune_demo_pretraining.py, the test split not read).
    #   This is a short schedule: the methods are compared at equal steps on equal data, far from convergence.
    #   In fp32 on every CPU (`amp` false, where the bundles say auto): bf16 autocast would run only on CPUs with
    #   bf16 arithmetic, and the committed results would then depend on the CPU that reproduces them.
    # - windows: pre-training and both tasks in the lung window (the organ patches are 8-bit, windowed when made;
    #   -1000..1000 for all cost the COVID-like task: docs/results/demo/README.md).
    # - fine-tuning: 3 epochs (the first with the backbone frozen) at lr 1e-3, COVID-like images at 64 px and
    #   organ patches at 32 px; with 5 % of the labels that is 3 optimiser steps. The frozen protocols (linear,
    #   k-NN) cost seconds and carry most of the evidence at small label fractions.
    # - organ segmentation (fine-tuning only): one seed, not three (a run costs about 30 s, against 2-10 s for a
    #   classification run); scans resampled to 6 mm pixels (about 64 px a slice, the scale pre-training saw at
    #   64 px) for validation and test as well as training; 2 epochs of 240 slices in batches of 8 (60 steps
    #   at every fraction), no frozen warm-up, validated once at the end (the best model is the last).
    "demo": {
        "methods": list(METHODS), "fractions": [1.0, 0.5, 0.25, 0.1, 0.05], "seeds": [0, 1, 2],
        "protocols": list(PROTOCOLS),
        "tasks": {"covid": {**_DEMO_TASK, "image_size": 64}, "organs": {**_DEMO_ORGANS, "image_size": 32},
                  "organ_seg": {**_DEMO_ORGAN_SEG, "image_size": 64, "spacing": 6.0, "seeds": [0], "max_epochs": 2,
                                "samples_per_epoch": 240, "batch_size": 8, "freeze_epochs": 0, "val_interval": 2}},
        "pretrain": {"dataset_dir": "{demo}", "overrides": {"max_epochs": 1, "slice_step": 2, "backbone": "resnet18",
                                                             "image_size": 64, "monitor_interval": 0, "amp": False},
                     "swav": {"local_size": 32, "num_local_views": 2, "num_prototypes": 10}},
        "finetune": {"overrides": {"max_epochs": 3, "freeze_epochs": 1, "backbone": "resnet18", "batch_size": 32,
                                   "lr": 1e-3, "num_workers": 0, "n_bootstrap": 200, "figures": False}},
    },
    # the volumetric arm on the embedded demo (spatial_dims 3: every bundle run with its train_3d.json overlay): 3D
    # SparK and 3D MoCo v2 against a 3D scratch U-Net on organ segmentation at three label fractions, MONAI's 3D
    # ResNet18, in 46 min 6 s from a fresh clone on 2 CPU cores (2026-12-05, docs/results/demo_3d; a step of 3D
    # SparK took 1.0 s, of 3D MoCo 0.35 s, a fine-tuning run 3 min with its validation and test). What is given
    # up for that:
    # - volumes resampled to 6 mm voxels (about 65 x 65 x 24) and patches of 32 x 32 x 16 voxels (half the chest's
    #   width), batches of 2; pre-training PRETRAIN_STEPS steps a method (1,600 patches: 18 per training scan);
    # - fine-tuning FINETUNE_STEPS steps at every fraction (a scratch U-Net reaches a test Dice of 0.35 with all
    #   labels), three fractions, one seed (intervals cover the 11 test patients, not the draw of the labelled
    #   patients), validated once at the end; whole test volumes by sliding windows of the patch size;
    # - pre-training in fp32 on every CPU, as in the 2D demo.
    "demo_3d": {
        "spatial_dims": 3, "methods": ["scratch", "spark", "moco"], "fractions": [1.0, 0.25, 0.05], "seeds": [0],
        "protocols": ["finetune"],
        "tasks": {"organ_seg": {**_DEMO_ORGAN_SEG, "patch_size": [32, 32, 16], "spacing": [6.0, 6.0, 6.0],
                                "max_epochs": 1, "samples_per_epoch": 2 * FINETUNE_STEPS, "batch_size": 2,
                                "freeze_epochs": 0, "val_interval": 1}},
        "pretrain": {"dataset_dir": "{demo}", "overrides": {"backbone": "resnet18", "patch_size": [32, 32, 16],
                                                             "spacing": [6.0, 6.0, 6.0], "batch_size": 2,
                                                             "max_epochs": 1, "samples_per_epoch": 2 * PRETRAIN_STEPS,
                                                             "amp": False}},
        "finetune": {"overrides": {"backbone": "resnet18", "lr": 1e-3, "num_workers": 0, "n_bootstrap": 200,
                                   "figures": False}},
    },
    # the reference study's settings, for a GPU with LIDC-IDRI (prepare-dicom output) and its downstream sets
    "paper": {
        "methods": list(METHODS), "fractions": [1.0, 0.5, 0.25, 0.1, 0.05], "seeds": [0, 1, 2],
        "tasks": {
            "covid": {"dataset_dir": "/data/covid_ct", "layout": "class_folders", "encoding": "uint8",
                      "window": "minmax", "class_names": ["NonCOVID", "COVID"]},
            "organs": {"dataset_dir": "/data/organsmnist.npz", "layout": "medmnist", "encoding": "uint8",
                       "class_names": ["bladder", "femur-left", "femur-right", "heart", "kidney-left",
                                       "kidney-right", "liver", "lung-left", "lung-right", "pancreas", "spleen"]},
        },
        # per method, the authors' settings (shared/reference/paper_protocol.md); the bundles' defaults already
        # hold the rest (optimisers, betas, clipping, weight decay, mask ratio, heads, queue, momentum, tau,
        # prototypes, Sinkhorn, augmentations). Deliberately better than the authors: HU windows ("full", no
        # per-slice min-max) in pre-training, and a backbone that really freezes (docs/paper_deviations.md).
        # LIDC-IDRI's 250,000 slices stream from a slice store on disk (about 131 GB), not from memory.
        "pretrain": {"dataset_dir": "/data/lidc_nifti",
                     "overrides": {"image_size": 224, "in_channels": 3, "num_workers": 8, "amp": True,
                                   "window": "full", "cache": "disk", "cache_dir": "/data/lidc_slice_store"},
                     "spark": {"batch_size": 32, "max_epochs": 1600, "base_lr": 2e-4, "warmup_epochs": 40},
                     "moco": {"batch_size": 128, "max_epochs": 800, "base_lr": 0.03, "temperature": 0.07,
                              "queue_size": 65536, "momentum": 0.999},
                     # 300k steps, rounded up to whole epochs
                     "byol": {"batch_size": 64, "max_steps": 300000, "base_lr": 0.004, "warmup_epochs": 10,
                              "tau": [0.996, 1.0]},
                     # prototypes frozen for the first epoch (Lightning Bolts' SwAV, whose checkpoint layout the
                     # authors' release has)
                     "swav": {"batch_size": 128, "max_epochs": 800, "base_lr": 0.3, "warmup_epochs": 10,
                              "local_size": 96, "num_prototypes": 500, "temperature": 0.1,
                              "freeze_prototypes_iterations": "$len(@train#dataloader)"}},
        "finetune": {"overrides": {"max_epochs": 70, "freeze_epochs": 10, "batch_size": 64, "image_size": 224,
                                   "in_channels": 3, "backbone": "resnet50", "lr": 1e-4, "weight_decay": 5e-4,
                                   "num_workers": 8, "amp": True}},
    },
}


@dataclass
class StudyConfig:
    """A study. ``external`` names encoder files (e.g. the authors' releases) fine-tuned like the methods;
    ``protocols`` are ct_classification's (``finetune``, ``linear``, ``knn``), each run on the same labelled
    subsets (a task of ``kind: segmentation`` is fine-tuned by ct_segmentation, its labelled subsets whole
    patients); ``pretrain.overrides`` and ``finetune.overrides`` are bundle ids (``--max_epochs 2`` as ``max_epochs: 2``);
    per-method ``pretrain.<method>`` dicts add to them. A task's entries are its bundle's ids, except ``kind`` and
    ``seeds`` (the seeds of that task, when not the study's: a costly task may run fewer). ``spatial_dims`` 3
    makes a volumetric study: every bundle run composes its ``train_3d.json`` overlay on ``train.json`` (volume
    patches, MONAI's 3D ResNet, the 3D U-Net), so its tasks are segmentation tasks."""

    methods: list[str]
    fractions: list[float]
    seeds: list[int]
    tasks: dict[str, dict]
    protocols: list[str] = field(default_factory=lambda: list(PROTOCOLS))
    pretrain: dict = field(default_factory=dict)
    finetune: dict = field(default_factory=dict)
    external: dict[str, str] = field(default_factory=dict)
    spatial_dims: int = 2

    def __post_init__(self) -> None:
        if self.spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {self.spatial_dims!r}")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown methods {unknown}; expected some of {', '.join(METHODS)} (external encoders "
                             "go under 'external: {name: path}')")
        if not self.methods and not self.external:
            raise ValueError("a study needs at least one method or external encoder")
        bad = [f for f in self.fractions if not 0 < float(f) <= 1]
        if bad or not self.fractions:
            raise ValueError(f"fractions must be in (0, 1], got {self.fractions}")
        if not self.protocols or set(self.protocols) - set(PROTOCOLS):
            raise ValueError(f"protocols must be some of {', '.join(PROTOCOLS)}, got {self.protocols}")
        if not self.tasks or not self.seeds:
            raise ValueError("a study needs at least one task and one seed")
        owned = {"protocol", "label_fraction", "seed", "pretrained_checkpoint", "ckpt_dir", "log_dir", "output_dir",
                 "feature_cache"}  # what the study sets per run
        for where, ids in [("finetune.overrides", self.finetune.get("overrides", {})),
                           *((f"tasks.{n}", t) for n, t in self.tasks.items())]:
            clash = sorted(owned & set(ids))
            if clash:
                raise ValueError(f"{where} sets {', '.join(clash)}, which the study sets for each run (use "
                                 "protocols, fractions, seeds, methods or external instead)")
        for name, task in self.tasks.items():
            if "seeds" in task and (not isinstance(task["seeds"], list) or not task["seeds"]):
                raise ValueError(f"task {name!r}: seeds must be a non-empty list, got {task['seeds']!r}")
            kind = task.get("kind", "classification")
            if kind not in TASK_BUNDLES:
                raise ValueError(f"task {name!r}: unknown kind {kind!r}; expected one of {', '.join(TASK_BUNDLES)}")
            if "dataset_dir" not in task or (kind == "classification" and "class_names" not in task):
                raise ValueError(f"task {name!r} needs dataset_dir" + (" and class_names" if kind == "classification"
                                                                        else " (a datalist with label volumes)"))
            if self.spatial_dims == 3 and kind != "segmentation":
                raise ValueError(f"task {name!r}: a 3D study (spatial_dims 3) evaluates segmentation tasks only, "
                                 f"not {kind} (the classification bundle is 2D)")
            if kind == "segmentation" and "finetune" not in self.protocols:
                raise ValueError(f"task {name!r} is a segmentation task, which only the finetune protocol evaluates; "
                                 "add finetune to protocols")

    @property
    def data_dirs(self) -> list[str]:
        """The data the study reads: the pre-training collection and each task's labelled set."""
        return [str(d) for d in [self.pretrain.get("dataset_dir"), *(t["dataset_dir"] for t in self.tasks.values())]
                if d is not None]

    @property
    def config_files(self) -> list[str]:
        """The config files of every bundle run, in a bundle's ``configs/``: ``train.json``, then the 3D overlay
        of a volumetric study."""
        return ["train.json"] + (["train_3d.json"] if self.spatial_dims == 3 else [])

    def bundle(self, task: str) -> str:
        """The bundle that evaluates on ``task``."""
        return TASK_BUNDLES[self.tasks[task].get("kind", "classification")]

    def seeds_of(self, task: str) -> list[int]:
        """The seeds ``task`` is run with: its own ``seeds``, else the study's."""
        return [int(s) for s in self.tasks[task].get("seeds", self.seeds)]

    def protocols_of(self, task: str) -> list[str]:
        """The protocols ``task`` is evaluated with: all of the study's for classification, fine-tuning for
        segmentation (the frozen protocols are classifiers on pooled features)."""
        return list(self.protocols) if self.bundle(task) == "ct_classification" else ["finetune"]

    @property
    def arms(self) -> list[str]:
        """What is fine-tuned: the methods, then the external encoders."""
        return list(self.methods) + list(self.external)

    def to_dict(self) -> dict:
        return asdict(self)


def _merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in override.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _fill(value, demo: str):
    if isinstance(value, str):
        return value.replace("{demo}", demo)
    if isinstance(value, dict):
        return {k: _fill(v, demo) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, demo) for v in value]
    return value


def load_study_config(path: str | os.PathLike | None = None, preset: str | None = None,
                      demo_dir: str | None = None) -> StudyConfig:
    """A preset, overridden by the YAML file at ``path``; ``{demo}`` in paths is the demo data folder."""
    content = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"study config not found: {path}")
        try:
            content = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ValueError(f"{path}: not valid YAML ({err})") from None
        if not isinstance(content, dict):
            raise ValueError(f"{path}: expected a mapping of study fields")
    name = preset or content.pop("preset", None) or "demo"
    content.pop("preset", None)
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; expected one of {', '.join(PRESETS)}")
    merged = _merge(PRESETS[name], content)
    unknown = set(merged) - {f for f in StudyConfig.__dataclass_fields__}
    if unknown:
        raise ValueError(f"unknown study fields {sorted(unknown)}")
    if "{demo}" in str(merged):
        from medssl_monai.bundle import demo_root

        merged = _fill(merged, demo_dir or str(demo_root()))
    return StudyConfig(**merged)
