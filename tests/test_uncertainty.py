"""Statistics that cannot be over-read: group resampling of per-sample terms, rank intervals, paired sign-flip
tests of adjacent ranks with Holm's adjustment, within-kind and partial correlations, each against a plain
implementation or a hand-built case."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
import torch

from prh_bench.align import get_metric, summarize_layers
from prh_bench.results.leaderboard import correlate_partial, grouped_correlations, partial_r
from prh_bench.results.uncertainty import (
    adjacent_tests,
    bootstrap_means,
    group_codes,
    holm,
    paired_flip_test,
    rank_intervals,
)


def test_group_codes_give_a_sample_without_group_its_own() -> None:
    assert group_codes(["a", "b", "a", None, float("nan"), "", "b"]).tolist() == [0, 1, 0, 2, 3, 4, 1]


def test_bootstrap_means_equal_a_plain_loop_over_drawn_groups() -> None:
    rng = np.random.default_rng(1)
    terms, codes = rng.random((30, 3)), np.repeat(np.arange(6), 5)[rng.permutation(30)]
    fast = bootstrap_means(terms, codes, resamples=50, seed=4)
    draws = np.random.default_rng(4).integers(0, 6, size=(50, 6))  # the same draws, one resample at a time
    slow = np.array([np.concatenate([terms[codes == g] for g in row]).mean(axis=0) for row in draws])
    np.testing.assert_allclose(fast, slow, rtol=1e-12)


def test_the_sign_flip_test_matches_exact_enumeration_and_has_a_floor() -> None:
    rng = np.random.default_rng(2)
    diff, codes = rng.normal(0.3, 1, size=40), np.repeat(np.arange(8), 5)
    sums = np.array([diff[codes == g].sum() for g in range(8)])
    exact = np.mean([abs(np.dot(s, sums)) >= abs(sums.sum()) - 1e-12 for s in itertools.product([-1, 1], repeat=8)])
    assert paired_flip_test(diff, codes, resamples=20000) == pytest.approx(exact, abs=0.01)
    assert paired_flip_test(np.ones(40) + rng.random(40), np.arange(40), resamples=999) == 1 / 1000


def test_groups_change_what_a_test_can_show() -> None:
    """Five photographs, twenty identical crops each: as 100 independent samples a difference looks certain;
    as five groups no sign pattern is rarer than 2 in 2^5."""
    diff = np.repeat([0.3, 0.1, 0.2, 0.4, 0.25], 20)
    assert paired_flip_test(diff, np.arange(100)) == pytest.approx(1 / 2001)
    assert paired_flip_test(diff, np.repeat(np.arange(5), 20), resamples=20000) == pytest.approx(2 / 32, abs=0.01)


def test_holm_by_hand() -> None:
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])
    np.testing.assert_allclose(holm([0.5, 0.001]), [0.5, 0.002])


def test_adjacent_ranks_that_are_and_are_not_separable() -> None:
    """Four models on 200 samples in 40 groups: A and B draw their terms from one distribution (paired noise
    only), C is lower by 0.2, D lower again by 0.2. A and B share a tier and rank interval; C and D are apart."""
    rng = np.random.default_rng(3)
    base = rng.random(200)
    terms = np.column_stack([base + rng.normal(0, 0.05, 200), base + rng.normal(0, 0.05, 200),
                             base - 0.2 + rng.normal(0, 0.05, 200), base - 0.4 + rng.normal(0, 0.05, 200)])
    order = np.argsort(-terms.mean(axis=0), kind="stable")
    terms = terms[:, order]
    codes = np.repeat(np.arange(40), 5)
    tests = adjacent_tests(terms, codes)
    assert tests.tier.tolist() == [1, 1, 2, 3]
    assert tests.p_next_holm.iloc[0] > 0.05 and (tests.p_next_holm.iloc[1:3] < 0.01).all()
    ivals = rank_intervals(terms, codes)
    assert ivals[["rank_low", "rank_high"]].values.tolist() == [[1, 2], [1, 2], [3, 3], [4, 4]]
    means = terms.mean(axis=0)
    assert (ivals.score_low < means).all() and (means < ivals.score_high).all()


@pytest.mark.parametrize("name", ["mutual_knn", "lcs_knn", "edit_distance_knn"])
def test_sample_terms_average_to_the_score(name: str) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(300, 12, generator=g), dim=1)
    y = torch.nn.functional.normalize(x + torch.randn(300, 12, generator=g), dim=1)
    m = get_metric(name)
    p = m.params(k=6)
    sx, sy = summarize_layers(m, [x], **p), summarize_layers(m, [y], **p)
    terms = m.sample_terms(sx[0].idx, sy[0].idx, **p)
    assert terms.shape == (300,) and float(terms.mean()) == pytest.approx(float(m.pair_scores(sx, sy, **p)[0, 0]), abs=1e-12)
    with pytest.raises(NotImplementedError):
        get_metric("cycle_knn").sample_terms(sx[0].idx, sy[0].idx, **p)


def test_a_two_cluster_correlation_is_reported_within_the_trained_cluster() -> None:
    """Trained models at 70-80% with alignment unrelated to accuracy, random controls at chance and lower
    alignment: across both r is near 1, within the trained models it is near 0."""
    acc = np.concatenate([np.linspace(0.7, 0.8, 12), np.full(6, 0.001)])
    wobble = np.tile([1, -1, -1, 1], 3)  # orthogonal to the accuracy ramp: r = 0 within the trained models
    align = np.concatenate([0.8 + 0.02 * wobble, 0.4 + 0.02 * np.array([1, -1, 0.5, -0.5, 0, 0.2])])
    table = pd.DataFrame({"a": align, "s": acc, "kind": ["trained"] * 12 + ["random"] * 6,
                          "log10_params": np.nan, "depth": np.nan, "log2_width": np.nan})
    rows = {(r["models"], r["statistic"]): r for r in grouped_correlations(table, "a", "s")}
    assert rows["all", "pearson"]["r"] > 0.95 and rows["all", "pearson"]["p_value"] < 0.01
    assert abs(rows["trained", "pearson"]["r"]) < 1e-12 and rows["trained", "pearson"]["p_value"] > 0.5
    assert rows["trained", "pearson"]["n"] == 12 and not any(k[1] == "partial pearson" for k in rows)


def test_partial_correlation_equals_the_textbook_formula_and_removes_a_shared_cause() -> None:
    rng = np.random.default_rng(6)
    z = rng.normal(size=30)
    x, y = z + rng.normal(0, 0.3, 30), z + rng.normal(0, 0.3, 30)
    r = np.corrcoef([x, y, z])
    textbook = (r[0, 1] - r[0, 2] * r[1, 2]) / np.sqrt((1 - r[0, 2] ** 2) * (1 - r[1, 2] ** 2))
    assert partial_r(x, y, z[:, None]) == pytest.approx(textbook, abs=1e-12)
    assert r[0, 1] > 0.8 and abs(textbook) < 0.4  # size drives both: held fixed, nothing is left
    row = correlate_partial(x, y, z[:, None])
    assert row["p_value"] > 0.05 and row["ci_low"] < row["r"] < row["ci_high"]
    w = rng.normal(size=30)  # a real link beyond z
    both = correlate_partial(z + w, z + w + rng.normal(0, 0.3, 30), z[:, None])
    assert both["r"] > 0.5 and both["p_value"] < 0.01
