"""Fine-tuning pieces: the frozen backbone stays frozen, label fractions nest, metrics agree with scikit-learn."""

import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.engines import SupervisedTrainer
from monai.networks.nets import ResNet
from sklearn import metrics as skm

from medssl_monai.data import stratified_subset
from medssl_monai.handlers import BackboneFreezer
from medssl_monai.losses import class_weights
from medssl_monai.optimizers import finetune_optimizer
from medssl_monai.evaluation import classification_metrics, point_metrics


def _backbone_state(net):
    return {k: v.clone() for k, v in net.state_dict().items() if not k.startswith("fc.")}


def test_backbone_is_unchanged_while_frozen_then_trains():
    torch.manual_seed(0)
    net = ResNet("basic", [1, 1, 1, 1], [8, 16, 32, 64], spatial_dims=2, n_input_channels=1, num_classes=2,
                 conv1_t_stride=2, bias_downsample=False)
    data = [{"image": torch.rand(1, 32, 32), "label": i % 2} for i in range(8)]
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    trainer = SupervisedTrainer("cpu", 2, loader, net, finetune_optimizer(net, lr=1e-2), torch.nn.CrossEntropyLoss())
    BackboneFreezer(net, freeze_epochs=1).attach(trainer)
    snapshots = []
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: snapshots.append((_backbone_state(net),
                                                                              net.fc.weight.detach().clone())))
    start, head = _backbone_state(net), net.fc.weight.detach().clone()
    trainer.run()
    (after_frozen, head_frozen), (after_trained, _) = snapshots
    assert all(torch.equal(start[k], after_frozen[k]) for k in start)  # weights and BN statistics untouched
    assert not torch.equal(head, head_frozen)  # while the head learns
    changed = [k for k in start if not torch.equal(after_frozen[k], after_trained[k])]
    assert "layer1.0.conv1.weight" in changed and "bn1.running_mean" in changed


def test_label_fractions_are_stratified_and_nested():
    data = [{"image": str(i), "label": int(i % 10 < 3)} for i in range(200)]  # 60 positives, 140 negatives
    subsets = {f: stratified_subset(data, f, seed=4) for f in (1.0, 0.5, 0.25, 0.1, 0.05)}
    assert subsets[1.0] == data
    for large, small in ((1.0, 0.5), (0.5, 0.25), (0.25, 0.1), (0.1, 0.05)):
        assert {d["image"] for d in subsets[small]} < {d["image"] for d in subsets[large]}
    assert sum(d["label"] for d in subsets[0.1]) == 6 and len(subsets[0.1]) == 20  # class shares kept
    assert len(stratified_subset(data, 0.001, seed=4)) == 2  # at least one of each class
    assert stratified_subset(data, 0.1, seed=5) != subsets[0.1]
    with pytest.raises(ValueError, match=r"label_fraction must be in \(0, 1\]"):
        stratified_subset(data, 0.0)


@pytest.mark.parametrize("num_classes", [2, 4])
def test_metrics_agree_with_scikit_learn(num_classes):
    rng = np.random.default_rng(num_classes)
    labels = rng.integers(0, num_classes, 300)
    logits = rng.normal(size=(300, num_classes)) + 1.5 * np.eye(num_classes)[labels]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    ours = point_metrics(labels, probs)
    predicted = probs.argmax(1)
    auc = skm.roc_auc_score(labels, probs[:, 1]) if num_classes == 2 else \
        skm.roc_auc_score(labels, probs, multi_class="ovr", average="macro")
    assert ours["auc"] == pytest.approx(auc, abs=1e-6)
    assert ours["accuracy"] == pytest.approx(skm.accuracy_score(labels, predicted))
    assert ours["f1"] == pytest.approx(skm.f1_score(labels, predicted, average="macro"))
    assert ours["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(labels, predicted))
    report = classification_metrics(labels, probs, n_bootstrap=200, seed=0)
    for k in ("auc", "accuracy", "f1", "balanced_accuracy"):
        assert report[k]["ci_low"] < report[k]["value"] < report[k]["ci_high"]
    assert np.array_equal(report["confusion_matrix"], skm.confusion_matrix(labels, predicted))


def test_class_weights_are_inverse_frequencies():
    weights = class_weights([{"label": 0}] * 30 + [{"label": 1}] * 10, 2)
    assert weights[1] / weights[0] == pytest.approx(3.0) and weights.mean() == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"classes \[2\] have no training samples"):
        class_weights([{"label": 0}, {"label": 1}], 3)


def test_a_non_finite_fine_tuning_loss_stops_naming_epoch_and_iteration():
    from ignite.engine import Engine

    from medssl_monai.handlers import FiniteLossCheck

    engine = Engine(lambda e, b: [{"loss": torch.tensor(float(b))}, {"loss": torch.tensor(float(b))}])
    FiniteLossCheck().attach(engine)
    with pytest.raises(FloatingPointError, match=r"loss is nan at iteration 5 \(epoch 2\)"):
        engine.run([1.0, 2.0, 3.0, 4.0] + [float("nan")] * 4, max_epochs=2, epoch_length=4)


def test_bootstrap_resamples_whole_patients_when_they_are_known():
    """Two identical images per patient: resampling patients gives exactly the intervals of one image per
    patient, while resampling images treats the copies as independent and narrows them."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 30)
    probs = np.clip(labels * 0.3 + rng.uniform(0, 0.7, 30), 0, 1)
    probs = np.stack([1 - probs, probs], axis=1)
    twice_labels, twice_probs = np.repeat(labels, 2), np.repeat(probs, 2, axis=0)
    patients = np.repeat([f"p{i:02d}" for i in range(30)], 2)  # sorted as the units are
    single = classification_metrics(labels, probs, n_bootstrap=300, seed=1)
    by_patient = classification_metrics(twice_labels, twice_probs, n_bootstrap=300, seed=1, groups=patients)
    by_image = classification_metrics(twice_labels, twice_probs, n_bootstrap=300, seed=1)
    assert single["resampled"] == "images" and by_patient["resampled"] == "patients"
    assert by_patient["n"] == 60 and by_patient["n_resampled"] == 30 and by_image["n_resampled"] == 60
    for name in ("auc", "accuracy", "f1", "balanced_accuracy"):
        assert by_patient[name] == pytest.approx(single[name])
    width = lambda m: m["auc"]["ci_high"] - m["auc"]["ci_low"]  # noqa: E731
    assert width(by_image) < width(by_patient)
