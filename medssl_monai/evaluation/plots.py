"""Figures of a test evaluation, as PNG files: the confusion matrix and ROC curves of a classifier, the Dice per
organ and label overlays of a segmentation."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from medssl_monai.utils import atomic_path

__all__ = ["plot_confusion_matrix", "plot_roc", "plot_organ_scores", "label_overlay", "axial_overlay",
           "save_overlay"]


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: str | os.PathLike) -> None:
    """Write ``fig`` as a PNG at ``path`` (atomically) and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def plot_confusion_matrix(cm: np.ndarray, class_names: Sequence[str], path: str | os.PathLike, title: str = "") -> None:
    """Counts and row-normalised shares, true classes down, predicted across."""
    plt = _figure()
    cm = np.asarray(cm)
    share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    size = max(4.0, 0.6 * len(class_names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(cm)):
        for j in range(len(cm)):
            ax.text(j, i, f"{cm[i, j]}\n{share[i, j]:.0%}", ha="center", va="center", fontsize=8,
                    color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "confusion matrix")
    fig.tight_layout()
    _save(plt, fig, path)


def plot_roc(labels: np.ndarray, probs: np.ndarray, class_names: Sequence[str], path: str | os.PathLike,
             title: str = "") -> None:
    """ROC curve of class 1 (binary) or one-vs-rest curves of every class."""
    from sklearn.metrics import auc, roc_curve

    plt = _figure()
    labels, probs = np.asarray(labels), np.asarray(probs)
    fig, ax = plt.subplots(figsize=(5, 5))
    classes = [1] if probs.shape[1] == 2 else range(probs.shape[1])
    for c in classes:
        if (labels == c).all() or not (labels == c).any():
            continue  # one class only: no curve
        fpr, tpr, _ = roc_curve(labels == c, probs[:, c])
        ax.plot(fpr, tpr, label=f"{class_names[c]} (AUC {auc(fpr, tpr):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title or "ROC")
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    _save(plt, fig, path)


def plot_organ_scores(scores: np.ndarray, organs: Sequence[str], path: str | os.PathLike, title: str = "",
                      metric: str = "Dice") -> None:
    """One point per patient and the mean per organ of (patients, organs) ``scores`` (NaN: organ absent)."""
    plt = _figure()
    scores = np.asarray(scores, dtype=float)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.6 * len(organs) + 1.5), 4))
    jitter = np.random.default_rng(0).uniform(-0.15, 0.15, len(scores))
    for k in range(len(organs)):
        values = scores[:, k]
        present = ~np.isnan(values)
        ax.scatter(k + jitter[present], values[present], s=10, alpha=0.6, color="tab:blue")
        if present.any():
            ax.hlines(values[present].mean(), k - 0.3, k + 0.3, color="black")
    ax.set_xticks(range(len(organs)), organs, rotation=45, ha="right")
    ax.set_ylabel(f"{metric} (per patient; bar: mean)")
    ax.set_ylim(0, 1) if metric == "Dice" else None
    ax.set_title(title)
    fig.tight_layout()
    _save(plt, fig, path)


def label_overlay(image: np.ndarray, labels: np.ndarray, num_classes: int, alpha: float = 0.45) -> np.ndarray:
    """(H, W, 3) uint8: a (H, W) image in [0, 1] in grey with the (H, W) label map in colour (background clear)."""
    from matplotlib import colormaps

    tab10 = colormaps["tab10"](np.arange(10))[:, :3]
    # up to 9 organs: tab10 without its grey, which vanishes on CT; more: tab20
    colours = np.delete(tab10, 7, axis=0) if num_classes <= 10 else colormaps["tab20"](np.arange(20))[:, :3]
    grey = np.repeat(np.clip(np.asarray(image, dtype=float), 0, 1)[..., None], 3, axis=-1)
    labels = np.asarray(labels).astype(int)
    out = grey.copy()
    mask = labels > 0
    out[mask] = (1 - alpha) * grey[mask] + alpha * colours[(labels[mask] - 1) % len(colours)]
    return (out * 255).round().astype(np.uint8)


def axial_overlay(image: np.ndarray, labels: np.ndarray, num_classes: int, z: int | None = None) -> np.ndarray:
    """:func:`label_overlay` of axial slice ``z`` (default the middle one) of LPS-oriented (X, Y, Z) volumes, in
    the radiological view: anterior up, the patient's right on the left of the picture."""
    z = image.shape[-1] // 2 if z is None else z
    return label_overlay(np.asarray(image)[..., z].T, np.asarray(labels)[..., z].T, num_classes)


def save_overlay(image: np.ndarray, label: np.ndarray, pred: np.ndarray, num_classes: int,
                 path: str | os.PathLike, title: str = "") -> None:
    """Label and prediction over the middle axial slice of LPS-oriented (X, Y, Z) volumes, side by side, as
    drawn by :func:`label_overlay`."""
    plt = _figure()
    panels = [axial_overlay(image, v, num_classes) for v in (label, pred)]
    fig, axes = plt.subplots(1, 2, figsize=(8, 4.3))
    for ax, panel, name in zip(axes, panels, ("label", "prediction")):
        ax.imshow(panel)
        ax.set_title(name)
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    _save(plt, fig, path)
