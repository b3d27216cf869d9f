"""Optimiser groups and per-iteration schedules (the paper's SparK recipe)."""

import pytest
import torch
from ignite.engine import Engine

from medssl_monai.handlers import IterationSchedule
from medssl_monai.optimizers import build_optimizer, param_groups
from medssl_monai.utils import cosine
from medssl_monai.networks.spark import SparK


def test_no_weight_decay_on_biases_norms_and_mask_tokens():
    model = SparK("resnet18", image_size=64, decoder_width=64)
    decay, no_decay = param_groups(model, 0.04)
    ids = {id(p) for p in no_decay["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in ids}
    assert all(p.ndim > 1 for p in decay["params"]) and decay["weight_decay"] == 0.04
    assert {"mask_tokens.0", "encoder.net.bn1.weight", "encoder.net.bn1.bias"} <= names
    assert not any(n.endswith("conv1.weight") for n in names)
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_lamb_with_the_paper_betas():
    opt = build_optimizer(torch.nn.Linear(4, 2), "lamb", lr=1e-3, betas=(0.9, 0.95))
    assert type(opt).__name__ == "Lamb" and opt.defaults["betas"] == (0.9, 0.95)
    assert opt.defaults["max_grad_norm"] is None
    with pytest.raises(ValueError, match="unknown optimizer 'lars2'"):
        build_optimizer(torch.nn.Linear(4, 2), "lars2")


def test_cosine_with_warmup():
    assert cosine(0, 100, 1.0, 0.0, warmup=10) == pytest.approx(0.1)
    assert cosine(9, 100, 1.0, 0.0, warmup=10) == pytest.approx(1.0)
    assert cosine(10, 100, 1.0, 0.0, warmup=10) == pytest.approx(1.0)
    assert cosine(55, 100, 1.0, 0.0, warmup=10) == pytest.approx(0.5)
    assert cosine(100, 100, 1.0, 0.0, warmup=10) == pytest.approx(0.0)
    assert cosine(0, 10, 0.04, 0.2) == pytest.approx(0.04) and cosine(10, 10, 0.04, 0.2) == pytest.approx(0.2)


def test_schedule_sets_lr_and_decay_per_iteration():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    opt = build_optimizer(model, "adamw", lr=1.0, weight_decay=0.04)
    schedule = IterationSchedule(opt, total_iterations=20, peak_lr=0.1, warmup_iterations=5, final_lr_ratio=0.01)
    seen = []
    engine = Engine(lambda e, b: seen.append([(g["lr"], g["weight_decay"]) for g in opt.param_groups]))
    schedule.attach(engine)
    engine.run(range(10), max_epochs=2)
    assert len(seen) == 20
    assert seen[0][0] == pytest.approx((0.02, 0.04)) and seen[4][0][0] == pytest.approx(0.1)
    assert seen[-1][0][0] == pytest.approx(cosine(19, 20, 0.1, 0.001, 5))
    assert seen[-1][0][1] == pytest.approx(cosine(19, 20, 0.04, 0.2))
    assert all(step[1][1] == 0.0 for step in seen)  # the no-decay group stays at 0


def test_a_length_in_steps_is_rounded_up_to_whole_epochs():
    from medssl_monai.utils import train_epochs

    assert train_epochs(12, None, 4) == 12
    assert train_epochs(12, 6, 4) == 2 and train_epochs(12, 8, 4) == 2 and train_epochs(12, 9, 4) == 3
    assert train_epochs(1, 300000, 250000 // 64) == 77  # BYOL on LIDC-IDRI's slices at batch 64
    with pytest.raises(ValueError, match="max_steps must be positive"):
        train_epochs(1, 0, 4)
