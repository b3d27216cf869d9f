"""Evaluate a trained classifier on the test split: metrics.json, predictions.csv, a confusion matrix and ROC
curves."""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from medssl_monai.checkpoints import load_checkpoint
from medssl_monai.evaluation.metrics import METRICS, classification_metrics
from medssl_monai.evaluation.plots import plot_confusion_matrix, plot_roc
from medssl_monai.utils import as_bool, atomic_path, write_json

__all__ = ["ClassificationReport", "write_classification_report"]

logger = logging.getLogger(__name__)


class ClassificationReport:
    """Run ``network`` (weights from ``checkpoint``) over ``dataloader`` and write the test report.

    Args:
        network: the classifier; its output (B, C) are logits.
        dataloader: dict batches with ``image`` and ``label``.
        output_dir: where ``metrics.json``, ``confusion_matrix.png`` and ``roc_curve.png`` go.
        class_names: names of the C classes.
        device: where the network runs.
        checkpoint: a plain state_dict (``models/model.pt``) loaded first; ``None`` uses the weights as they are.
        n_bootstrap, seed: of the 95% intervals.
        extra: key-value pairs recorded in ``metrics.json`` (label fraction, pre-trained checkpoint, ...).
        figures: also draw the confusion matrix and ROC curves (a study of hundreds of runs may leave them out).
    """

    def __init__(self, network: nn.Module, dataloader: Iterable, output_dir: str | os.PathLike,
                 class_names: Sequence[str], device: torch.device | str = "cpu",
                 checkpoint: str | os.PathLike | None = None, n_bootstrap: int = 1000, seed: int = 0,
                 extra: dict | None = None, figures: bool = True) -> None:
        self.network, self.dataloader, self.output_dir = network, dataloader, Path(output_dir)
        self.class_names, self.device, self.checkpoint = list(class_names), torch.device(device), checkpoint
        self.n_bootstrap, self.seed, self.extra = n_bootstrap, seed, dict(extra or {})
        self.figures = as_bool(figures, "figures")

    @torch.no_grad()
    def predict(self) -> tuple[np.ndarray, np.ndarray, list | None]:
        """(labels (N,), probabilities (N, C), patient ids (N,) or None when the samples carry none) over the
        whole dataloader."""
        net = getattr(self.network, "module", self.network)
        if self.checkpoint is not None:
            net.load_state_dict(load_checkpoint(self.checkpoint))
        net.eval()
        labels, probs, patients = [], [], []
        for batch in self.dataloader:
            logits = net(torch.as_tensor(batch["image"]).to(self.device))  # (B, C)
            probs.append(torch.softmax(logits.float(), dim=1).cpu())
            labels.append(torch.as_tensor(batch["label"]).long().view(-1))
            patients += list(batch["patient"]) if "patient" in batch else []
        labels = torch.cat(labels).numpy()
        return labels, torch.cat(probs).numpy(), [str(p) for p in patients] if len(patients) == len(labels) else None

    def run(self) -> dict:
        """Predict, compute the metrics with intervals, write the report; returns the metrics."""
        labels, probs, patients = self.predict()
        if probs.shape[1] != len(self.class_names):
            raise ValueError(f"the network gives {probs.shape[1]} outputs but {len(self.class_names)} class names "
                             f"are configured ({self.class_names})")
        return write_classification_report(labels, probs, patients, self.output_dir, self.class_names,
                                           self.n_bootstrap, self.seed,
                                           {"checkpoint": str(self.checkpoint), **self.extra}, self.figures)


def write_classification_report(labels: np.ndarray, probs: np.ndarray, patients: Sequence[str] | None,
                                output_dir: str | os.PathLike, class_names: Sequence[str], n_bootstrap: int = 1000,
                                seed: int = 0, extra: dict | None = None, figures: bool = True) -> dict:
    """The test report of labels (N,) against class probabilities (N, C): ``metrics.json`` (metrics with 95 %
    intervals, resampling ``patients`` where given, plus ``extra``), ``predictions.csv`` (one row per test image,
    what paired comparisons between runs read) and, with ``figures``, the confusion matrix and ROC curves.
    Returns the report."""
    output_dir, class_names = Path(output_dir), list(class_names)
    metrics = classification_metrics(labels, probs, n_bootstrap, seed, groups=patients)
    report = {"classes": class_names, **(extra or {}), **metrics}
    write_json(output_dir / "metrics.json", report)
    with atomic_path(output_dir / "predictions.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "patient", "label", *(f"prob_{c}" for c in class_names)])
        for i, (label, row) in enumerate(zip(labels, probs)):
            writer.writerow([i, patients[i] if patients is not None else "", int(label), *(f"{p:.9g}" for p in row)])  # float32 exactly
    if figures:
        title = f"test set, n = {len(labels)}"
        plot_confusion_matrix(np.asarray(metrics["confusion_matrix"]), class_names,
                              output_dir / "confusion_matrix.png", title)
        plot_roc(labels, probs, class_names, output_dir / "roc_curve.png", title)
    summary = ", ".join(f"{k} {metrics[k]['value']:.3f} [{metrics[k]['ci_low']:.3f}, {metrics[k]['ci_high']:.3f}]"
                        for k in METRICS)
    logger.info(f"test ({len(labels)} images, intervals resampling {metrics['n_resampled']} "
                f"{metrics['resampled']}): {summary}; written to {output_dir}")
    return report
