"""MONAI Label app serving medssl-monai's trained bundles: ct_classification as a classifier, ct_segmentation as
a segmentation model.

``serve.sh`` copies the trained bundle to ``model/<bundle>`` and starts MONAI Label on this folder. MONAI Label
takes the class in this file whose direct base is ``MONAILabelApp``; :class:`MedSSLApp` is that class. Each
bundle under ``model/`` named by ``--conf models`` becomes a task of the kind its name says, as MONAI Label
decides by folder name: a classifier answers ``{"prediction": [{"idx", "label", "score"}, ...]}`` (the stock
``Restored`` post-transform, which fails on a (C,) classifier output, is left out); a segmentation model answers
the mask of the whole volume, on the input's grid (its ``inference.json`` inverts the reorientation itself;
MONAI Label drops the bundle's ``SaveImaged`` and writes the mask). The bundles' ``inference.json`` read the
settings the model was trained with from ``models/model.json`` (written beside ``model.pt`` by training), so the
model is served as trained, class or label names included. Training through MONAI Label is not offered
(classification: its datastore gives label file paths, not class numbers); train with the bundle.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import monailabel
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType
from monailabel.tasks.infer.bundle import BundleInferTask

logger = logging.getLogger(__name__)


class MedSSLApp(MONAILabelApp):
    """Serves the bundles ``conf["models"]`` (comma-separated folder names under ``APP_DIR/model``)."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        self.models = self._bundles(Path(app_dir) / "model", conf.get("models", "ct_classification"))
        super().__init__(app_dir=app_dir, studies=studies, conf=conf, name="medssl-monai CT models",
                         description="ct_classification and ct_segmentation bundles fine-tuned from self-supervised "
                                     "CT encoders", version=monailabel.__version__)

    @staticmethod
    def _bundles(root: Path, names: str) -> dict[str, Path]:
        """name -> bundle folder; a missing bundle or model stops start-up with the folder and the remedy."""
        bundles = {}
        for name in filter(None, (n.strip() for n in names.split(","))):
            path = root / name
            for needed in ("configs/inference.json", "configs/metadata.json", "models/model.pt"):
                if not (path / needed).is_file():
                    raise FileNotFoundError(f"{path / needed} missing: train the bundle, then start the server "
                                            "with integrations/monailabel/serve.sh, which copies it here")
            settings = path / "models" / "model.json"
            trained = json.loads(settings.read_text())["settings"] if settings.is_file() else "bundle defaults"
            logger.info(f"+++ {name} => {path} (trained with {trained})")
            bundles[name] = path
        if not bundles:
            raise ValueError("no bundle to serve: pass --conf models NAME[,NAME...]")
        return bundles

    def init_infers(self) -> dict[str, InferTask]:
        infers = {}
        for name, path in self.models.items():
            if "segmentation" in name:
                task = BundleInferTask(str(path), self.conf, type=InferType.SEGMENTATION)
                # the label names as trained (inference.json reads them from model.json), background left out
                # as MONAI Label does for the names it takes from the metadata
                names = task.bundle_config.get_parsed_content("label_names")
                task.labels = {label.lower(): index for index, label in enumerate(names) if index > 0}
            else:
                task = BundleInferTask(str(path), self.conf, type=InferType.CLASSIFICATION, add_post_restore=False)
                class_names = task.bundle_config.get_parsed_content("class_names")
                task.labels = {label.lower(): index for index, label in enumerate(class_names)}
            infers[name] = task
        return infers

    def init_trainers(self) -> dict:
        return {}
