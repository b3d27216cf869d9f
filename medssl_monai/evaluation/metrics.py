"""Test-set metrics of a classifier with 95% bootstrap intervals: ROC AUC, accuracy, macro F1, balanced accuracy.

ROC AUC is MONAI's (binary: positive = class 1; more classes: macro one-vs-rest); the others come from the
confusion matrix. The intervals are percentile intervals over ``n_bootstrap`` resamples of the test cases;
resamples without every class are skipped for AUC, which is undefined there. Where the images carry a patient
id, whole patients are resampled (a cluster bootstrap): images of one patient are not independent, and
resampling them one by one would give intervals that are too narrow.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.metrics import compute_roc_auc

__all__ = ["METRICS", "confusion_matrix", "point_metrics", "classification_metrics"]

METRICS = ("auc", "accuracy", "f1", "balanced_accuracy")


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) counts: rows are true classes, columns predicted ones."""
    return np.bincount(labels * num_classes + predicted, minlength=num_classes**2).reshape(num_classes, num_classes)


def point_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Metrics of labels (N,) against class probabilities (N, C)."""
    num_classes = probs.shape[1]
    cm = confusion_matrix(labels, probs.argmax(axis=1), num_classes).astype(float)
    true, predicted, hits = cm.sum(axis=1), cm.sum(axis=0), np.diag(cm)
    present = true > 0
    recall = np.divide(hits, true, out=np.zeros_like(hits), where=true > 0)
    precision = np.divide(hits, predicted, out=np.zeros_like(hits), where=predicted > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(hits), where=precision + recall > 0)
    scored = present | (predicted > 0)  # classes in the labels or the predictions, as scikit-learn averages
    result = {"accuracy": hits.sum() / cm.sum(), "f1": f1[scored].mean(), "balanced_accuracy": recall[present].mean(),
              "auc": float("nan")}
    if present.all():
        if num_classes == 2:
            result["auc"] = compute_roc_auc(torch.as_tensor(probs[:, 1]), torch.as_tensor(labels))
        else:
            onehot = np.eye(num_classes)[labels]
            result["auc"] = compute_roc_auc(torch.as_tensor(probs), torch.as_tensor(onehot), average="macro")
    return {k: float(v) for k, v in result.items()}


def classification_metrics(labels, probs, n_bootstrap: int = 1000, seed: int = 0,
                           confidence: float = 0.95, groups=None) -> dict:
    """``{metric: {"value", "ci_low", "ci_high"}, "n": N, "resampled": "patients" | "images", "confusion_matrix":
    [[...]]}`` for the test set; ``groups`` (N,) are patient ids, resampled whole when given."""
    labels, probs = np.asarray(labels, dtype=int), np.asarray(probs, dtype=float)
    if probs.ndim != 2 or len(labels) != len(probs):
        raise ValueError(f"expected labels (N,) and probabilities (N, C), got {labels.shape} and {probs.shape}")
    if groups is not None and len(groups) != len(labels):
        raise ValueError(f"expected a patient id per image, got {len(groups)} for {len(labels)} images")
    point = point_metrics(labels, probs)
    rng = np.random.default_rng(seed)
    # the resampling units: each a list of image indices (a patient's images, or one image)
    _, unit_of = np.unique(np.asarray(groups, dtype=str), return_inverse=True) if groups is not None else \
        (None, np.arange(len(labels)))
    units = [np.nonzero(unit_of == u)[0] for u in range(unit_of.max() + 1)]
    samples: dict[str, list[float]] = {k: [] for k in METRICS}
    for _ in range(n_bootstrap):
        index = np.concatenate([units[u] for u in rng.integers(0, len(units), len(units))])
        for k, v in point_metrics(labels[index], probs[index]).items():
            if not np.isnan(v):
                samples[k].append(v)
    tail = (1 - confidence) / 2 * 100
    result: dict = {}
    for k in METRICS:
        low, high = np.percentile(samples[k], [tail, 100 - tail]) if samples[k] else (float("nan"),) * 2
        result[k] = {"value": point[k], "ci_low": float(low), "ci_high": float(high)}
    result["n"] = int(len(labels))
    result["resampled"] = "patients" if groups is not None else "images"
    result["n_resampled"] = len(units)
    result["confusion_matrix"] = confusion_matrix(labels, probs.argmax(axis=1), probs.shape[1]).tolist()
    return result
