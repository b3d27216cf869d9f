"""Reading pre-trained encoders: the project's own files and the reference study's four published layouts."""

import pytest
import torch
import torchvision
from monai.networks.nets import ResNet

from medssl_monai.cli import main
from medssl_monai.checkpoints import adapt_stem, read_backbone
from medssl_monai.networks.pretrained import load_pretrained


def _classifier(backbone="resnet50", in_channels=1, num_classes=2):
    """The ct_classification network: MONAI's ResNet with torchvision's names and stem."""
    block, layers = ("bottleneck", [3, 4, 6, 3]) if backbone == "resnet50" else ("basic", [2, 2, 2, 2])
    return ResNet(block, layers, [64, 128, 256, 512], spatial_dims=2, n_input_channels=in_channels,
                  num_classes=num_classes, conv1_t_stride=2, bias_downsample=False)


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """The four published layouts, built with their key names around one random 3-channel ResNet50."""
    torch.manual_seed(0)
    net = torchvision.models.resnet50()
    backbone = {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    head = {"0.weight": torch.randn(8, 2048), "0.bias": torch.randn(8), "2.weight": torch.randn(4, 8)}
    lightning = {"epoch": 3, "global_step": 120, "optimizer_states": [], "lr_schedulers": [],
                 "hyper_parameters": {"lr": 0.015}}
    files = {
        "spark": {"module": backbone, "arch": "resnet50", "is_pretrain": True},
        "moco": {"state_dict": {**{f"encoder_q.{k}": v for k, v in backbone.items()},
                                **{f"encoder_q.fc.{k}": v for k, v in head.items()},
                                **{f"encoder_k.{k}": v.clone() for k, v in backbone.items()},
                                "queue": torch.randn(128, 16), "queue_ptr": torch.zeros(1, dtype=torch.long),
                                "val_queue": torch.randn(128, 16), "val_queue_ptr": torch.zeros(1, dtype=torch.long)},
                 **lightning},
        "byol": {"state_dict": {**{f"online_network.encoder.{k}": v for k, v in backbone.items()},
                                **{f"online_network.projector.{k}": v for k, v in head.items()},
                                **{f"online_network.predictor.{k}": v for k, v in head.items()},
                                **{f"target_network.encoder.{k}": v.clone() for k, v in backbone.items()}},
                 **lightning},
        "swav": {"state_dict": {**{f"model.{k}": v for k, v in backbone.items()},
                                **{f"model.projection_head.{k}": v for k, v in head.items()},
                                "model.prototypes.weight": torch.randn(500, 4)}, **lightning},
    }
    root = tmp_path_factory.mktemp("released")
    paths = {}
    for name, content in files.items():
        paths[name] = root / f"{name}.{'pth' if name == 'spark' else 'ckpt'}"
        torch.save(content, paths[name])
    return paths, backbone


@pytest.mark.parametrize("fmt", ["spark", "moco", "byol", "swav"])
@pytest.mark.parametrize("given", ["auto", "explicit"])
def test_each_published_layout_loads_every_backbone_tensor(released, fmt, given):
    paths, backbone = released
    net = _classifier(in_channels=1)
    weights = load_pretrained(net, paths[fmt], fmt if given == "explicit" else "auto")
    assert weights.format == fmt and len(weights.state) == len(backbone)
    state = net.state_dict()
    for k, v in backbone.items():
        expected = v.sum(dim=1, keepdim=True) if k == "conv1.weight" else v  # 3-channel stem summed
        assert torch.equal(state[k], expected), k
    assert weights.notes == ["3-channel stem summed over its input channels for 1-channel input"]


def test_a_wrong_layout_or_backbone_fails_with_the_keys(released, tmp_path):
    paths, _ = released
    with pytest.raises(ValueError, match=r"moco.ckpt: cannot initialise the backbone; tried byol .*keys begin with encoder_k., encoder_q., queue"):
        load_pretrained(_classifier(), paths["moco"], "byol")
    with pytest.raises(ValueError, match=r"closest: .*unexpected keys .*resnet18/34/50"):
        load_pretrained(_classifier("resnet18"), paths["spark"])
    with pytest.raises(ValueError, match="unknown pretrained_format 'simclr'"):
        load_pretrained(_classifier(), paths["spark"], "simclr")
    torch.save({"optimizer": {"lr": 1.0}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt: not a state_dict and no known wrapper"):
        load_pretrained(_classifier(), tmp_path / "other.pt")


class _AttributeDict(dict):
    """Stands for Lightning's hyper-parameter container, which weights_only loading refuses."""


def test_lightning_pickles_need_the_trust_switch(released, tmp_path):
    paths, _ = released
    content = torch.load(paths["swav"], weights_only=True)
    content["hyper_parameters"] = _AttributeDict(lr=0.15)
    torch.save(content, tmp_path / "pickled.ckpt")
    with pytest.raises(ValueError, match="trust_checkpoint=True"):
        load_pretrained(_classifier(), tmp_path / "pickled.ckpt")
    assert load_pretrained(_classifier(), tmp_path / "pickled.ckpt", trust_checkpoint=True).format == "swav"


def test_stem_conversion_keeps_the_function_of_a_grey_image():
    torch.manual_seed(1)
    one = _classifier("resnet18", in_channels=1).eval()
    three = _classifier("resnet18", in_channels=3).eval()
    state = dict(one.state_dict())
    state["conv1.weight"], note = adapt_stem(state["conv1.weight"], 3)
    assert "replicated and divided by 3" in note
    three.load_state_dict(state)
    x = torch.rand(2, 1, 64, 64)
    assert torch.allclose(three(x.repeat(1, 3, 1, 1)), one(x), atol=1e-5)
    with pytest.raises(ValueError, match="cannot convert a 2-channel stem"):
        adapt_stem(torch.zeros(64, 2, 7, 7), 1)


def test_no_checkpoint_means_from_scratch(caplog):
    net = _classifier("resnet18")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with caplog.at_level("INFO"):
        assert load_pretrained(net, None) is None
    assert "trained from scratch" in caplog.text
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_the_demo_default_encoder_must_exist_and_fit_and_the_error_says_how_to_make_it(tmp_path, monkeypatch):
    """The demo's default encoder is looked up, never replaced by a silent start from scratch."""
    import medssl_monai.bundle as bundle
    from medssl_monai.bundle import roots
    from medssl_monai.checkpoints import save_encoder
    from medssl_monai.networks import resnet

    monkeypatch.setattr(roots, "SOURCE_ROOT", tmp_path)
    command = "python -m monai.bundle run --config_file bundles/spark_pretrain/configs/train.json --backbone resnet18"
    with pytest.raises(FileNotFoundError, match="no spark demo encoder") as missing:
        bundle.demo_encoder("spark", "resnet18")
    assert command in str(missing.value) and "--pretrained_checkpoint PATH (none: from scratch)" in str(missing.value)
    path = tmp_path / "bundles" / "spark_pretrain" / "models" / "encoder.pt"
    path.parent.mkdir(parents=True)
    save_encoder(resnet("resnet18", 1).state_dict(), path)
    assert bundle.demo_encoder("spark", "resnet18") == str(path)
    with pytest.raises(ValueError, match="is a resnet18, this run a resnet50") as other:
        bundle.demo_encoder("spark", "resnet50")
    assert "--backbone resnet50" in str(other.value)


@pytest.mark.parametrize("argv", [["--pretrained_checkpoint", "None"], ["--pretrained_checkpoint=none"]])
def test_none_on_the_command_line_means_from_scratch_although_monai_drops_it(argv, tmp_path, monkeypatch):
    """``python -m monai.bundle run ... --pretrained_checkpoint None`` never reaches the config (MONAI drops
    None overrides); the default sees it on the command line and starts from scratch, encoder or not."""
    import medssl_monai.bundle as bundle
    from medssl_monai.bundle import roots

    monkeypatch.setattr(roots, "SOURCE_ROOT", tmp_path)
    monkeypatch.setattr("sys.argv", ["monai.bundle", "run", "--config_file", "train.json", *argv])
    assert bundle.demo_encoder("spark", "resnet18") is None
    monkeypatch.setattr("sys.argv", ["monai.bundle", "run", "--pretrained_checkpoint_format", "none"])
    with pytest.raises(FileNotFoundError, match="no spark demo encoder"):
        bundle.demo_encoder("spark", "resnet18")


def test_the_demo_data_default_is_looked_up_never_generated(tmp_path, monkeypatch):
    import medssl_monai.bundle as bundle
    from medssl_monai.bundle import roots
    from medssl_monai.data.demo import DEMO_VERSION

    monkeypatch.setattr(roots, "SOURCE_ROOT", tmp_path)
    (tmp_path / "bundles").mkdir()
    with pytest.raises(FileNotFoundError, match="is missing: make it with `medssl-monai demo-data`"):
        bundle.demo_data_dir()
    assert not (tmp_path / "data").exists()  # nothing was made
    (tmp_path / "data" / "demo").mkdir(parents=True)
    (tmp_path / "data" / "demo" / "demo.json").write_text(f'{{"version": {DEMO_VERSION - 1}}}')
    with pytest.raises(FileNotFoundError, match=f"generator version {DEMO_VERSION - 1}, not {DEMO_VERSION}"):
        bundle.demo_data_dir()
    (tmp_path / "data" / "demo" / "demo.json").write_text(f'{{"version": {DEMO_VERSION}}}')
    assert bundle.demo_data_dir() == str(tmp_path / "data" / "demo")


def test_inspect_checkpoint_command(released, tmp_path, capsys):
    paths, _ = released
    assert main(["inspect-checkpoint", str(paths["byol"])]) == 0
    out = capsys.readouterr().out
    assert "format: byol" in out and "backbone: resnet50 with a 3-channel stem" in out and "matched: 318 of 318" in out
    torch.save({"state_dict": {"layer9.weight": torch.zeros(1)}}, tmp_path / "junk.ckpt")
    assert main(["inspect-checkpoint", str(tmp_path / "junk.ckpt")]) == 1
    assert "cannot initialise a backbone" in capsys.readouterr().err


def test_the_projects_own_encoder_and_training_checkpoint_load(tmp_path):
    from medssl_monai.checkpoints import RunInfo, save_encoder
    from medssl_monai.networks import MoCo

    method = MoCo("resnet18", hidden_dim=16, out_dim=8, queue_size=8)
    backbone = {k: v for k, v in method.backbone.state_dict().items()}
    for name, channels in (("encoder.pt", 3), ("encoder.safetensors", 3), ("encoder_1ch.pt", 1)):
        save_encoder(backbone, tmp_path / name, in_channels=channels)
    torch.save({"network": method.state_dict(), "info": RunInfo("moco").state_dict()},
               tmp_path / "checkpoint_10.pt")
    for name, fmt in (("encoder.pt", "torchvision"), ("encoder.safetensors", "torchvision"),
                      ("encoder_1ch.pt", "torchvision"), ("checkpoint_10.pt", "medssl")):
        net = _classifier("resnet18")  # 1 channel: the 3-channel files' stems are summed back, exactly
        assert load_pretrained(net, tmp_path / name).format == fmt
        assert torch.equal(net.state_dict()["layer4.1.conv2.weight"], backbone["layer4.1.conv2.weight"])
        assert torch.allclose(net.state_dict()["conv1.weight"], backbone["conv1.weight"], atol=1e-6)
    (tmp_path / "broken.safetensors").write_bytes(b"\x00" * 12)
    with pytest.raises(ValueError, match="broken.safetensors: not a readable safetensors file"):
        read_backbone(tmp_path / "broken.safetensors", _classifier("resnet18"))
    with pytest.raises(ValueError, match="cannot initialise the backbone"):
        read_backbone(tmp_path / "checkpoint_10.pt", _classifier("resnet50"))
