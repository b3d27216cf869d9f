"""The label-fraction study: one command from pre-training to the comparison table and plots."""

from medssl_monai.study.config import METHODS, PRESETS, StudyConfig, load_study_config
from medssl_monai.study.report import aggregate, write_report
from medssl_monai.study.runner import Run, Study, StudyError

__all__ = ["METHODS", "PRESETS", "Run", "Study", "StudyConfig", "StudyError", "aggregate", "load_study_config",
           "write_report"]
