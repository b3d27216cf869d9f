"""Test-set evaluation of a segmentation network on whole volumes: Dice and 95 % Hausdorff distance per organ.

Each test volume is predicted whole (:func:`volume_inferer`: slice by slice for the 2D U-Net, by sliding 3D
windows for the 3D one) and scored in 3D against its label volume with MONAI's metrics: Dice (``compute_dice``) and the
95th percentile Hausdorff distance in millimetres (``compute_hausdorff_distance`` with the volume's spacing).
A patient is the unit: the report gives, per organ, the mean over patients, and as ``mean`` the mean over
patients of each patient's mean over its organs, each with a 95 % percentile interval from resampling whole
patients. An organ absent from a patient's label volume does not
count for that patient (MONAI's ``ignore_empty``); an organ the network misses entirely gets Dice 0 and, as its
distance, the volume's diagonal in mm (a miss is the worst distance, not a missing value).
"""

from __future__ import annotations

import csv
import logging
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.inferers import Inferer, SliceInferer, SlidingWindowInferer
from monai.metrics import compute_dice, compute_hausdorff_distance
from monai.networks.utils import one_hot
from torch import nn

from medssl_monai.checkpoints import load_checkpoint
from medssl_monai.evaluation.plots import plot_organ_scores, save_overlay
from medssl_monai.utils import as_bool, atomic_path, write_json

__all__ = ["SegmentationReport", "volume_inferer", "volume_scores", "segmentation_metrics", "SEGMENTATION_METRICS"]

logger = logging.getLogger(__name__)

SEGMENTATION_METRICS = ("dice", "hd95")


def volume_inferer(roi_size: Sequence[int], sw_batch_size: int = 1, overlap: float = 0.25) -> Inferer:
    """How a segmentation network predicts a whole (C, X, Y, Z) volume, by the network's input size: a 2D
    ``roi_size`` (a 2D U-Net) slice by slice along Z with MONAI's ``SliceInferer``, a 3D one (a 3D U-Net) in
    windows with ``SlidingWindowInferer``; either tiles a plane or volume larger than ``roi_size`` with
    ``overlap`` and Gaussian blending, ``sw_batch_size`` tiles a forward pass."""
    size = [int(v) for v in roi_size]
    common = {"sw_batch_size": int(sw_batch_size), "overlap": overlap, "mode": "gaussian", "progress": False}
    if len(size) == 2:
        return SliceInferer(roi_size=size, spatial_dim=2, **common)
    if len(size) == 3:
        return SlidingWindowInferer(roi_size=size, **common)
    raise ValueError(f"roi_size must be 2 (a 2D network's slices) or 3 sizes (a 3D network's windows), got {roi_size!r}")


def volume_scores(pred: torch.Tensor, label: torch.Tensor, num_classes: int,
                  spacing: Sequence[float]) -> dict[str, np.ndarray]:
    """Dice and HD95 (mm) of each foreground class (K - 1,) of one volume: ``pred`` and ``label`` are (X, Y, Z)
    class indices; NaN where the class is absent from ``label``."""
    p = one_hot(pred[None, None].long(), num_classes)  # (1, K, X, Y, Z)
    y = one_hot(label[None, None].long(), num_classes)
    dice = compute_dice(p, y, include_background=False, ignore_empty=True)[0].numpy()  # (K - 1,)
    hd95 = np.full(num_classes - 1, np.nan)
    diagonal = float(np.linalg.norm(np.asarray(pred.shape) * np.asarray(spacing)))
    for c in range(1, num_classes):
        if not y[0, c].any():
            continue
        if not p[0, c].any():
            dice[c - 1], hd95[c - 1] = 0.0, diagonal
            continue
        hd95[c - 1] = float(compute_hausdorff_distance(p[:, [0, c]], y[:, [0, c]], include_background=False,
                                                       percentile=95, spacing=list(spacing))[0, 0])
    return {"dice": dice.astype(float), "hd95": hd95}


def _summary(values: np.ndarray) -> tuple[np.ndarray, float]:
    """Of (patients, K - 1) scores with NaN gaps: per-organ means over patients (K - 1,), and the mean over
    patients of each patient's mean over its organs (what a study pairs between methods, patient by patient)."""
    with warnings.catch_warnings():  # an organ that no (resampled) patient has is NaN, without a warning
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(values, axis=0), float(np.nanmean(np.nanmean(values, axis=1)))


def _interval(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    """Percentile interval of bootstrap replicates, NaN replicates left out."""
    samples = samples[~np.isnan(samples)]
    tail = (1 - confidence) / 2 * 100
    return tuple(float(v) for v in np.percentile(samples, [tail, 100 - tail])) if len(samples) else (float("nan"),) * 2


def segmentation_metrics(scores: dict[str, np.ndarray], organs: Sequence[str], n_bootstrap: int = 1000,
                         seed: int = 0, confidence: float = 0.95) -> dict:
    """``{"dice": {"mean": {value, ci_low, ci_high}, <organ>: {...}}, "hd95": {...}, "n_patients": N}`` from
    per-patient ``scores`` (``{"dice": (N, K - 1), "hd95": (N, K - 1)}``), resampling whole patients; ``mean``
    averages each patient's mean over its organs."""
    n = len(scores["dice"])
    rng = np.random.default_rng(seed)
    draws = [rng.integers(0, n, n) for _ in range(n_bootstrap)]
    result: dict = {}
    for metric in SEGMENTATION_METRICS:
        values = np.asarray(scores[metric], dtype=float)  # (N, K - 1)
        per_organ, mean = _summary(values)
        boot = [_summary(values[index]) for index in draws]
        boot_organ, boot_mean = np.array([b[0] for b in boot]), np.array([b[1] for b in boot])  # (B, K - 1), (B,)
        low, high = _interval(boot_mean, confidence)
        result[metric] = {"mean": {"value": mean, "ci_low": low, "ci_high": high}}
        for k, organ in enumerate(organs):
            low, high = _interval(boot_organ[:, k], confidence)
            result[metric][organ] = {"value": float(per_organ[k]), "ci_low": low, "ci_high": high,
                                     "n_patients": int((~np.isnan(values[:, k])).sum())}
    result["n_patients"], result["resampled"] = n, "patients"
    return result


class SegmentationReport:
    """Predict every test volume with ``network`` (weights from ``checkpoint``) and write the test report.

    Args:
        network: the segmentation network; its output (B, K, ...) are logits over ``label_names``.
        dataset: whole-volume samples ``{"image": (C, X, Y, Z), "label": (1, X, Y, Z)}`` (MetaTensors carrying
            the spacing), one a patient (:func:`~medssl_monai.data.volume_dataset`).
        inferer: how a volume is predicted (:func:`volume_inferer`).
        output_dir: where ``metrics.json``, ``per_patient.csv``, ``dice_per_organ.png`` and ``overlay.png`` go.
        label_names: the K class names, background first.
        checkpoint: a plain state_dict (``models/model.pt``) loaded first; ``None`` uses the weights as they are.
        n_bootstrap, seed: of the 95 % intervals.
        extra: key-value pairs recorded in ``metrics.json``.
        figures: also draw the per-organ Dice and an overlay of the first test volume.
    """

    def __init__(self, network: nn.Module, dataset: Sequence[dict], inferer: Callable, output_dir: str | os.PathLike,
                 label_names: Sequence[str], device: torch.device | str = "cpu",
                 checkpoint: str | os.PathLike | None = None, n_bootstrap: int = 1000, seed: int = 0,
                 extra: dict | None = None, figures: bool = True, amp: bool = False) -> None:
        self.network, self.dataset, self.inferer = network, dataset, inferer
        self.output_dir, self.label_names = Path(output_dir), list(label_names)
        self.device, self.checkpoint = torch.device(device), checkpoint
        self.n_bootstrap, self.seed, self.extra = n_bootstrap, seed, dict(extra or {})
        self.figures, self.amp = as_bool(figures, "figures"), as_bool(amp, "amp")

    @torch.no_grad()
    def predict(self, image: torch.Tensor) -> torch.Tensor:
        """(X, Y, Z) class indices of one (C, X, Y, Z) volume."""
        net = getattr(self.network, "module", self.network)
        with torch.autocast(self.device.type, enabled=self.amp):
            logits = self.inferer(torch.as_tensor(image)[None].to(self.device), net)  # (1, K, X, Y, Z)
        return logits[0].argmax(0).cpu()

    def _volumes(self) -> Iterable[tuple[str, dict, torch.Tensor]]:
        for i in range(len(self.dataset)):
            sample = self.dataset[i]
            meta = getattr(sample["image"], "meta", {})
            name = Path(str(meta.get("filename_or_obj", f"volume_{i}"))).name.split(".nii")[0]
            yield name, sample, self.predict(sample["image"])

    def run(self) -> dict:
        """Predict, score, write the report; returns it."""
        net = getattr(self.network, "module", self.network)
        if self.checkpoint is not None:
            net.load_state_dict(load_checkpoint(self.checkpoint))
        net.eval()
        organs, k = self.label_names[1:], len(self.label_names)
        names, scores, first = [], {m: [] for m in SEGMENTATION_METRICS}, None
        for name, sample, pred in self._volumes():
            image, label = sample["image"], torch.as_tensor(sample["label"])[0]
            spacing = [float(s) for s in getattr(image, "pixdim", torch.ones(3))[:3]]
            if label.max() >= k:
                raise ValueError(f"{name}: label value {int(label.max())} but only {k} labels are configured "
                                 f"({', '.join(self.label_names)})")
            for metric, values in volume_scores(pred, label, k, spacing).items():
                scores[metric].append(values)
            names.append(name)
            if first is None:
                first = (name, torch.as_tensor(image)[0].numpy(), label.numpy(), pred.numpy())
        if not names:
            raise ValueError("no test volumes to evaluate")
        scores = {m: np.stack(v) for m, v in scores.items()}  # (N, K - 1)
        metrics = segmentation_metrics(scores, organs, self.n_bootstrap, self.seed)
        report = {"labels": self.label_names, "checkpoint": str(self.checkpoint), **self.extra, **metrics}
        write_json(self.output_dir / "metrics.json", report)
        with atomic_path(self.output_dir / "per_patient.csv") as tmp, open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["patient", "organ", *SEGMENTATION_METRICS])
            for i, name in enumerate(names):
                for j, organ in enumerate(organs):
                    writer.writerow([name, organ, *(f"{scores[m][i, j]:.6g}" for m in SEGMENTATION_METRICS)])
        if self.figures:
            plot_organ_scores(scores["dice"], organs, self.output_dir / "dice_per_organ.png",
                              f"test Dice, {len(names)} patients")
            name, image, label, pred = first
            save_overlay(image, label, pred, k, self.output_dir / "overlay.png", f"{name}: label | prediction")
        dice, hd = metrics["dice"]["mean"], metrics["hd95"]["mean"]
        logger.info(f"test ({len(names)} patients): mean Dice {dice['value']:.3f} [{dice['ci_low']:.3f}, "
                    f"{dice['ci_high']:.3f}], mean HD95 {hd['value']:.1f} mm [{hd['ci_low']:.1f}, {hd['ci_high']:.1f}]; "
                    f"written to {self.output_dir}")
        return report
