"""Evaluation: of classifiers (metrics with bootstrap intervals, figures, the test report, the frozen-encoder
protocols: linear probe, k-NN) and of segmentation networks (Dice and HD95 per organ over test patients)."""

from medssl_monai.evaluation.metrics import METRICS, classification_metrics, confusion_matrix, point_metrics
from medssl_monai.evaluation.plots import plot_confusion_matrix, plot_roc
from medssl_monai.evaluation.probes import (
    C_GRID,
    PROTOCOLS,
    FrozenProbe,
    encode,
    knn_predict,
    knn_probabilities,
    linear_probe,
)
from medssl_monai.evaluation.report import ClassificationReport, write_classification_report
from medssl_monai.evaluation.segmentation import (
    SEGMENTATION_METRICS,
    SegmentationReport,
    segmentation_metrics,
    volume_inferer,
    volume_scores,
)

__all__ = [
    "C_GRID",
    "METRICS",
    "PROTOCOLS",
    "SEGMENTATION_METRICS",
    "ClassificationReport",
    "SegmentationReport",
    "FrozenProbe",
    "classification_metrics",
    "confusion_matrix",
    "encode",
    "knn_predict",
    "knn_probabilities",
    "linear_probe",
    "plot_confusion_matrix",
    "plot_roc",
    "point_metrics",
    "segmentation_metrics",
    "volume_inferer",
    "volume_scores",
    "write_classification_report",
]
