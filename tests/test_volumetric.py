"""Volumetric pre-training data and networks: random 3D patches of HU volumes, resampled and windowed, seeded per
sample; SparK in 3D on those patches."""

import numpy as np
import pytest
import torch

from medssl_monai.data import ResumableSampler, volume_patch_dataset
from medssl_monai.networks import SparK


@pytest.fixture(scope="module")
def patches(demo_dir):
    return volume_patch_dataset(demo_dir / "datalist.json", (32, 32, 32), window="lung", spacing=[4, 4, 4])


def test_patches_are_windowed_resampled_and_seeded_per_sample(patches):
    sample = patches[(0, 7)]
    image = sample["image"]
    assert image.shape == (1, 32, 32, 32) and 0 <= float(image.min()) and float(image.max()) <= 1
    volume = patches.dataset[0]["image"]  # the cached volume, before cropping
    assert np.allclose(np.linalg.norm(np.asarray(volume.affine)[:3, :3], axis=0), 4.0)  # isotropic 4 mm voxels
    assert torch.equal(patches[(0, 7)]["image"], image)  # the same sample seed, the same patch
    assert not torch.equal(patches[(0, 8)]["image"], image)
    assert len(patches) == len(patches.data)  # one sample a volume (the sampler draws more)
    with pytest.raises(ValueError, match="patch_size must be three"):
        volume_patch_dataset(patches.data, (32, 32))


@pytest.mark.parametrize("cache", ["disk", "none"])
def test_patches_are_the_same_whatever_the_cache(patches, cache, tmp_path):
    """The 3D bundles' ``cache`` id: a volume resampled and windowed once into ``cache_dir`` (MONAI's
    PersistentDataset, one file a volume, so memory does not grow with the archive) or not kept at all gives the
    patches the in-memory cache gives, sample seed for sample seed."""
    other = volume_patch_dataset(patches.data[:2], (32, 32, 32), window="lung", spacing=[4, 4, 4], cache=cache,
                                 cache_dir=tmp_path / "store")
    for item in [(0, 7), (1, 3)]:
        assert torch.equal(other[item]["image"], patches[item]["image"])
    assert len(list((tmp_path / "store").glob("*.pt"))) == (2 if cache == "disk" else 0)


def test_spark_3d_learns_from_a_batch_of_patches(patches):
    """A loader of seeded patches feeds 3D SparK (MONAI's ResNet18): the loss is finite and falls on the batch."""
    loader = torch.utils.data.DataLoader(patches, batch_size=2, sampler=ResumableSampler(patches, seed=0))
    batch = next(iter(loader))["image"]  # (2, 1, 32, 32, 32)
    torch.manual_seed(0)
    model = SparK("resnet18", image_size=32, mask_ratio=0.5, decoder_width=64, spatial_dims=3)
    mask = model.random_mask(2, "cpu")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        out = model(batch, mask)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        losses.append(out["loss"].item())
    assert np.isfinite(losses).all() and losses[-1] < losses[0], losses
    assert out["reconstruction"].shape == batch.shape


# each method's own small settings: SparK's decoder, the joint-embedding heads, SwAV's local views
TINY_3D = {
    "spark": ["--network_def#decoder_width", "32"],
    "moco": ["--network_def#hidden_dim", "32", "--network_def#out_dim", "16"],
    "swav": ["--network_def#hidden_dim", "32", "--network_def#out_dim", "16", "--local_size", "[16,16,16]",
             "--num_local_views", "2"],
}
IMAGE_TAGS_3D = {"spark": b"train/images_masked_input_reconstruction", "moco": b"train/images_second_view",
                 "swav": b"train/images_second_view"}


@pytest.mark.parametrize("method", sorted(TINY_3D))
def test_3d_overlay_runs_through_monai_bundle_and_exports_for_monai_resnet(method, demo_dir, tmp_path):
    """``train.json`` + ``train_3d.json`` of a method's bundle through ``python -m monai.bundle``: one step on
    32-voxel patches at 6 mm, an encoder that loads into MONAI's stock 3D ResNet18 with only ``fc`` missing, and
    middle-slice images in TensorBoard."""
    import subprocess
    import sys
    from pathlib import Path

    import monai.networks.nets

    configs = Path(__file__).resolve().parents[1] / "bundles" / f"{method}_pretrain" / "configs"
    result = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file",
         f"['{configs / 'train.json'}','{configs / 'train_3d.json'}']", "--dataset_dir", str(demo_dir),
         "--backbone", "resnet18", "--patch_size", "[32,32,32]", "--spacing", "[6,6,6]", "--batch_size", "2",
         "--samples_per_epoch", "2", "--num_workers", "0", *TINY_3D[method],
         "--image_log_interval", "1", "--ckpt_dir", str(tmp_path / "models"), "--log_dir", str(tmp_path / "logs")],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    state = torch.load(tmp_path / "models" / "encoder.pt", weights_only=True)
    loaded = monai.networks.nets.resnet18(spatial_dims=3, n_input_channels=1).load_state_dict(state, strict=False)
    assert sorted(loaded.missing_keys) == ["fc.bias", "fc.weight"] and loaded.unexpected_keys == []
    assert not (tmp_path / "models" / "encoder_1ch.pt").exists()  # the 3D stem is the 1-channel one already
    assert not list((tmp_path / "models").glob("encoder_*.pth"))  # no 2D release layout
    events = b"".join(f.read_bytes() for f in (tmp_path / "logs").glob("events.out.tfevents.*"))
    assert IMAGE_TAGS_3D[method] in events


def test_3d_views_crop_rotate_in_plane_and_are_seeded():
    """3D ``ct_augmentation``: views of the requested size from a patch, rotation about the Z axis only (a volume
    constant along Z stays so), quarter turns in the axial plane, the same seed the same view."""
    from medssl_monai.data import ct_augmentation

    patch = torch.rand(1, 24, 24, 1).repeat(1, 1, 1, 12)  # (1, X, Y, Z), constant along Z
    geometry = {"size": [16, 16, 8], "spatial_dims": 3, "scale": (1.0, 1.0), "flips": False, "intensity_prob": 0,
                "blur_prob": 0, "noise_prob": 0}
    rotated = ct_augmentation(rotation_prob=1.0, **geometry).set_random_state(0)({"image": patch})["image"]
    resized = ct_augmentation(rotation_prob=0.0, **geometry)({"image": patch})["image"]
    assert rotated.shape == resized.shape == (1, 16, 16, 8)
    assert torch.allclose(rotated[..., 0], rotated[..., -1])  # turned in the axial plane only
    assert not torch.allclose(rotated, resized, atol=1e-3)  # and turned
    turned = ct_augmentation(rotation_prob=0.0, rotate90_prob=1.0, **geometry).set_random_state(0)({"image": patch})
    assert any(torch.allclose(turned["image"], torch.rot90(resized, k, dims=(1, 2)), atol=1e-5) for k in (1, 2, 3))
    full = ct_augmentation(size=[16, 16, 8], spatial_dims=3)
    a = full.set_random_state(3)({"image": patch.clone()})["image"]
    b = full.set_random_state(3)({"image": patch.clone()})["image"]
    c = full.set_random_state(4)({"image": patch.clone()})["image"]
    assert torch.equal(a, b) and not torch.equal(a, c) and a.shape == (1, 16, 16, 8)
    with pytest.raises(ValueError, match="spatial_dims must be 2"):
        ct_augmentation(spatial_dims=1)


def test_3d_runs_refuse_the_2d_release_layouts(tmp_path):
    from medssl_monai.checkpoints import write_encoder_files

    model = SparK("resnet18", image_size=32, decoder_width=32, spatial_dims=3)
    with pytest.raises(ValueError, match="release layouts \\['spark'\\] are those of the 2D reference study"):
        write_encoder_files(model.state_dict(), "spark", tmp_path, ("spark",))


@pytest.mark.parametrize("backbone", ["resnet18", "resnet50"])
def test_3d_unet_takes_monai_stock_weights_and_keeps_the_input_size(backbone, tmp_path):
    """A 3D U-Net on ``unet_backbone(backbone, 3)``: the weights of MONAI's stock 3D ResNet load into its encoder,
    every tensor, and its logits have the input's size (any multiple of its stride, 16, along each axis)."""
    import monai.networks.nets
    from monai.networks.nets import FlexibleUNet

    from medssl_monai.networks import unet_backbone
    from medssl_monai.networks.pretrained import load_pretrained

    stock = getattr(monai.networks.nets, backbone)(spatial_dims=3, n_input_channels=1).state_dict()
    torch.save(stock, tmp_path / "encoder.pt")
    net = FlexibleUNet(1, 4, unet_backbone(backbone, 3), spatial_dims=3)
    load_pretrained(net, tmp_path / "encoder.pt")
    encoder = net.encoder.state_dict()
    assert set(encoder) == {k for k in stock if not k.startswith("fc.")}
    assert all(torch.equal(encoder[k], stock[k]) for k in encoder)
    with torch.no_grad():
        assert net.eval()(torch.rand(1, 1, 48, 32, 16)).shape == (1, 4, 48, 32, 16)


def test_medicalnet_checkpoints_load_in_medicalnets_layout(tmp_path):
    """A MedicalNet file (``{"state_dict": {"module.conv1.weight", ...}}``, parameter-free shortcuts, a
    ``conv_seg`` head) loads, every tensor, into the U-Net built for ``pretrained_format: medicalnet`` (MONAI's
    own MedicalNet-layout encoder); into the stock layout it is refused with that advice."""
    from monai.networks.nets import FlexibleUNet, ResNetFeatures

    from medssl_monai.networks import unet_backbone
    from medssl_monai.networks.pretrained import load_pretrained

    medicalnet = ResNetFeatures("resnet18", pretrained=False, spatial_dims=3, in_channels=1).state_dict()
    assert not any(".downsample." in k for k in medicalnet)  # shortcut A
    wrapped = {"module." + k: v for k, v in medicalnet.items()}
    wrapped["module.conv_seg.0.weight"] = torch.zeros(32, 512, 3, 3, 3)
    torch.save({"state_dict": wrapped}, tmp_path / "resnet_18_23dataset.pth")
    net = FlexibleUNet(1, 4, unet_backbone("resnet18", 3, "medicalnet"), spatial_dims=3)
    weights = load_pretrained(net, tmp_path / "resnet_18_23dataset.pth", "medicalnet")
    assert weights.format == "medicalnet"
    assert all(torch.equal(net.encoder.state_dict()[k], v) for k, v in medicalnet.items())
    assert load_pretrained(FlexibleUNet(1, 4, unet_backbone("resnet18", 3, "medicalnet"), spatial_dims=3),
                           tmp_path / "resnet_18_23dataset.pth").format == "medicalnet"  # auto finds it too
    with pytest.raises(ValueError, match="resnet_18_23dataset.pth.*set pretrained_format medicalnet"):
        load_pretrained(FlexibleUNet(1, 4, unet_backbone("resnet18", 3), spatial_dims=3),
                        tmp_path / "resnet_18_23dataset.pth")
    with pytest.raises(ValueError, match="MedicalNet's encoders are 3D"):
        unet_backbone("resnet18", 2, "medicalnet")


def test_3d_segmentation_overlay_runs_through_monai_bundle(demo_dir, tmp_path):
    """``ct_segmentation``'s ``train.json`` + ``train_3d.json`` through ``python -m monai.bundle``: a 3D U-Net on a
    3D encoder (MONAI's stock ResNet18 weights), labelled 3D patches, sliding-window validation and test, Dice per
    organ in the report, the trained model's settings saying it is 3D, and ``inference.json`` predicting masks
    with it on the input's grid."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    import monai.networks.nets
    import nibabel as nib

    from medssl_monai.data.synthetic import ORGAN_LABELS

    torch.manual_seed(0)
    stock = monai.networks.nets.resnet18(spatial_dims=3, n_input_channels=1).state_dict()
    torch.save(stock, tmp_path / "enc.pt")
    configs = Path(__file__).resolve().parents[1] / "bundles" / "ct_segmentation" / "configs"
    result = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file",
         f"['{configs / 'train.json'}','{configs / 'train_3d.json'}']", "--dataset_dir", str(demo_dir),
         "--backbone", "resnet18", "--patch_size", "[32,32,16]", "--spacing", "[6,6,6]", "--batch_size", "2",
         "--samples_per_epoch", "2", "--max_epochs", "1", "--num_workers", "0", "--n_bootstrap", "20",
         "--pretrained_checkpoint", str(tmp_path / "enc.pt"), "--ckpt_dir", str(tmp_path / "models"),
         "--log_dir", str(tmp_path / "logs"), "--output_dir", str(tmp_path / "eval")],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"loaded {len(stock) - 2} backbone tensors" in result.stdout + result.stderr  # all but fc
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(metrics["dice"]) == {*ORGAN_LABELS[1:], "mean"}
    settings = json.loads((tmp_path / "models" / "model.json").read_text())["settings"]
    assert settings["spatial_dims"] == 3 and settings["patch_size"] == [32, 32, 16]
    state = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert state["encoder.conv1.weight"].shape == (64, 1, 7, 7, 7)
    # inference.json rebuilds the 3D model from model.json and writes masks on the input's grid
    datalist = json.loads((demo_dir / "datalist.json").read_text())
    image = nib.load(demo_dir / datalist["test"][0]["image"])
    (tmp_path / "in").mkdir()
    nib.save(image, tmp_path / "in" / "ct.nii.gz")
    result = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(configs / "inference.json"), "--ckpt_dir",
         str(tmp_path / "models"), "--input", str(tmp_path / "in"), "--output_dir", str(tmp_path / "masks")],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    mask = nib.load(tmp_path / "masks" / "ct_seg.nii.gz")
    assert mask.shape == image.shape and np.allclose(mask.affine, image.affine)
    assert np.asarray(mask.dataobj).max() < len(ORGAN_LABELS)
