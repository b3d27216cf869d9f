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
    assert np.allclose(np.linalg.norm(np.asarray(image.affine)[:3, :3], axis=0), 4.0)  # isotropic 4 mm voxels
    assert torch.equal(patches[(0, 7)]["image"], image)  # the same sample seed, the same patch
    assert not torch.equal(patches[(0, 8)]["image"], image)
    assert len(patches) == len(patches.data)  # one sample a volume (the sampler draws more)
    with pytest.raises(ValueError, match="patch_size must be three"):
        volume_patch_dataset(patches.data, (32, 32))


def test_spark_3d_learns_from_a_batch_of_patches(patches):
    """A loader of seeded patches feeds 3D SparK (MONAI's ResNet18): the loss is finite and falls on the batch."""
    loader = torch.utils.data.DataLoader(patches, batch_size=2, sampler=ResumableSampler(patches, seed=0))
    batch = next(iter(loader))["image"].as_tensor()  # (2, 1, 32, 32, 32)
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
