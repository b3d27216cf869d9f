"""SparK invariants in 2D and 3D: sparsity at every stage, visible-only batch norm, masked-only loss, mask-token
gradients, a tiny overfit, and encoders that load into the stock torchvision (2D) and MONAI (3D) ResNets."""

import monai.networks.nets
import pytest
import torch
import torchvision

from medssl_monai.networks.spark import MaskContext, SparK, SparseBatchNorm, SparseSyncBatchNorm, upsample_mask
from medssl_monai.utils import channels_last_format


@pytest.fixture(params=[2, 3], ids=["2d", "3d"])
def model(request):
    """A tiny SparK with a 2x2 (2D, 64 px) or 2x2x2 (3D, 32 voxels, MONAI's stride-16 ResNet) mask grid."""
    torch.manual_seed(0)
    size = 64 if request.param == 2 else 32
    return SparK("resnet18", in_channels=1, image_size=size, mask_ratio=0.5, decoder_width=64,
                 spatial_dims=request.param)


def test_masked_positions_are_zero_after_every_stage(model):
    size = model.image_size
    x = torch.randn(3, 1, *size)
    mask = model.random_mask(3, "cpu")
    outputs = []
    hooks = [m.register_forward_hook(lambda mod, inp, out: outputs.append(out))
             for m in model.encoder.net.modules() if m is not model.encoder.net and not list(m.children())]
    hooks += [getattr(model.encoder.net, f"layer{i}").register_forward_hook(lambda mod, inp, out: outputs.append(out))
              for i in range(1, 5)]
    model.encoder(x * upsample_mask(mask, size), mask)
    for h in hooks:
        h.remove()
    assert len(outputs) > 40
    for out in outputs:
        hidden = ~upsample_mask(mask, out.shape[2:]).expand_as(out)
        assert torch.all(out[hidden] == 0)
        assert out[~hidden].abs().sum() > 0


def test_mask_context_upsamples_each_mask_once_per_size():
    ctx = MaskContext()
    first, second = torch.rand(2, 1, 4, 4) > 0.5, torch.rand(2, 1, 4, 4) > 0.5
    ctx.mask = first
    at_16 = ctx.at((16, 16))
    assert ctx.at([16, 16]) is at_16  # reused by every module at that size
    assert torch.equal(at_16, upsample_mask(first, (16, 16)))
    ctx.mask = second  # a new mask forgets the old one's upsamplings
    assert torch.equal(ctx.at((16, 16)), upsample_mask(second, (16, 16)))
    ctx.mask = None
    with pytest.raises(RuntimeError, match="without a mask"):
        ctx.at((16, 16))


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("channels_last", [False, True], ids=["channels_first", "channels_last"])
@pytest.mark.parametrize("equal_counts", [True, False], ids=["gathered", "boolean_indexed"])
@pytest.mark.parametrize("norm", [SparseBatchNorm, SparseSyncBatchNorm], ids=["bn", "sync_bn"])
def test_sparse_batch_norm_is_a_batch_norm_of_the_visible_positions(dims, channels_last, equal_counts, norm):
    """Output, input gradient and running statistics against nn.BatchNorm1d on the visible positions picked out
    by hand, in either memory layout, for masks with equal visible counts (gathered) and unequal ones; the
    synchronised one outside DDP, where torch runs it as a plain batch norm."""
    torch.manual_seed(0)
    ctx, bn, reference = MaskContext(), norm(4), torch.nn.BatchNorm1d(4)
    bn.context = ctx
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-1, 1)
    reference.load_state_dict(bn.state_dict())
    cells = 2 ** dims
    visible_cells = [[0, 1], [1, 2], [0, cells - 1]] if equal_counts else [[0], [0, 1, 2], [1]]
    mask = torch.zeros(3, cells, dtype=torch.bool)
    for row, kept in zip(mask, visible_cells):
        row[kept] = True
    ctx.mask = mask.view(3, 1, *(2,) * dims)
    size = (8,) * dims
    visible = upsample_mask(ctx.mask, size)[:, 0]  # (B, *S)
    x = torch.where(visible.unsqueeze(1), torch.randn(3, 4, *size), 1e4)  # masked values must not leak in
    if channels_last:
        x = x.contiguous(memory_format=channels_last_format(x.ndim))
    x.requires_grad_()
    weights = torch.randn(3, 4, *size)
    out = bn(x)
    (out * weights).sum().backward()
    assert (ctx.positions(size) is None) != equal_counts

    picked = x.detach().clone().requires_grad_()
    expected = reference(picked.movedim(1, -1)[visible])  # (N_visible, C)
    (expected * weights.movedim(1, -1)[visible]).sum().backward()
    torch.testing.assert_close(out.movedim(1, -1)[visible], expected)
    assert torch.all(out.movedim(1, -1)[~visible] == 0)
    torch.testing.assert_close(x.grad, picked.grad)
    torch.testing.assert_close(bn.running_mean, reference.running_mean)
    torch.testing.assert_close(bn.running_var, reference.running_var)
    assert out.is_contiguous(memory_format=channels_last_format(x.ndim) if channels_last else torch.contiguous_format)
    ctx.mask = mask[:2].view(2, 1, *(2,) * dims)
    with pytest.raises(ValueError, match="a mask of 2 samples for a batch of 3"):
        bn(x)


def test_only_masked_patches_drive_the_loss_and_mask_tokens_learn(model):
    x = torch.randn(2, 1, *model.image_size)
    mask = model.random_mask(2, "cpu")
    captured = {}

    def keep(module, inputs, out):
        out.retain_grad()
        captured["pred"] = out

    model.decoder.register_forward_hook(keep)
    out = model(x, mask)
    out["loss"].backward()
    grad = captured["pred"].grad  # (B, 1, *S)
    visible = upsample_mask(mask, model.image_size)
    assert torch.all(grad[visible] == 0)
    assert grad[~visible].abs().sum() > 0
    for token in model.mask_tokens:
        assert token.grad is not None and token.grad.abs().sum() > 0


def test_mask_has_the_requested_ratio_and_bad_sizes_fail(model):
    dims = len(model.image_size)
    mask = model.random_mask(5, "cpu")
    assert mask.shape == (5, 1, *(2,) * dims) and torch.all(mask.view(5, -1).sum(1) == 2 ** dims // 2)
    with pytest.raises(ValueError, match="multiples of 32 for SparK \\(2D\\)"):
        SparK("resnet18", image_size=100)
    with pytest.raises(ValueError, match="multiples of 16 for SparK \\(3D\\)"):
        SparK("resnet18", image_size=(32, 32, 24), spatial_dims=3)
    with pytest.raises(ValueError, match="leaves no patch of the 1x1 grid masked"):
        SparK("resnet18", image_size=32)
    with pytest.raises(ValueError, match=r"expects input \(B, 1, " + ", ".join(map(str, model.image_size))):
        model(torch.randn(1, 1, *(16,) * dims))


def test_patchify_is_row_major_and_unpatchify_inverts_it(model):
    x = torch.randn(2, 1, *model.image_size)
    patches = model.patchify(x)  # (B, L, p^d)
    p, dims = model.encoder.downsample, len(model.image_size)
    assert patches.shape == (2, 2 ** dims, p ** dims)
    torch.testing.assert_close(patches[:, -1], x[(..., *(slice(p, 2 * p),) * dims)].flatten(1))  # last cell
    assert torch.equal(model.unpatchify(patches, model.image_size), x)


def test_tiny_overfit_halves_the_loss():
    torch.manual_seed(0)
    model = SparK("resnet18", in_channels=1, image_size=64, mask_ratio=0.5, decoder_width=64)
    ramp = torch.linspace(0, 1, 64)
    x = torch.stack([ramp.view(1, 64) * ramp.view(64, 1), (1 - ramp).view(1, 64) * ramp.view(64, 1)]).unsqueeze(1)
    x = x + 0.05 * torch.randn(2, 1, 64, 64)  # (2, 1, 64, 64), distinct images
    mask = torch.tensor([[True, False], [False, True]]).view(1, 1, 2, 2).repeat(2, 1, 1, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(40):
        opt.zero_grad()
        loss = model(x, mask)["loss"]
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses[::10]


@pytest.mark.parametrize("backbone,in_channels", [("resnet18", 3), ("resnet50", 1)])
def test_encoder_loads_into_torchvision_with_only_fc_missing(backbone, in_channels):
    model = SparK(backbone, in_channels=in_channels, image_size=64, decoder_width=64)
    net = getattr(torchvision.models, backbone)()
    if in_channels == 1:
        net.conv1 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    result = net.load_state_dict(model.encoder.backbone_state_dict(), strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and result.unexpected_keys == []


@pytest.mark.parametrize("backbone", ["resnet18", "resnet50"])
def test_3d_encoder_loads_into_monai_resnet_with_only_fc_missing(backbone):
    model = SparK(backbone, image_size=32, decoder_width=64, spatial_dims=3)
    net = getattr(monai.networks.nets, backbone)(spatial_dims=3, n_input_channels=1)
    result = net.load_state_dict(model.encoder.backbone_state_dict(), strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and result.unexpected_keys == []
