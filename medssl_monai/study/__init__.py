"""The label-fraction study: one command from pre-training to the comparison table and plots."""

from medssl_monai.study.config import METHODS, PRESETS, StudyConfig, load_study_config
from medssl_monai.study.report import summarise, write_report
from medssl_monai.study.runner import Run, Study, StudyError, run_bundle

__all__ = ["METHODS", "PRESETS", "Run", "Study", "StudyConfig", "StudyError", "load_study_config", "run_bundle",
           "summarise", "write_report"]
