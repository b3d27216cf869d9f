"""What a pre-training run reports: collapse indicators that separate collapsed from healthy features, k-NN
accuracy with its interval, the collapse guard, and the summary or stop line of a run."""

import logging

import pytest
import torch
from ignite.engine import Engine, Events
from torch.utils.data import DataLoader

from medssl_monai.engines import SelfSupervisedTrainer
from medssl_monai.handlers.representation_monitor import (RepresentationCollapseError, RepresentationMonitor,
                                                         collapse_indicators, wilson_interval)
from medssl_monai.handlers.training_logger import TrainingLogger, format_duration
from medssl_monai.networks import SparK
from medssl_monai.optimizers import build_optimizer
from medssl_monai.utils import summary_writer

N, D = 120, 512
LABELS = torch.arange(N) % 2


def _features(kind: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    if kind == "constant":
        return torch.ones(N, D)
    if kind == "rank-1":
        return torch.randn(N, 1, generator=g) * torch.randn(1, D, generator=g).abs()
    if kind == "gaussian":
        return torch.randn(N, D, generator=g)
    if kind == "relu-gaussian":  # all-positive features, as pooled after a ReLU
        return torch.randn(N, D, generator=g).relu() + 1.0
    raise ValueError(kind)


def test_constructed_collapsed_features_score_high_and_healthy_ones_low():
    scores = {kind: collapse_indicators(_features(kind), LABELS)
              for kind in ("constant", "rank-1", "gaussian", "relu-gaussian")}
    names = set(scores["gaussian"])
    assert names == {"effective_rank", "class_rank_0", "class_rank_1"}
    for name in names:  # the same ordering for every logged indicator
        for collapsed in ("constant", "rank-1"):
            assert scores[collapsed][name] >= 0.95, (collapsed, name, scores[collapsed])
        for healthy in ("gaussian", "relu-gaussian"):
            assert scores[healthy][name] <= 0.1, (healthy, name, scores[healthy])


def _spark(zero_last_stage=False):
    torch.manual_seed(0)
    net = SparK("resnet18", image_size=64, mask_ratio=0.5, decoder_width=32)
    if zero_last_stage:  # every weight of layer4 zero: all pooled features are 0
        for p in net.encoder.net.layer4.parameters():
            torch.nn.init.zeros_(p)
    return net


def _monitor(network, demo_dir, tmp_path, **kwargs):
    return RepresentationMonitor(network, demo_dir / "covid_ct", summary_writer(tmp_path / "tb"), image_size=64, **kwargs)


@pytest.mark.parametrize("zero_last_stage", [False, True])
def test_monitor_on_a_random_and_a_dead_encoder(zero_last_stage, demo_dir, tmp_path):
    monitor = _monitor(_spark(zero_last_stage), demo_dir, tmp_path)
    monitor.attach(Engine(lambda e, b: None))
    result = monitor.measure(torch.device("cpu"))
    collapse = {k: v for k, v in result.items() if k.startswith("collapse/")}
    assert set(collapse) == {"collapse/effective_rank", "collapse/class_rank_0", "collapse/class_rank_1"}
    if zero_last_stage:
        assert min(collapse.values()) >= 0.95, collapse
    else:  # measured 0.21-0.30 for this random-init encoder (0.32-0.39 on the default demo set)
        assert max(collapse.values()) <= 0.6, collapse
    n = int(result["knn/queries"])
    assert n == len(monitor.val_data) and int(result["knn/memory"]) == len(monitor.train_data)
    assert result["knn/accuracy_low"] <= result["knn/accuracy"] <= result["knn/accuracy_high"]
    assert (result["knn/accuracy_low"], result["knn/accuracy_high"]) == pytest.approx(
        wilson_interval(round(result["knn/accuracy"] * n), n))


def test_wilson_interval_matches_the_formula():
    low, high = wilson_interval(18, 24)  # 0.75 on 24 images
    p, n, z = 0.75, 24, 1.959964
    centre, half = (p + z * z / (2 * n)) / (1 + z * z / n), z * (p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5 / (1 + z * z / n)
    assert (low, high) == pytest.approx((centre - half, centre + half), abs=1e-5)
    assert high - low == pytest.approx(0.33, abs=0.01)  # the +/- 0.17 of the issue


def test_guard_warns_by_default_then_stops_when_patience_is_set(caplog):
    warn_only = RepresentationMonitor(torch.nn.Identity(), None, "unused", image_size=64)
    with caplog.at_level(logging.WARNING):
        for epoch in range(1, 5):
            warn_only.check_collapse(epoch, {"effective_rank": 0.97, "class_rank_0": 0.2})
    warnings = [r.message for r in caplog.records if "collapse/effective_rank" in r.message]
    assert len(warnings) == 4 and "for 4 measurement(s)" in warnings[-1] and "set collapse_patience" in warnings[-1]
    assert not any("class_rank_0" in r.message for r in caplog.records)

    guard = RepresentationMonitor(torch.nn.Identity(), None, "unused", image_size=64, collapse_patience=2)
    guard.check_collapse(1, {"effective_rank": 0.95})
    guard.check_collapse(2, {"effective_rank": 0.5})  # recovered: the count starts again
    guard.check_collapse(3, {"effective_rank": 0.93})
    with pytest.raises(RepresentationCollapseError, match=r"collapse/effective_rank has been >= 0.9 for 2 "
                       r"measurements up to epoch 4 \(last values 0.930, 0.960\).*What to try: lower the learning"):
        guard.check_collapse(4, {"effective_rank": 0.96})


def _trainer(network, lr, images):
    loader = DataLoader([{"image": im} for im in images], batch_size=4)
    optimizer = build_optimizer(network, "lamb", lr=lr)
    return SelfSupervisedTrainer("cpu", 3, loader, network, optimizer), optimizer


def test_a_collapsed_run_stops_with_the_indicator_named(demo_dir, tmp_path, caplog):
    network = _spark(zero_last_stage=True)
    trainer, optimizer = _trainer(network, 0.0, torch.rand(8, 1, 64, 64))  # lr 0: layer4 stays dead
    _monitor(network, demo_dir, tmp_path, collapse_patience=2).attach(trainer)
    TrainingLogger(summary_writer(tmp_path / "tb"), optimizer, image_interval=0, outputs={"encoder": "E.pt"}).attach(trainer)
    with caplog.at_level(logging.INFO), pytest.raises(RepresentationCollapseError, match="collapse_patience is 2"):
        trainer.run()
    assert trainer.state.epoch == 2
    stopped = [r.message for r in caplog.records if r.message.startswith("run stopped")]
    assert len(stopped) == 1 and "RepresentationCollapseError" in stopped[0] and "encoder E.pt" in stopped[0]


def test_a_non_finite_loss_is_not_swallowed_by_the_logger(tmp_path, caplog):
    """ignite hands exceptions to EXCEPTION_RAISED handlers instead of raising: the logger must raise again."""
    images = torch.rand(8, 1, 64, 64)
    images[0, 0, 0, 0] = float("nan")
    trainer, optimizer = _trainer(_spark(), 1e-3, images)
    TrainingLogger(summary_writer(tmp_path / "tb"), optimizer, image_interval=0).attach(trainer)
    with caplog.at_level(logging.INFO), pytest.raises(FloatingPointError, match="loss is nan at iteration 1"):
        trainer.run()
    assert any(r.message.startswith("run stopped at epoch 1, iteration 1 by FloatingPointError") for r in caplog.records)


def test_summary_line_of_a_finished_run(tmp_path, caplog):
    trainer, optimizer = _trainer(_spark(), 1e-3, torch.rand(8, 1, 64, 64))
    TrainingLogger(summary_writer(tmp_path / "tb"), optimizer, image_interval=0, outputs={"encoder": "E.pt", "logs": "L"}).attach(trainer)
    losses = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(e.state.output["loss"]))
    with caplog.at_level(logging.INFO):
        trainer.run()
    summary = [r.message for r in caplog.records if r.message.startswith("run finished")]
    assert len(summary) == 1
    first, last = sum(losses[:2]) / 2, sum(losses[-2:]) / 2
    assert f"mean loss {first:.4f} (epoch 1) -> {last:.4f} (epoch 3)" in summary[0]
    assert "for 6 iterations" in summary[0] and summary[0].endswith("encoder E.pt; logs L")


def test_format_duration():
    assert [format_duration(s) for s in (12.4, 474, 3725)] == ["12 s", "7 min 54 s", "1 h 02 min"]
