"""Ignite handlers of the project, one per module, attached by the bundles' configs."""

from medssl_monai.handlers.backbone_freezer import BackboneFreezer
from medssl_monai.handlers.best_model_saver import BestModelSaver
from medssl_monai.handlers.checkpoint_loader import ResumeFromCheckpoint
from medssl_monai.handlers.checkpoint_saver import CheckpointWriter
from medssl_monai.handlers.encoder_exporter import EncoderExporter
from medssl_monai.handlers.finite_loss_check import FiniteLossCheck, check_finite_loss
from medssl_monai.handlers.iteration_schedule import IterationSchedule
from medssl_monai.handlers.representation_monitor import RepresentationCollapseError, RepresentationMonitor
from medssl_monai.handlers.segmentation_overlay import SegmentationOverlay
from medssl_monai.handlers.training_logger import TrainingLogger

__all__ = ["BackboneFreezer", "BestModelSaver", "CheckpointWriter", "EncoderExporter", "FiniteLossCheck",
           "IterationSchedule", "RepresentationCollapseError", "RepresentationMonitor", "ResumeFromCheckpoint",
           "SegmentationOverlay", "TrainingLogger", "check_finite_loss"]
