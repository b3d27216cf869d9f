"""Paired statistics of the study, checked against independent computations: scikit-learn's AUC (weighted for
the bootstrap), a loop over the documented resampling draws, and the exact permutation distribution."""

import itertools

import numpy as np
import pytest
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score

from medssl_monai.evaluation.paired import holm, method_interval, paired_comparison, swapped_aucs, weighted_auc


def _auc(labels, probs, weights=None):
    if probs.shape[1] == 2:
        return roc_auc_score(labels, probs[:, 1], sample_weight=weights)
    return roc_auc_score(labels, probs, multi_class="ovr", average="macro", sample_weight=weights)


def _predictions(rng, n, classes, skill, seeds):
    labels = rng.integers(0, classes, n)
    out = []
    for _ in range(seeds):
        logits = rng.normal(0, 1, (n, classes))
        logits[np.arange(n), labels] += skill
        probs = np.exp(logits.round(1))  # rounded: tied scores, as k-NN votes give
        out.append(probs / probs.sum(1, keepdims=True))
    return labels, np.stack(out)


@pytest.mark.parametrize("classes", [2, 4])
def test_auc_matches_scikit_learn_with_ties_and_weights(classes):
    rng = np.random.default_rng(0)
    labels, probs = _predictions(rng, 120, classes, 1.0, 3)
    weights = rng.integers(0, 4, (5, 120))
    for p in probs:
        assert weighted_auc(labels, p, weights) == pytest.approx([_auc(labels, p, w) for w in weights], abs=1e-12)
    swap = rng.random((4, 120)) < 0.5  # the permutation test's swapped predictions
    auc_a, auc_b = swapped_aucs(labels, probs[0], probs[1], swap)
    for row, x, y in zip(swap, auc_a, auc_b):
        assert x == pytest.approx(_auc(labels, np.where(row[:, None], probs[1], probs[0])), abs=1e-12)
        assert y == pytest.approx(_auc(labels, np.where(row[:, None], probs[0], probs[1])), abs=1e-12)


@pytest.mark.parametrize("classes,groups", [(2, None), (3, "patients")])
def test_intervals_are_the_documented_bootstrap(classes, groups):
    """Mean over seeds and the percentile intervals, recomputed by a loop with scikit-learn over the draws the
    module documents (seeds first, then units; images of a drawn patient all come along)."""
    rng = np.random.default_rng(1)
    labels, a = _predictions(rng, 60, classes, 1.5, 3)
    b = np.abs(a + rng.normal(0, 0.3, a.shape)).round(2) + 0.01  # a weaker method on the same images
    b /= b.sum(axis=2, keepdims=True)
    patients = np.repeat(np.arange(30), 2).astype(str) if groups else None
    result = paired_comparison(labels, a, b, patients, n_bootstrap=300, n_permutations=200, seed=5)
    assert result["difference"] == pytest.approx(np.mean([_auc(labels, x) - _auc(labels, y) for x, y in zip(a, b)]))
    draw = np.random.default_rng(5)
    seeds = draw.integers(0, 3, (300, 3))
    unit_of = np.unique(patients, return_inverse=True)[1] if groups else np.arange(60)
    units = draw.integers(0, unit_of.max() + 1, (300, unit_of.max() + 1))
    replicates = []
    for s_row, u_row in zip(seeds, units):
        weights = np.bincount(u_row, minlength=unit_of.max() + 1)[unit_of]
        replicates.append(np.mean([_auc(labels, a[s], weights) - _auc(labels, b[s], weights) for s in s_row]))
    low, high = np.percentile(replicates, [2.5, 97.5])
    assert (result["ci_low"], result["ci_high"]) == pytest.approx((low, high), abs=1e-12)
    assert result["n_units"] == (30 if groups else 60) and result["n_seeds"] == 3
    single = method_interval(labels, a, patients, n_bootstrap=300, seed=5)
    assert single["mean"] == pytest.approx(np.mean([_auc(labels, x) for x in a]))
    loop = [np.mean([_auc(labels, a[s], np.bincount(u, minlength=unit_of.max() + 1)[unit_of]) for s in s_row])
            for s_row, u in zip(seeds, units)]
    assert (single["ci_low"], single["ci_high"]) == pytest.approx(tuple(np.percentile(loop, [2.5, 97.5])), abs=1e-12)


def test_permutation_p_value_approaches_the_exact_one():
    """Six test images, one seed: all 2^6 swaps of the two models' ranks give the exact p-value; the Monte
    Carlo one is within 0.02."""
    labels = np.array([0, 1, 0, 1, 1, 0])
    a = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.3, 0.7], [0.4, 0.6], [0.6, 0.4]])[None]
    b = np.array([[0.4, 0.6], [0.6, 0.4], [0.5, 0.5], [0.55, 0.45], [0.3, 0.7], [0.8, 0.2]])[None]
    observed = _auc(labels, a[0]) - _auc(labels, b[0])
    ranks_a, ranks_b = (np.stack([rankdata(p[0][:, c]) for c in range(2)], axis=1) for p in (a, b))
    exact = []
    for swap in itertools.product([False, True], repeat=6):
        s = np.array(swap)[:, None]
        exact.append(_auc(labels, np.where(s, ranks_b, ranks_a) / 6) - _auc(labels, np.where(s, ranks_a, ranks_b) / 6))
    p_exact = np.mean(np.abs(exact) >= abs(observed) - 1e-12)
    result = paired_comparison(labels, a, b, n_bootstrap=50, n_permutations=20000, seed=0)
    assert result["difference"] == pytest.approx(observed)
    assert result["p_value"] == pytest.approx(p_exact, abs=0.02)


def test_identical_methods_are_not_called_different():
    rng = np.random.default_rng(3)
    labels, a = _predictions(rng, 80, 2, 1.0, 3)
    result = paired_comparison(labels, a, a.copy(), n_bootstrap=200, n_permutations=500)
    assert result["difference"] == 0 and result["ci_low"] == 0 == result["ci_high"] and result["p_value"] == 1.0


def test_holm_adjustment():
    # sorted 0.01, 0.02, 0.04 -> 3 x 0.01, max(0.03, 2 x 0.02), max(0.04, 1 x 0.04)
    assert holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])
    adjusted = holm([0.01, float("nan"), 0.04])  # an untested comparison is not counted
    assert adjusted[0] == pytest.approx(0.02) and np.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.04)


def test_an_undefined_auc_is_not_tested():
    labels = np.zeros(6, int)  # one class only: AUC undefined
    probs = np.full((2, 6, 2), 0.5)
    result = paired_comparison(labels, probs, probs, n_bootstrap=20, n_permutations=20)
    assert np.isnan(result["difference"]) and np.isnan(result["p_value"])


def test_per_patient_scores_are_compared_paired_over_seeds_and_patients():
    from medssl_monai.evaluation.paired import paired_score_comparison, score_interval

    rng = np.random.default_rng(0)
    b = rng.uniform(0.4, 0.8, (3, 12))  # 3 seeds, 12 test patients
    better = paired_score_comparison(b + 0.05, b, n_bootstrap=300, n_permutations=2000)
    assert better["difference"] == pytest.approx(0.05) and better["ci_low"] == pytest.approx(0.05)
    assert better["p_value"] == pytest.approx(1 / 2001)  # no sign flip of 36 equal differences reaches them
    assert better["n_seeds"] == 3 and better["n_units"] == 12
    noisy = paired_score_comparison(b + rng.normal(0, 0.1, b.shape), b, n_bootstrap=300, n_permutations=2000)
    assert noisy["ci_low"] < noisy["difference"] < noisy["ci_high"] and noisy["p_value"] > 0.05
    same = paired_score_comparison(b, b.copy(), n_bootstrap=100, n_permutations=100)
    assert same["difference"] == 0 and same["p_value"] == 1
    interval = score_interval(b, n_bootstrap=500)
    assert interval["mean"] == pytest.approx(b.mean()) and interval["ci_low"] < b.mean() < interval["ci_high"]
    with pytest.raises(ValueError, match="finite per-patient scores"):
        paired_score_comparison(b, b[:, :5])
