"""Evaluation of fine-tuned classifiers: metrics with bootstrap intervals, figures, the test report."""

from medssl_monai.evaluation.metrics import METRICS, classification_metrics, confusion_matrix, point_metrics
from medssl_monai.evaluation.plots import plot_confusion_matrix, plot_roc
from medssl_monai.evaluation.report import ClassificationReport

__all__ = [
    "METRICS",
    "ClassificationReport",
    "classification_metrics",
    "confusion_matrix",
    "plot_confusion_matrix",
    "plot_roc",
    "point_metrics",
]
