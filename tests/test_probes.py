"""The frozen-encoder protocols: k-NN and the linear probe against direct computations, the labelled subset
fine-tuning uses, and the feature cache."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.networks.nets import ResNet
from monai.transforms import Resized
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

from medssl_monai.data import downstream_dataset
from medssl_monai.evaluation import FrozenProbe, encode, knn_probabilities, linear_probe


def test_knn_probabilities_are_the_weighted_votes_of_the_nearest():
    torch.manual_seed(0)
    memory, labels, queries = torch.randn(30, 8), torch.randint(0, 3, (30,)), torch.randn(5, 8)
    probs = knn_probabilities(memory, labels, queries, 3, k=7, temperature=0.1)
    for q, p in zip(queries, probs):
        sims = F.cosine_similarity(q[None], memory)  # (30,)
        nearest = sims.argsort(descending=True)[:7]
        votes = torch.zeros(3, dtype=torch.float64)
        for i in nearest:
            votes[labels[i]] += torch.exp(sims[i].double() / 0.1)
        assert p.double() == pytest.approx((votes / votes.sum()).tolist(), abs=1e-5)
    assert torch.allclose(probs.sum(1), torch.ones(5))


def test_knn_votes_do_not_overflow_at_small_temperatures():
    memory = torch.eye(4)
    probs = knn_probabilities(memory, torch.tensor([0, 1, 0, 1]), memory[:2] + 0.01, 2, k=4, temperature=0.001)
    assert torch.isfinite(probs).all() and probs.argmax(1).tolist() == [0, 1]


def test_linear_probe_chooses_c_on_validation_auc():
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (150, 6))
    y = (x[:, 0] + 0.5 * rng.normal(0, 1, 150) > 0).astype(int)
    grid = (0.001, 0.1, 10.0)
    probs, chosen = linear_probe(x[:60], y[:60], x[60:100], y[60:100], x[100:], 2, grid)
    scaler = StandardScaler().fit(x[:60])
    scores = {}
    for c in grid:
        model = LogisticRegression(C=c, max_iter=2000, random_state=0).fit(scaler.transform(x[:60]), y[:60])
        scores[c] = (roc_auc_score(y[60:100], model.predict_proba(scaler.transform(x[60:100]))[:, 1]), model)
    best = max(grid, key=lambda c: (scores[c][0], -c))
    assert chosen["C"] == best and chosen["val_auc"] == pytest.approx({c: s for c, (s, _) in scores.items()})
    assert probs == pytest.approx(scores[best][1].predict_proba(scaler.transform(x[100:])))


def _network():
    torch.manual_seed(0)
    return ResNet("basic", [1, 1, 1, 1], [8, 16, 32, 64], spatial_dims=2, n_input_channels=1, num_classes=2,
                  conv1_t_stride=2, bias_downsample=False)


def _split(demo_dir, split, **kwargs):
    return downstream_dataset("class_folders", demo_dir / "covid_ct", split, transform=Resized("image", (32, 32)),
                              **kwargs)


def test_frozen_probe_uses_fine_tunings_subset_and_caches_features(demo_dir, tmp_path, monkeypatch):
    network = _network()
    splits = {s: _split(demo_dir, s) for s in ("train", "val", "test")}
    probe = FrozenProbe(network, "knn", splits["train"], splits["val"], splits["test"], tmp_path / "eval",
                        ["NonCOVID", "COVID"], label_fraction=0.5, seed=3, k=5, n_bootstrap=20,
                        feature_cache=tmp_path / "cache", figures=False)
    report = probe.run()
    subset = _split(demo_dir, "train", label_fraction=0.5, seed=3)  # what fine-tuning trains on
    assert report["n_train"] == len(subset) and report["protocol"] == "knn" and report["k"] == 5
    feats, labels, _ = encode(network, subset)
    expected = knn_probabilities(feats, labels, encode(network, splits["test"])[0], 2, k=5)
    written = np.loadtxt(tmp_path / "eval" / "predictions.csv", delimiter=",", skiprows=1, usecols=(3, 4))
    assert written == pytest.approx(expected.numpy(), abs=1e-5)
    assert network.fc.__class__.__name__ == "Linear"  # the head is back after the feature pass
    cached = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(cached) == 3 and [c.split("_")[0] for c in cached] == ["test", "train", "val"]
    import medssl_monai.evaluation.probes as probes

    def no_pass(*args, **kwargs):
        raise AssertionError("features recomputed although cached")

    with monkeypatch.context() as patch:
        patch.setattr(probes, "encode", no_pass)
        again = FrozenProbe(network, "linear", splits["train"], splits["val"], splits["test"], tmp_path / "lin",
                            ["NonCOVID", "COVID"], feature_cache=tmp_path / "cache", n_bootstrap=20, figures=False)
        assert all(torch.equal(a[0], b[0]) for a, b in zip(again.features().values(), probe.features().values()))
        with torch.no_grad():
            network.fc.weight.add_(1.0)  # the bypassed head: the same features, the cache still serves them
        FrozenProbe(network, "knn", splits["train"], splits["val"], splits["test"], tmp_path / "e1", ["a", "b"],
                    feature_cache=tmp_path / "cache", n_bootstrap=20, figures=False).features()
    with torch.no_grad():
        network.conv1.weight.add_(1.0)  # other weights: other keys, never another encoder's features
    FrozenProbe(network, "knn", splits["train"], splits["val"], splits["test"], tmp_path / "e2", ["a", "b"],
                feature_cache=tmp_path / "cache", n_bootstrap=20, figures=False).features()
    assert len(list((tmp_path / "cache").iterdir())) == 6


def test_unknown_protocol_is_refused(demo_dir, tmp_path):
    data = _split(demo_dir, "val")
    with pytest.raises(ValueError, match="unknown protocol 'linaer'; expected one of finetune, linear, knn"):
        FrozenProbe(_network(), "linaer", data, data, data, tmp_path, ["a", "b"])
