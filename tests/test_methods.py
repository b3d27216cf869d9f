"""MoCo v2, BYOL and SwAV: losses equal lightly's reference implementations, and the state each method keeps
(momentum encoders, queues, prototypes, the EMA position) behaves as specified."""

import pytest
import torch
import torch.nn.functional as F

from medssl_monai.optimizers import build_optimizer
from medssl_monai.networks import BYOL, SwAV, MoCo
from medssl_monai.losses import InfoNCELoss, MaskedPatchLoss, SwAVLoss, SymmetricNegativeCosineLoss, sinkhorn
from medssl_monai.networks.momentum import ema_update_

import lightly.loss as lightly_loss  # a test dependency (the "test" extra): the reference implementations


def _views(n=2, b=4, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(b, 1, size, size, generator=g) for _ in range(n)]


def test_info_nce_equals_lightly_moco_loss():
    torch.manual_seed(0)
    q, k = F.normalize(torch.randn(8, 16), dim=1), F.normalize(torch.randn(8, 16), dim=1)
    queue = F.normalize(torch.randn(32, 16), dim=1)
    reference = lightly_loss.NTXentLoss(temperature=0.2, memory_bank_size=(32, 16))
    reference.memory_bank.bank = queue.clone()
    assert InfoNCELoss(0.2)(q, k, queue).item() == pytest.approx(reference(q, k).item(), abs=1e-5)


def test_byol_loss_equals_lightly_symmetric_negative_cosine():
    torch.manual_seed(1)
    p0, p1, z0, z1 = torch.randn(4, 8, 16).unbind(0)
    criterion = lightly_loss.NegativeCosineSimilarity()
    expected = 0.5 * (criterion(p0, z1) + criterion(p1, z0))
    assert SymmetricNegativeCosineLoss()(p0, p1, z0, z1).item() == pytest.approx(expected.item(), abs=1e-5)


@pytest.mark.parametrize("with_queue", [False, True])
def test_swav_loss_and_sinkhorn_equal_lightly(with_queue):
    from lightly.loss.swav_loss import sinkhorn as lightly_sinkhorn

    torch.manual_seed(2)
    high = [torch.randn(8, 10) for _ in range(2)]
    low = [torch.randn(8, 10) for _ in range(3)]
    queue = [torch.randn(16, 10) for _ in range(2)] if with_queue else None
    expected = lightly_loss.SwaVLoss(temperature=0.1, sinkhorn_iterations=3, sinkhorn_epsilon=0.05)(high, low, queue)
    assert SwAVLoss(0.1, 0.05, 3)(high, low, queue).item() == pytest.approx(expected.item(), abs=1e-5)
    assert torch.allclose(sinkhorn(high[0], 0.05, 3), lightly_sinkhorn(high[0], 3, 0.05), atol=1e-6)


def test_masked_patch_loss_equals_the_official_spark_formula():
    """SparK's loss as its authors compute it: each target patch normalised by its mean and (unbiased) variance
    + 1e-6, the mean squared error per patch, averaged over the masked patches."""
    torch.manual_seed(7)
    pred, target = torch.randn(3, 4, 12), torch.randn(3, 4, 12)  # (B, L, P)
    hidden = torch.tensor([[1, 0, 1, 0], [0, 0, 1, 1], [1, 1, 1, 0]], dtype=torch.bool)
    mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
    l2 = ((pred - (target - mean) / (var + 1e-6) ** 0.5) ** 2).mean(dim=2)
    expected = (l2 * hidden).sum() / (hidden.sum() + 1e-8)
    assert MaskedPatchLoss()(pred, target, hidden).item() == pytest.approx(expected.item(), rel=1e-6)


def test_ema_update_equals_lightly_and_moves_only_the_target():
    from lightly.models.utils import update_momentum

    torch.manual_seed(3)
    online, target = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)
    reference = torch.nn.Linear(4, 4)
    reference.load_state_dict(target.state_dict())
    before = {k: v.clone() for k, v in online.state_dict().items()}
    ema_update_(target, online, 0.9)
    update_momentum(online, reference, 0.9)
    for a, b in zip(target.parameters(), reference.parameters()):
        assert torch.allclose(a, b, atol=1e-7)
    assert all(torch.equal(before[k], v) for k, v in online.state_dict().items())


def test_sinkhorn_marginals():
    torch.manual_seed(4)
    scores = F.normalize(torch.randn(64, 128), dim=1) @ F.normalize(torch.randn(16, 128), dim=1).t()  # (B, K)
    codes = sinkhorn(scores, 0.05, 3)
    assert torch.allclose(codes.sum(dim=1), torch.ones(64), atol=1e-5)  # a distribution per sample
    per_prototype = codes.sum(dim=0)  # converges to B / K = 4
    raw = torch.softmax(scores / 0.05, dim=1).sum(dim=0)
    assert (per_prototype - 4).abs().max() < (raw - 4).abs().max()
    assert torch.allclose(sinkhorn(scores, 0.05, 200).sum(dim=0), torch.full((16,), 4.0), atol=1e-3)


def test_moco_queue_enqueues_and_wraps_around():
    model = MoCo("resnet18", hidden_dim=32, out_dim=8, queue_size=10)
    keys = torch.arange(6 * 8, dtype=torch.float).view(6, 8)
    model.enqueue(keys)
    assert int(model.queue_ptr) == 6 and torch.equal(model.queue[:6], keys)
    model.enqueue(keys + 100)  # 4 fill the end, 2 wrap to the front and replace the oldest
    assert int(model.queue_ptr) == 2
    assert torch.equal(model.queue[6:], keys[:4] + 100) and torch.equal(model.queue[:2], keys[4:] + 100)
    assert torch.equal(model.queue[2:6], keys[2:6])
    with pytest.warns(UserWarning, match="shrinking it to 50"):
        assert len(MoCo("resnet18", hidden_dim=32, out_dim=8, dataset_size=50).queue) == 50


def test_moco_step_updates_key_encoder_by_momentum_after_the_step_and_fills_the_queue():
    torch.manual_seed(5)
    model = MoCo("resnet18", hidden_dim=32, out_dim=8, queue_size=16, momentum=0.9)
    opt = build_optimizer(model, "sgd", lr=0.5, weight_decay=0.0)
    key_before = model.momentum_head[0].weight.detach().clone()
    model(_views()).get("loss").backward()
    assert torch.equal(model.momentum_head[0].weight, key_before)  # forward leaves the key encoder alone
    opt.step()
    model.update_momentum()  # what the trainer does after the optimiser step
    online = model.head[0].weight.detach().clone()
    assert torch.allclose(model.momentum_head[0].weight, 0.9 * key_before + 0.1 * online, atol=1e-6)
    assert all(not p.requires_grad for p in model.momentum_backbone.parameters())
    out = model(_views(seed=1))
    assert int(model.queue_ptr) == 8 and torch.isfinite(out["loss"])


def test_byol_tau_follows_the_cosine_and_its_position_is_in_the_state_dict():
    model = BYOL("resnet18", hidden_dim=32, out_dim=8, total_iterations=10)
    assert model.momentum_at(0) == pytest.approx(0.996) and model.momentum_at(10) == pytest.approx(1.0)
    assert model.momentum_at(0) < model.momentum_at(5) < model.momentum_at(9) < 1.0
    out = model(_views())
    assert out["tau"].item() == pytest.approx(0.996) and int(model.step) == 1
    target = [p.detach().clone() for p in model.target_projector.parameters()]
    online = [p.detach().clone() for p in model.projector.parameters()]
    model.update_momentum()  # after step 1: tau at 1, for both target networks in one pass
    tau = model.momentum_at(1)
    for t, before, o in zip(model.target_projector.parameters(), target, online):
        assert torch.allclose(t, tau * before + (1 - tau) * o, atol=1e-7)
    restored = BYOL("resnet18", hidden_dim=32, out_dim=8, total_iterations=10)
    restored.load_state_dict(model.state_dict())
    assert int(restored.step) == 1 and restored(_views())["tau"].item() == pytest.approx(model.momentum_at(1))


def test_swav_prototypes_stay_frozen_then_learn():
    torch.manual_seed(6)
    model = SwAV("resnet18", hidden_dim=32, out_dim=8, num_prototypes=6, freeze_prototypes_iterations=2)
    opt = build_optimizer(model, "sgd", lr=0.5, weight_decay=1e-4)
    views = _views(2, size=64) + _views(3, size=32, seed=1)
    for step in range(3):
        before = F.normalize(model.prototypes.weight.detach(), dim=1).clone()
        opt.zero_grad(set_to_none=True)
        out = model(views)
        out["loss"].backward()
        opt.step()
        changed = not torch.allclose(model.prototypes.weight, before, atol=1e-7)
        assert out["prototypes_frozen"].item() == float(step < 2)
        assert changed == (step >= 2), f"step {step}"


def test_swav_queue_fills_then_joins_sinkhorn():
    torch.manual_seed(7)
    model = SwAV("resnet18", hidden_dim=32, out_dim=8, num_prototypes=6, freeze_prototypes_iterations=0,
                 queue_length=8)
    views = _views(2, b=4) + _views(2, b=4, size=32, seed=1)
    model(views)
    assert int(model.queue_filled) == 4
    model(views)
    assert int(model.queue_filled) == 8 and model.queue.abs().sum(dim=-1).gt(0).all()
    assert torch.isfinite(model(views)["loss"])  # now with 8 queued features per global view


@pytest.mark.parametrize("method", [MoCo, BYOL, SwAV])
def test_methods_train_on_cpu_and_encode(method):
    torch.manual_seed(8)
    model = method("resnet18", hidden_dim=32, out_dim=8)
    out = model(_views() + (_views(2, size=32) if method is SwAV else []))
    out["loss"].backward()
    grads = [p.grad for p in model.backbone.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    model.eval()
    assert model.encode(torch.rand(3, 1, 64, 64)).shape == (3, 512)


@pytest.mark.parametrize("batch_views", [True, False])
def test_per_view_batches_the_views_of_one_size_or_passes_each_alone(batch_views):
    model = SwAV("resnet18", hidden_dim=32, out_dim=8, batch_views=batch_views)
    views = _views(2, b=4) + _views(3, b=4, size=32, seed=1)
    norm = torch.nn.BatchNorm2d(1)  # training mode: its output depends on what shares its pass
    out = model.per_view(norm, views)
    if batch_views:
        expected = [*norm(torch.cat(views[:2])).split(4), *norm(torch.cat(views[2:])).split(4)]
    else:
        expected = [norm(v) for v in views]
    assert [o.shape for o in out] == [v.shape for v in views]
    assert all(torch.allclose(o, e, atol=1e-6) for o, e in zip(out, expected))
    assert not torch.allclose(out[0], norm(views[0]) if batch_views else norm(torch.cat(views[:2]))[:4], atol=1e-3)


@pytest.mark.parametrize("method", [BYOL, SwAV])
def test_batch_views_changes_only_what_batch_norm_sees(method):
    torch.manual_seed(9)
    batched = method("resnet18", hidden_dim=32, out_dim=8)
    per_view = method("resnet18", hidden_dim=32, out_dim=8, batch_views=False)
    per_view.load_state_dict(batched.state_dict())
    views = _views() + (_views(2, size=32, seed=1) if method is SwAV else [])
    for m in (batched, per_view):
        m.eval()  # running statistics: the same function of each view either way
    assert torch.allclose(*[m(views)["loss"] for m in (batched, per_view)], atol=1e-5)
    for m in (batched, per_view):
        m.train()
    assert not torch.allclose(*[m(views)["loss"] for m in (batched, per_view)])  # over both views, or each alone
