"""The architecture holds: layers import only downward, the CLI starts without torch, no module shadows the
standard library, the pre-training bundles' configs are composed from their one shared source, and every bundle's
loader workers follow its `loader_priority`."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "medssl_monai"
# lower numbers are lower layers; a module may import its own layer and the ones below (docs/architecture.md)
LAYERS = {"utils": 0, "checkpoints": 1, "data": 1, "networks": 2, "losses": 2, "optimizers": 3, "engines": 3,
          "handlers": 3, "evaluation": 3, "bundle": 4, "study": 4, "cli": 5}


def _imports(path: Path, package: Path) -> list[str]:
    """The medssl_monai modules ``path`` imports, lazy imports inside functions included."""
    parts = path.relative_to(package).with_suffix("").parts
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: against the package of the importing module
                base = parts[: len(parts) - node.level]
                found.append(".".join(["medssl_monai", *base, *([node.module] if node.module else [])]))
            elif node.module:
                found.append(node.module)
    return [m for m in found if m.split(".")[0] == "medssl_monai" and "." in m]


def upward_imports(package: Path) -> list[str]:
    """``"<file> imports <module>"`` for every import of a higher layer."""
    upward = []
    for path in sorted(package.rglob("*.py")):
        top = path.relative_to(package).parts[0].removesuffix(".py")
        if top == "__init__":
            continue
        for module in _imports(path, package):
            if LAYERS[module.split(".")[1]] > LAYERS[top]:
                upward.append(f"{path.relative_to(package.parent)} imports {module}")
    return upward


def test_every_module_belongs_to_a_layer():
    tops = {p.relative_to(PACKAGE).parts[0].removesuffix(".py") for p in PACKAGE.rglob("*.py")}
    assert tops - {"__init__"} == set(LAYERS)


def test_layers_import_only_downward():
    assert not upward_imports(PACKAGE), "upward imports: " + "; ".join(upward_imports(PACKAGE))


def test_the_layer_check_catches_upward_imports(tmp_path):
    package = tmp_path / "medssl_monai"
    (package / "networks").mkdir(parents=True)
    (package / "networks" / "net.py").write_text(
        "from medssl_monai.utils import cosine\n"
        "def f():\n    from medssl_monai.handlers import CheckpointWriter\n"  # lazy imports count too
        "from ..study import Study\n")
    assert sorted(upward_imports(package)) == ["medssl_monai/networks/net.py imports medssl_monai.handlers",
                                               "medssl_monai/networks/net.py imports medssl_monai.study"]


def test_no_module_shadows_the_standard_library():
    names = {p.stem for p in PACKAGE.rglob("*.py")} | {p.name for p in PACKAGE.rglob("*") if p.is_dir()}
    assert not names & set(sys.stdlib_module_names)


def test_cli_help_starts_without_torch():
    code = ("import sys\nfrom medssl_monai.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch imported'\nprint('ok')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-2000:]
    assert "study" in result.stdout and "demo-data" in result.stdout


def test_cli_layout_choices_are_the_checkpoint_layouts():
    from medssl_monai.checkpoints import LAYOUTS
    from medssl_monai.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["export-encoder"]
    assert next(a for a in sub._actions if a.dest == "layout").choices == LAYOUTS


def test_pretraining_configs_are_composed_from_the_shared_source():
    from medssl_monai.bundle import composed_pretrain_configs

    composed = composed_pretrain_configs()
    assert len(composed) == 12  # train, multi_gpu_train and the 3D overlay of four methods
    stale = [str(path.relative_to(ROOT)) for path, text in composed.items() if path.read_text() != text]
    assert not stale, f"{stale} differ from medssl_monai/bundle/templates/pretrain: run `medssl-monai compose-configs`"
    templates = PACKAGE / "bundle" / "templates" / "pretrain"
    for path, text in composed.items():  # each composed file is self-contained: no marker, no shared reference
        assert "__method_ids__" not in text and "templates" not in text
        common = json.loads((templates / path.name).read_text())
        assert set(common) - {"__method_ids__"} <= set(json.loads(text)), path


def test_compose_config_sets_nested_ids_and_places_new_ones_at_the_marker():
    from medssl_monai.bundle import compose_config

    common = {"a": 1, "__method_ids__": "", "net": {"_target_": "X", "k": 1}, "hs": [{"x": 1}, {"x": 2}]}
    overlay = {"lr": 0.1, "a": 2, "net#k": 3, "net#extra": "@lr", "hs#1#x": 5, "other#deep": True}
    out = compose_config(common, overlay)
    assert list(out) == ["a", "lr", "other#deep", "net", "hs"]
    assert out["a"] == 2 and out["net"] == {"_target_": "X", "k": 3, "extra": "@lr"} and out["hs"][1] == {"x": 5}
    assert common["net"] == {"_target_": "X", "k": 1}  # the source is not changed



def _worker_loaders(node: object) -> list[dict]:
    """Every DataLoader definition in a config tree that may start worker processes (``num_workers`` not 0)."""
    found = []
    if isinstance(node, dict):
        if node.get("_target_") == "DataLoader" and node.get("num_workers", 0) != 0:
            found.append(node)
        for value in node.values():
            found += _worker_loaders(value)
    elif isinstance(node, list):
        for value in node:
            found += _worker_loaders(value)
    return found


@pytest.mark.parametrize("bundle", sorted(p.name for p in (ROOT / "bundles").iterdir() if p.is_dir()))
def test_every_bundle_loader_sets_its_workers_priority(bundle):
    """Every DataLoader of a bundle that starts workers follows the ``loader_priority`` id (an idle-priority
    worker stops stalling a CPU step) and keeps MONAI's per-worker seeding through WorkerInit."""
    configs = ROOT / "bundles" / bundle / "configs"
    assert json.loads((configs / "train.json").read_text()).get("loader_priority") == "auto"
    loaders = {config.name: _worker_loaders(json.loads(config.read_text())) for config in configs.glob("*.json")}
    assert loaders["train.json"], f"{bundle}: train.json has no DataLoader with workers"
    for name, found in loaders.items():
        for loader in found:
            assert loader.get("worker_init_fn") == {"_target_": "medssl_monai.data.WorkerInit",
                                                    "priority": "@loader_priority", "device": "@device"}, name
