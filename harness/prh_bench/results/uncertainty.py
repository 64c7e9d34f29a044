"""How sure a ranking is: intervals for each model's alignment to the reference and for its rank, and paired
tests of adjacent ranks, from each sample's term of the score (pair_details: a mean-over-samples metric).

The scheme, and why. A k-NN score depends on N, and a sample drawn twice would be its own copy's nearest
neighbour, so bootstrapping the features is wrong for this family. What is resampled instead is the samples'
terms, each computed from the neighbour lists of the full set: the intervals answer "how much does the score
and the rank depend on which samples were averaged", holding the neighbour graph (and the best layer pair, chosen
on all samples) fixed. Samples that are not independent (crops of one photograph) are resampled as whole groups
(`Sample.group`); samples without a group are their own. Adjacent ranks are compared by a paired sign-flip test on
the same samples: under the null the two models are exchangeable, so each group's summed difference is as
likely negative as positive. With few groups the intervals are coarse, and the tests cannot reach small p."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

RESAMPLES = 2000
ALPHA = 0.05


def _group_sums(terms: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(G x M sums of the terms per group, G sizes)."""
    g = int(codes.max()) + 1
    sums = np.zeros((g, terms.shape[1]))
    np.add.at(sums, codes, terms)
    return sums, np.bincount(codes, minlength=g).astype(float)


def bootstrap_means(terms: np.ndarray, codes: np.ndarray, resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """R x M: each model's mean term over a resample of the groups (G drawn with replacement, all their samples)."""
    sums, sizes = _group_sums(terms, codes)
    g = len(sizes)
    draws = np.random.default_rng(seed).integers(0, g, size=(resamples, g))
    counts = np.zeros((resamples, g))
    np.add.at(counts, (np.arange(resamples)[:, None], draws), 1)
    return (counts @ sums) / (counts @ sizes)[:, None]


def ranks(means: np.ndarray) -> np.ndarray:
    """1 + the number of models with a strictly larger mean, per row (ties share the better rank)."""
    return 1 + (means[:, None, :] > means[:, :, None]).sum(axis=2)


def rank_intervals(
    terms: np.ndarray, codes: np.ndarray, resamples: int = RESAMPLES, seed: int = 0, level: float = 0.95
) -> pd.DataFrame:
    """Per model (column of terms): percentile intervals of its mean term and of its rank over group resamples."""
    means = bootstrap_means(terms, codes, resamples, seed)
    r = ranks(means)
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
    lo, hi = np.percentile(means, q, axis=0)
    rlo, rhi = np.percentile(r, q, axis=0, method="nearest")
    return pd.DataFrame({"score_low": lo, "score_high": hi, "rank_low": rlo.astype(int), "rank_high": rhi.astype(int)})


def paired_flip_test(diff: np.ndarray, codes: np.ndarray, resamples: int = RESAMPLES, seed: int = 0) -> float:
    """Two-sided p-value of mean(diff) = 0 by random sign flips of whole groups' summed differences, add-one
    (p >= 1/(resamples + 1))."""
    sums, _ = _group_sums(diff[:, None], codes)
    sums = sums[:, 0]
    observed = abs(sums.sum())
    signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=(resamples, len(sums)))
    flipped = np.abs(signs @ sums)
    return float((1 + np.sum(flipped >= observed * (1 - 1e-12))) / (resamples + 1))


def holm(values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjustment of a family of p-values (adjusted p, monotone, at most 1)."""
    p = np.asarray(values, dtype=float)
    order = np.argsort(p)
    adj = np.maximum.accumulate((len(p) - np.arange(len(p))) * p[order]).clip(max=1)
    out = np.empty_like(p)
    out[order] = adj
    return out


def adjacent_tests(
    terms: np.ndarray, codes: np.ndarray, resamples: int = RESAMPLES, seed: int = 0, alpha: float = ALPHA
) -> pd.DataFrame:
    """Models in rank order (columns of terms, best first): for each model and the next one down, the mean
    difference, the paired test's p, Holm's adjustment over the adjacent pairs, whether they are separable at
    alpha, and each model's tier: a run of adjacent ranks that the tests cannot tell apart shares one."""
    m = terms.shape[1]
    diffs = [terms[:, i] - terms[:, i + 1] for i in range(m - 1)]
    p = [paired_flip_test(d, codes, resamples, seed + i) for i, d in enumerate(diffs)]
    adj = holm(p) if p else np.array([])
    separable = adj < alpha
    tier = np.concatenate([[1], 1 + np.cumsum(separable)]).astype(int)
    return pd.DataFrame(
        {
            "difference_to_next": [float(d.mean()) for d in diffs] + [np.nan],
            "p_next": [*p, np.nan],
            "p_next_holm": [*list(adj), np.nan],
            "separable_from_next": [*list(separable), pd.NA],
            "tier": tier,
        }
    )
