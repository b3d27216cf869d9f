"""Paired comparison of two methods evaluated on one test set over the same seeds.

A label-fraction study runs each method once per seed, and a seed fixes the labelled subset (and, for the
frozen protocols, nothing else differs), so method A's run with seed s and method B's run with seed s form a
pair, and both predict the same test images. The question "is A better than B here?" is then answered by the
paired difference of their test ROC AUC, averaged over seeds, not by whether two error bars overlap:

- **interval**: a percentile bootstrap over seeds and test patients together: each replicate draws S seeds
  with replacement and the test units (patients where images carry one, else images) with replacement, the
  same draw for A and B, and averages AUC(A) - AUC(B) over the drawn seeds on the drawn units. Drawn as
  ``seeds = rng.integers(0, S, (B, S))`` then ``units = rng.integers(0, U, (B, U))`` from
  ``numpy.random.default_rng(seed)``.
- **p-value**: a two-sided paired permutation test on ranks (Venkatraman and Begg's idea for ROC curves): each
  model's scores are replaced by their ranks among the test images, which leaves its AUC as it is, and under
  "A and B are exchangeable" each test unit of each seed's pair keeps or swaps its two ranks with probability
  1/2; p = (1 + #{|T*| >= |T|}) / (1 + P) for
  P permutations of the statistic T = mean over seeds of AUC(A) - AUC(B).

A per-patient score (a segmentation's Dice) is compared the same way: the statistic is the mean over seeds of
the mean over test patients of score(A) - score(B), bootstrapped over seeds and patients alike, and a
permutation swaps A's and B's scores of a (seed, patient), which flips the sign of that difference
(:func:`score_interval`, :func:`paired_score_comparison`).

AUC is binary (positive = class 1) or macro one-vs-rest, as in :mod:`medssl_monai.evaluation.metrics`;
bootstrap replicates are AUCs of the weighted (resampled) test set and permutations AUCs of swapped predictions,
both for all replicates at once from the matrix of positive-negative comparisons.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

__all__ = ["weighted_auc", "swapped_aucs", "method_interval", "paired_comparison", "score_interval",
           "paired_score_comparison", "holm"]


def _pairs(positive_scores: np.ndarray, negative_scores: np.ndarray) -> np.ndarray:
    """(n1, n0) comparison of every positive with every negative: 1 above, 1/2 tied, 0 below."""
    above = positive_scores[:, None] - negative_scores[None]
    return (above > 0) + 0.5 * (above == 0)


def _binary_weighted_auc(positive: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC of one score vector (N,) under each row of ``weights`` (R, N), ties counted half: (R,). The
    weighted Mann-Whitney statistic: sum over positive-negative pairs of w_i w_j [s_i > s_j], over the pairs'
    total weight."""
    w_pos, w_neg = weights[:, positive], weights[:, ~positive]  # (R, n1), (R, n0)
    numerator = ((w_pos @ _pairs(scores[positive], scores[~positive])) * w_neg).sum(axis=1)
    denominator = w_pos.sum(axis=1) * w_neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / denominator, np.nan)


def weighted_auc(labels: np.ndarray, probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC of labels (N,) and probabilities (N, C) under each row of ``weights`` (R, N) (a bootstrap's
    multiplicities): (R,), NaN where a class has no weight."""
    labels, probs, weights = np.asarray(labels), np.asarray(probs, dtype=float), np.atleast_2d(weights)
    if probs.shape[1] == 2:
        return _binary_weighted_auc(labels == 1, probs[:, 1], weights)
    return np.mean([_binary_weighted_auc(labels == c, probs[:, c], weights) for c in range(probs.shape[1])], axis=0)


def swapped_aucs(labels: np.ndarray, probs_a: np.ndarray, probs_b: np.ndarray,
                 swap: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ROC AUC of A' and B' for each row of ``swap`` (R, N): A' takes B's probabilities (N, C) where ``swap``
    is true and A's elsewhere, B' the opposite. Exact (ties count half), without sorting each row: a
    positive-negative pair's comparison depends only on which side each of the two took, so four pair
    matrices per class give every row's AUC by matrix products."""
    labels, swap = np.asarray(labels), np.asarray(swap, dtype=float)
    classes = [1] if probs_a.shape[1] == 2 else range(probs_a.shape[1])
    auc_a, auc_b = [], []
    for c in classes:
        positive = labels == c
        pos = {"a": probs_a[positive, c], "b": probs_b[positive, c]}
        neg = {"a": probs_a[~positive, c], "b": probs_b[~positive, c]}
        pair = {x + y: _pairs(pos[x], neg[y]) for x in "ab" for y in "ab"}  # positive from x, negative from y
        s_pos, s_neg = swap[:, positive], swap[:, ~positive]  # (R, n1), (R, n0): 1 = took the other side

        def total(left: np.ndarray, m: np.ndarray, right: np.ndarray) -> np.ndarray:
            return ((left @ m) * right).sum(axis=1)  # (R,): sum over pairs of left_i m_ij right_j

        keep_pos, keep_neg = 1 - s_pos, 1 - s_neg
        n_pairs = positive.sum() * (~positive).sum()
        auc_a.append((total(keep_pos, pair["aa"], keep_neg) + total(keep_pos, pair["ab"], s_neg)
                      + total(s_pos, pair["ba"], keep_neg) + total(s_pos, pair["bb"], s_neg)) / n_pairs)
        auc_b.append((total(keep_pos, pair["bb"], keep_neg) + total(keep_pos, pair["ba"], s_neg)
                      + total(s_pos, pair["ab"], keep_neg) + total(s_pos, pair["aa"], s_neg)) / n_pairs)
    return np.mean(auc_a, axis=0), np.mean(auc_b, axis=0)


def _units(groups, n: int) -> np.ndarray:
    """(N,) resampling unit of each test image: its patient, or itself."""
    if groups is None:
        return np.arange(n)
    return np.unique(np.asarray(groups, dtype=str), return_inverse=True)[1]


def _draws(n_seeds: int, unit_of: np.ndarray, n_bootstrap: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Bootstrap draws: seed indices (B, S) and image weights (B, N), the multiplicity of each image's unit."""
    rng = np.random.default_rng(seed)
    seeds = rng.integers(0, n_seeds, (n_bootstrap, n_seeds))
    n_units = unit_of.max() + 1
    units = rng.integers(0, n_units, (n_bootstrap, n_units))
    counts = np.stack([np.bincount(row, minlength=n_units) for row in units])  # (B, U)
    return seeds, counts[:, unit_of]


def _seed_weighted_mean(per_seed: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """Mean over each replicate's drawn seeds of per-seed values (S, B): (B,)."""
    return per_seed[seeds, np.arange(seeds.shape[0])[:, None]].mean(axis=1)


def _percentiles(replicates: np.ndarray, confidence: float) -> tuple[float, float]:
    """The percentile interval of bootstrap replicates (NaN replicates, undefined AUCs, left out)."""
    tail = (1 - confidence) / 2 * 100
    low, high = np.nanpercentile(replicates, [tail, 100 - tail])
    return float(low), float(high)


def method_interval(labels: np.ndarray, probs: np.ndarray, groups=None, n_bootstrap: int = 2000, seed: int = 0,
                    confidence: float = 0.95) -> dict:
    """Mean test AUC over seeds of one method, probabilities (S, N, C), with its bootstrap interval over seeds
    and test units: ``{"mean", "ci_low", "ci_high", "n_seeds"}``."""
    probs = np.asarray(probs, dtype=float)
    seeds, weights = _draws(len(probs), _units(groups, len(labels)), n_bootstrap, seed)
    per_seed = np.stack([weighted_auc(labels, p, weights) for p in probs])  # (S, B)
    point = float(np.mean([weighted_auc(labels, p, np.ones((1, len(labels))))[0] for p in probs]))
    low, high = _percentiles(_seed_weighted_mean(per_seed, seeds), confidence)
    return {"mean": point, "ci_low": float(low), "ci_high": float(high), "n_seeds": len(probs)}


def paired_comparison(labels: np.ndarray, probs_a: np.ndarray, probs_b: np.ndarray, groups=None,
                      n_bootstrap: int = 2000, n_permutations: int = 2000, seed: int = 0,
                      confidence: float = 0.95) -> dict:
    """A against B, each probabilities (S, N, C) of the same S seeds on the same N test images (labels (N,),
    patient ``groups`` (N,) or None): ``{"difference", "ci_low", "ci_high", "p_value", "n_seeds", "n_units"}``,
    the difference being mean over seeds of AUC(A) - AUC(B)."""
    labels = np.asarray(labels)
    probs_a, probs_b = np.asarray(probs_a, dtype=float), np.asarray(probs_b, dtype=float)
    if probs_a.shape != probs_b.shape or probs_a.shape[1] != len(labels):
        raise ValueError(f"expected two (seeds, {len(labels)}, classes) arrays of one shape, got {probs_a.shape} "
                         f"and {probs_b.shape}")
    n_seeds, n = probs_a.shape[:2]
    unit_of = _units(groups, n)
    ones = np.ones((1, n))
    observed = float(np.mean([weighted_auc(labels, a, ones)[0] - weighted_auc(labels, b, ones)[0]
                              for a, b in zip(probs_a, probs_b)]))
    # bootstrap over seeds and units
    seeds, weights = _draws(n_seeds, unit_of, n_bootstrap, seed)
    per_seed = np.stack([weighted_auc(labels, a, weights) - weighted_auc(labels, b, weights)
                         for a, b in zip(probs_a, probs_b)])  # (S, B)
    low, high = _percentiles(_seed_weighted_mean(per_seed, seeds), confidence)
    result = {"difference": observed, "ci_low": float(low), "ci_high": float(high), "p_value": float("nan"),
              "n_seeds": n_seeds, "n_units": int(unit_of.max() + 1)}
    if not np.isfinite(observed):  # a class missing from the test set: AUC undefined, nothing to test
        return result
    # permutation: swap A's and B's within-test-set ranks per (seed, unit); ranks keep each AUC and put the
    # two models on one scale, so a difference in calibration alone does not widen the null distribution
    rng = np.random.default_rng(seed + 1)
    statistic = np.zeros(n_permutations)
    for a, b in zip(probs_a, probs_b):
        swap = rng.random((n_permutations, unit_of.max() + 1)) < 0.5
        auc_a, auc_b = swapped_aucs(labels, _ranks(a), _ranks(b), swap[:, unit_of])  # (P,) each
        statistic += auc_a - auc_b
    statistic /= n_seeds
    extreme = np.sum(np.abs(statistic) >= abs(observed) - 1e-12)
    result["p_value"] = float((1 + extreme) / (1 + n_permutations))
    return result


def _score_replicates(scores: np.ndarray, n_bootstrap: int, seed: int) -> np.ndarray:
    """(B,) bootstrap replicates of the mean over seeds and patients of (S, N) per-patient scores."""
    n_seeds, n = scores.shape
    seeds, weights = _draws(n_seeds, np.arange(n), n_bootstrap, seed)  # (B, S), (B, N)
    per_seed = (weights @ scores.T).T / weights.sum(axis=1)  # (S, B): each seed's weighted patient mean
    return _seed_weighted_mean(per_seed, seeds)


def _check_scores(*arrays: np.ndarray) -> None:
    shapes = {np.shape(a) for a in arrays}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2 or not all(np.isfinite(a).all() for a in arrays):
        raise ValueError(f"expected finite per-patient scores (seeds, patients) of one shape, got {shapes}")


def score_interval(scores: np.ndarray, n_bootstrap: int = 2000, seed: int = 0, confidence: float = 0.95) -> dict:
    """Mean of one method's per-patient scores (S seeds, N test patients) with its bootstrap interval over seeds
    and patients: ``{"mean", "ci_low", "ci_high", "n_seeds"}``."""
    scores = np.asarray(scores, dtype=float)
    _check_scores(scores)
    low, high = _percentiles(_score_replicates(scores, n_bootstrap, seed), confidence)
    return {"mean": float(scores.mean()), "ci_low": low, "ci_high": high, "n_seeds": len(scores)}


def paired_score_comparison(scores_a: np.ndarray, scores_b: np.ndarray, n_bootstrap: int = 2000,
                            n_permutations: int = 2000, seed: int = 0, confidence: float = 0.95) -> dict:
    """A against B, per-patient scores (S, N) of the same seeds on the same test patients: ``{"difference",
    "ci_low", "ci_high", "p_value", "n_seeds", "n_units"}``, the difference being the mean of A - B."""
    a, b = np.asarray(scores_a, dtype=float), np.asarray(scores_b, dtype=float)
    _check_scores(a, b)
    difference = a - b  # (S, N)
    observed = float(difference.mean())
    low, high = _percentiles(_score_replicates(difference, n_bootstrap, seed), confidence)
    signs = np.where(np.random.default_rng(seed + 1).random((n_permutations, *difference.shape)) < 0.5, -1.0, 1.0)
    statistic = (signs * difference).mean(axis=(1, 2))  # (P,)
    extreme = np.sum(np.abs(statistic) >= abs(observed) - 1e-12)
    return {"difference": observed, "ci_low": low, "ci_high": high,
            "p_value": float((1 + extreme) / (1 + n_permutations)), "n_seeds": len(a), "n_units": a.shape[1]}


def _ranks(probs: np.ndarray) -> np.ndarray:
    """Each class column of (N, C) probabilities as its ranks among the N images, in (0, 1], ties averaged."""
    return np.stack([rankdata(column) for column in probs.T], axis=1) / len(probs)


def holm(p_values: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (family-wise error), in the input order; NaN (untested) stays NaN
    and does not count as a test."""
    p_values = np.asarray(p_values, dtype=float)
    tested = np.flatnonzero(np.isfinite(p_values))
    adjusted, running = np.full(len(p_values), np.nan), 0.0
    for rank, i in enumerate(tested[np.argsort(p_values[tested])]):
        running = max(running, min(1.0, (len(tested) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted.tolist()
