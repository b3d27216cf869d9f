"""MONAI Label app serving medssl-monai's ct_classification bundle as a classifier.

It extends the stock ``monaibundle`` sample app (fetched by ``build_env.sh`` into ``./monaibundle``) and
changes one thing: the bundle's inference task is built as a classification task without the ``Restored``
post-transform, which the stock app adds and which fails on a (C,) classifier output. MONAI Label then
answers ``{"prediction": [{"idx", "label", "score"}, ...]}`` with the class names of the bundle's metadata.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.bundle import BundleInferTask

logger = logging.getLogger(__name__)


def _stock_app():
    """The monaibundle sample app's ``MyApp`` class, loaded under its own module name."""
    path = Path(__file__).resolve().parent / "monaibundle" / "main.py"
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: run integrations/monailabel/build_env.sh first")
    spec = importlib.util.spec_from_file_location("monaibundle_app", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.MyApp


class CTClassificationApp(_stock_app()):
    """The monaibundle app whose bundles are served as classifiers."""

    def init_infers(self):
        infers = {}
        for name, path in self.models.items():
            infers[name] = BundleInferTask(path, self.conf, type=InferType.CLASSIFICATION, add_post_restore=False)
            logger.info(f"+++ classifier {name} => {path}")
        return infers
