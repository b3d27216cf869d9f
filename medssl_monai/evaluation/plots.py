"""Figures of a test evaluation: the confusion matrix and the ROC curves, as PNG files."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from medssl_monai.utils import atomic_path

__all__ = ["plot_confusion_matrix", "plot_roc"]


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


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
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


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
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
