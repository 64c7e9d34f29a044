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
    holm,
    paired_flip_test,
    rank_intervals,
)
from prh_bench.samples import group_codes


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
    terms = np.column_stack(
        [
            base + rng.normal(0, 0.05, 200),
            base + rng.normal(0, 0.05, 200),
            base - 0.2 + rng.normal(0, 0.05, 200),
            base - 0.4 + rng.normal(0, 0.05, 200),
        ]
    )
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
    assert terms.shape == (300,) and float(terms.mean()) == pytest.approx(
        float(m.pair_scores(sx, sy, **p)[0, 0]), abs=1e-12
    )
    with pytest.raises(NotImplementedError):
        get_metric("cycle_knn").sample_terms(sx[0].idx, sy[0].idx, **p)


def test_a_two_cluster_correlation_is_reported_within_the_trained_cluster() -> None:
    """Trained models at 70-80% with alignment unrelated to accuracy, random controls at chance and lower
    alignment: across both r is near 1, within the trained models it is near 0."""
    acc = np.concatenate([np.linspace(0.7, 0.8, 12), np.full(6, 0.001)])
    wobble = np.tile([1, -1, -1, 1], 3)  # orthogonal to the accuracy ramp: r = 0 within the trained models
    align = np.concatenate([0.8 + 0.02 * wobble, 0.4 + 0.02 * np.array([1, -1, 0.5, -0.5, 0, 0.2])])
    table = pd.DataFrame(
        {
            "a": align,
            "s": acc,
            "kind": ["trained"] * 12 + ["random"] * 6,
            "log10_params": np.nan,
            "depth": np.nan,
            "log2_width": np.nan,
        }
    )
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


def test_a_within_group_shuffle_moves_samples_only_within_their_group() -> None:
    from prh_bench.align.calibrate import within_groups

    codes = torch.tensor(group_codes(list("aabbbcaacdd")), dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    perms = [within_groups(codes, g) for _ in range(200)]
    for perm in perms:
        assert sorted(perm.tolist()) == list(range(11)) and torch.equal(codes[perm], codes)
    assert len({tuple(p.tolist()) for p in perms}) > 100  # 4! 3! 2! 2! = 576 possible


def test_a_grouped_null_is_not_beaten_by_knowing_the_groups_alone() -> None:
    """Two models whose features know only which of 12 photographs a sample comes from (independent noise
    otherwise): a free shuffle puts them far above the null; a shuffle within photographs does not."""
    from prh_bench.align.calibrate import calibrate_summaries

    g = torch.Generator().manual_seed(1)
    codes = torch.arange(12).repeat_interleave(10)
    centre = torch.randn(12, 32, generator=g) * 3
    x, y = (torch.nn.functional.normalize(centre[codes] + torch.randn(120, 32, generator=g), dim=1) for _ in range(2))
    m = get_metric("mutual_knn")
    p = m.params(k=5)
    sx, sy = summarize_layers(m, [x], **p), summarize_layers(m, [y], **p)
    observed = float(m.pair_scores(sx, sy, **p)[0, 0])
    free = calibrate_summaries(m, sx, sy, observed, p, 120, 99)
    grouped = calibrate_summaries(m, sx, sy, observed, p, 120, 99, groups=codes.tolist())
    assert free.p_value == 0.01 and free.calibrated > 0.2
    assert grouped.p_value > 0.05 and grouped.calibrated == 0.0


def test_a_subset_is_seeded_across_the_set_and_gives_each_group_its_share() -> None:
    from prh_bench.samples import Sample, SampleSet

    crops = SampleSet(tuple(Sample(id=f"p{p}/c{c}", group=f"p{p}") for p in range(5) for c in range(14)))
    sub = crops.subset(24)
    assert len(sub) == 24 and sub.ids == [i for i in crops.ids if i in set(sub.ids)]  # the set's order
    per = [sum(i.startswith(f"p{p}/") for i in sub.ids) for p in range(5)]
    assert sorted(per) == [4, 5, 5, 5, 5]  # 24 * 14/70 = 4.8 each, largest remainders first
    assert crops.subset(24).ids == sub.ids and crops.subset(24, seed=1).ids != sub.ids
    plain = SampleSet(tuple(Sample(id=str(i)) for i in range(100)))
    assert plain.subset(10).ids != [str(i) for i in range(10)] and len(set(plain.subset(10).ids)) == 10
    assert plain.subset(100) is plain and plain.subset(None) is plain


def test_the_mantel_test_matches_a_plain_enumeration_of_relabellings() -> None:
    from scipy.stats import spearmanr

    from prh_bench.results.consistency import consistency, entries, mantel

    rng = np.random.default_rng(7)
    pts = rng.normal(size=(6, 2))
    a = -np.sqrt(((pts[:, None] - pts[None]) ** 2).sum(-1))
    b = a + rng.normal(0, 0.3, size=a.shape)
    b = (b + b.T) / 2
    rho, p = mantel(a, b, permutations=4000)
    assert rho == pytest.approx(spearmanr(entries(a), entries(b)).statistic, abs=1e-12)
    exact = np.mean(
        [
            spearmanr(entries(a), entries(b[np.ix_(q, q)])).statistic >= rho - 1e-12
            for q in map(list, itertools.permutations(range(6)))
        ]
    )
    assert p == pytest.approx(exact, abs=0.01) and p < 0.05
    unrelated = rng.random((6, 6))
    assert mantel(a, (unrelated + unrelated.T) / 2)[1] > 0.05
    names = [f"m{i}" for i in range(6)]
    diag = np.where(np.eye(6, dtype=bool), np.nan, 0)  # alignment matrices have an empty diagonal
    mats = {c: pd.DataFrame(m + diag, index=names, columns=names) for c, m in (("one", a), ("two", b), ("three", a))}
    table = consistency(mats, "mutual_knn", "m0")
    assert table[["condition", "against"]].values.tolist() == [["two", "one"], ["three", "one"], ["three", "two"]]
    assert table.matrix_spearman.iloc[1] == pytest.approx(1.0) and table.ranking_spearman.iloc[1] == pytest.approx(1.0)


def test_p_values_at_their_permutation_floor_say_so() -> None:
    from types import SimpleNamespace

    from prh_bench.results.leaderboard import NullSettings
    from prh_bench.results.publish import display_table, p_floor_note

    table = pd.DataFrame({"model": ["a", "b", "c"], "params": [1e6, np.nan, 2e6], "p_value": [np.nan, 1 / 501, 0.04]})
    nulls = NullSettings(permutations=500, alpha=0.05, exchange="free")
    lb = SimpleNamespace(meta=SimpleNamespace(calibration=nulls), table=table)
    assert p_floor_note(lb).startswith("1 of 2 p-values sit at the floor of 500 permutations, shown as p <= 0.002")
    assert display_table(lb).p_value.tolist()[1:] == ["<= 0.002", 0.04]
    assert p_floor_note(SimpleNamespace(meta=SimpleNamespace(calibration=None), table=table)) == ""


def test_few_models_get_no_bootstrap_interval_and_few_controls() -> None:
    """Resamples of four models repeat a few configurations: their percentiles would look precise."""
    from prh_bench.results.leaderboard import correlate

    x, y = np.array([0.1, 0.5, 0.3, 0.9]), np.array([1.0, 2.0, 2.5, 4.0])
    assert all(np.isnan(r["ci_low"]) and np.isnan(r["ci_high"]) for r in correlate(x, y))
    assert all(not np.isnan(r["ci_low"]) for r in correlate(np.append(x, 0.7), np.append(y, 3.0)))
    table = pd.DataFrame(
        {
            "a": np.linspace(0, 1, 7),
            "s": np.linspace(0, 1, 7) ** 2,
            "kind": "trained",
            "log10_params": [6, 7, 6.5, 8, 7.2, 6.1, 7.7],
            "depth": [10, 20, 12, 30, 8, 9, 15],
            "log2_width": [8, 9, 10, 8, 9, 10, 11],
        }
    )
    partial = [r for r in grouped_correlations(table, "a", "s") if r["statistic"] == "partial pearson"]
    assert [r["controls"] for r in partial] == ["log10_params"] * 2  # 7 models: n - 2 - 4 = 1 control


def test_captions_of_one_image_are_a_group_and_singletons_are_no_structure(tmp_path) -> None:
    import json

    from PIL import Image

    from prh_bench.manifest import DatasetManifest
    from prh_bench.plugins.datasets.photos import image_captions
    from prh_bench.samples import Sample, SampleSet

    for name in ("a", "b"):
        Image.new("RGB", (8, 8), (name == "a" and "red") or "blue").save(tmp_path / f"{name}.png")
    rows = [("1", "a", "a red square"), ("2", "a", "red"), ("3", "b", "a blue square"), ("4", "a", "scarlet")]
    (tmp_path / "c.jsonl").write_text(
        "\n".join(json.dumps({"id": i, "image": f"{im}.png", "text": t}) for i, im, t in rows)
    )
    ds = DatasetManifest(
        kind="dataset",
        id="caps",
        version=1,
        loader="image_captions",
        modality="vision",
        options={"path": str(tmp_path / "c.jsonl")},
    )
    assert image_captions(ds).group_codes == (0, 0, 1, 0)
    assert SampleSet(tuple(Sample(id=str(i), group=str(i)) for i in range(4))).group_codes is None
    assert SampleSet(tuple(Sample(id=str(i)) for i in range(4))).group_codes is None


def test_correlations_within_each_family_of_three_or_more() -> None:
    """Two families whose sizes run opposite ways: within each, alignment tracks the score exactly; pooled over
    the trained models it does not. A family of two gets no row."""
    table = pd.DataFrame(
        {
            "a": [0.1, 0.2, 0.3, 0.9, 0.8, 0.7, 0.5, 0.4],
            "s": [1, 2, 3, 1, 2, 3, 9, 8.0],
            "kind": "trained",
            "family": ["f"] * 3 + ["g"] * 3 + ["h"] * 2,
            "log10_params": np.nan,
            "depth": np.nan,
            "log2_width": np.nan,
        }
    )
    rows = {(r["models"], r["statistic"]): r for r in grouped_correlations(table, "a", "s")}
    assert rows["family f", "pearson"]["r"] == pytest.approx(1.0) and rows["family g", "pearson"]["r"] == pytest.approx(
        -1.0
    )
    assert rows["family f", "pearson"]["n"] == 3 and ("family h", "pearson") not in rows
    assert abs(rows["trained", "pearson"]["r"]) < 0.5
