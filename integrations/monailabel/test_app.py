"""The MONAI Label app answers a classification request on a demo-like CT image with the bundle's classes.

Runs in MONAI Label's own environment (``bash integrations/monailabel/build_env.sh``, then
``integrations/monailabel/.venv/bin/python -m pytest integrations/monailabel``); elsewhere it is skipped with
that reason. It uses MONAI and MONAI Label only, like the bundle's inference, with random weights in place of a
trained ``model.pt``.
"""

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("monailabel", reason="monailabel is not installed here: it needs its own environment "
                                         "(integrations/monailabel/build_env.sh)")

HERE = Path(__file__).resolve().parent
BUNDLE = HERE.parents[1] / "bundles" / "ct_classification"


def test_app_classifies_a_png(tmp_path):
    import torch
    from monai.networks.nets import ResNet
    from PIL import Image

    if not (HERE / "monaibundle" / "main.py").is_file():
        pytest.fail("integrations/monailabel/monaibundle is missing: run build_env.sh, which fetches it")
    app_dir = tmp_path / "app"
    shutil.copytree(HERE, app_dir, ignore=shutil.ignore_patterns(".venv", "model", "__pycache__"))
    model = app_dir / "model" / "ct_classification"
    shutil.copytree(BUNDLE, model, ignore=shutil.ignore_patterns("models", "logs", "eval"))
    (model / "models").mkdir()
    net = ResNet("bottleneck", [3, 4, 6, 3], [64, 128, 256, 512], spatial_dims=2, n_input_channels=1, num_classes=2,
                 conv1_t_stride=2, bias_downsample=False)
    torch.save(net.state_dict(), model / "models" / "model.pt")
    studies = tmp_path / "studies"
    studies.mkdir()
    hu = np.random.default_rng(0).normal(-700, 200, (256, 256)).clip(-1024, 3071)
    Image.fromarray((hu + 1024).astype(np.uint16)).save(studies / "slice_000.png")

    spec = importlib.util.spec_from_file_location("ct_app", app_dir / "main.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    app = module.CTClassificationApp(str(app_dir), str(studies), {"models": "ct_classification",
                                                                  "zoo_source": "github", "skip_trainers": "true",
                                                                  "preload": "false"})
    result = app.infer(request={"model": "ct_classification", "image": "slice_000"})
    prediction = result["params"]["prediction"]  # MONAI Label lower-cases the class names
    assert [(p["idx"], p["label"]) for p in prediction] == [(0, "noncovid"), (1, "covid")]
    assert sum(p["score"] for p in prediction) == pytest.approx(1.0, abs=1e-4)
