"""Leaderboards from stored results: ranking, correlations with their intervals, files, the page, publishing."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from prh_bench.results.leaderboard import correlate

from .conftest import cli, cli_json, write_yaml

pytestmark = pytest.mark.slow  # runs models end to end, or kills, races or spawns processes

SUITE = """\
kind: suite
id: tiny-board
version: 1
dataset: pocket-photos
models: [efficientnet-lite0, efficientnet-lite1, efficientnet-lite2, efficientnet-lite0-random]
metrics: [{name: mutual_knn, k: 5}, {name: cka}]
reference: efficientnet-lite2
scores: [imagenet_top1]
probes: [{dataset: digits-small, task: linear_probe, params: {test_fraction: 0.5}}]
calibrate: {permutations: 19}
max_samples: 24
"""
DIGITS = """\
kind: dataset
id: digits-small
version: 1
loader: sklearn_digits
modality: vision
options: {size: 32, limit: 60, seed: 0}
"""


def test_correlate_matches_scipy_and_brackets_r() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=12)
    y = 0.8 * x + rng.normal(scale=0.5, size=12)
    rows = {r["statistic"]: r for r in correlate(x, y)}
    assert rows["pearson"]["r"] == pytest.approx(stats.pearsonr(x, y).statistic)
    assert rows["spearman"]["r"] == pytest.approx(stats.spearmanr(x, y).statistic)
    for r in rows.values():
        assert r["ci_low"] < r["r"] < r["ci_high"] and 0 < r["p_value"] < 0.05 and r["n"] == 12
    unrelated = {r["statistic"]: r for r in correlate(x, rng.normal(size=12))}
    assert unrelated["pearson"]["p_value"] > 0.05


def test_leaderboard_from_stored_results(tmp_path: Path) -> None:
    write_yaml(tmp_path / "reg" / "suite.yaml", SUITE)
    write_yaml(tmp_path / "reg" / "digits.yaml", DIGITS)
    reg = ["--registry", str(tmp_path / "reg")]
    missing = cli(*reg, "leaderboard", "--suite", "tiny-board", "--runs", tmp_path / "runs")
    assert missing.exit_code == 2 and "no stored results of suite 'tiny-board'" in missing.stderr
    cli(*reg, "run", "--suite", "tiny-board", "--out", tmp_path / "runs" / "tiny-board" / "20260101-000000")
    out = cli_json(
        *reg, "leaderboard", "--suite", "tiny-board", "--runs", tmp_path / "runs", "--out", tmp_path / "board"
    )
    board = pd.read_csv(tmp_path / "board" / "leaderboard.csv")
    assert list(board.model) == [
        "efficientnet-lite2",
        "efficientnet-lite1",
        "efficientnet-lite0",
        "efficientnet-lite0-random",
    ]
    assert board["rank"].tolist() == ["reference", "1", "2", "3"]
    assert (
        board.alignment_to_reference.iloc[1]
        >= board.alignment_to_reference.iloc[2]
        > board.alignment_to_reference.iloc[3]
    )
    assert board.imagenet_top1.tolist() == [0.776, 0.767, 0.751, 0.001]
    # Each model's permutation p-value and calibrated score to the reference, read from the run's nulls.
    nulls = pd.read_csv(tmp_path / "runs" / "tiny-board" / "20260101-000000" / "calibration.csv")
    knn = nulls[nulls.metric == "mutual_knn"]
    for r in board.iloc[1:].itertuples():
        (hit,) = [h for h in knn.itertuples() if {h.model_x, h.model_y} == {r.model, "efficientnet-lite2"}]
        assert (r.p_value, r.calibrated) == pytest.approx((hit.p_value, hit.calibrated))
        assert hit.p_value >= 1 / 20 and 0 <= hit.calibrated <= 1
    assert board.columns.get_loc("p_value") == board.columns.get_loc("alignment_to_reference") + 1
    corr = pd.DataFrame(out["correlations"])
    assert set(corr.statistic) == {"pearson", "spearman"}
    assert {"imagenet_top1", "linear_probe:digits-small"} <= set(corr.score)
    # The probe ran on every model's cached features, and 'solved' follows the 80%-of-best rule.
    probes = pd.read_csv(tmp_path / "runs" / "tiny-board" / "20260101-000000" / "probes.csv")
    assert len(probes) == 4 and probes.score.between(0, 1).all()
    best = probes.score.max()
    solved = dict(zip(board.model, board.tasks_solved, strict=True))
    assert solved == {m: float(s >= 0.8 * best) for m, s in zip(probes.model, probes.score, strict=True)}
    binned = pd.read_csv(tmp_path / "board" / "binned.csv")
    assert binned.models.sum() == 3  # the reference has no alignment to itself
    meta = json.loads((tmp_path / "board" / "leaderboard.json").read_text())["meta"]
    assert meta["chance_level"] == pytest.approx(5 / 23) and meta["calibration"] == {
        "permutations": 19,
        "alpha": 0.05,
        "exchange": "within_groups",
    }
    assert (
        "Chance level of mutual_knn at N = 24: 0.2174 (k/(N-1) = 5/23)"
        in (tmp_path / "board" / "leaderboard.md").read_text()
    )
    assert meta["metric"] == "mutual_knn" and meta["metric_params"] == {"k": 5} and meta["harness"]
    assert (
        meta["manifest_versions"]["efficientnet-lite0"] == 1
        and "tensorflow/tpu" in meta["scores_sources"]["imagenet_top1"]
    )
    for name in ("heatmap.png", "heatmap.svg", "embedding.png", "embedding.svg", "scatter_imagenet_top1.svg"):
        assert (tmp_path / "board" / name).stat().st_size > 0
    page = (tmp_path / "board" / "index.html").read_text()
    assert len(re.findall(r"<tr><td>", page)) == 4 and 'onclick="sortBy(' in page
    assert "Chance level of mutual_knn at N = 24: 0.2174" in page and "alpha = 0.05" in page
    # heatmap, embedding, and one scatter per downstream score (ImageNet top-1, the probe, tasks solved)
    assert page.count("data:image/png;base64,") == 5 and "http" not in page.split("<h2>Sources")[0]
    assert (tmp_path / "board" / "scatter_linear_probe_digits-small.svg").exists()
    # How sure the ranking is: each model's alignment is the mean of its per-sample terms, resampled by
    # photograph for its interval and rank interval. max_samples draws the 24 crops across the 20 photographs
    # (1.2 each: every photograph gives one, four give two), not the first 24 (crops of two photographs).
    run_dir = tmp_path / "runs" / "tiny-board" / "20260101-000000"
    terms = pd.read_csv(run_dir / "sample_terms.csv")
    assert len(terms) == 24 and sorted(terms.group.value_counts()) == [1] * 16 + [2] * 4
    ranked = board.iloc[1:]
    assert terms[list(ranked.model)].mean().to_numpy() == pytest.approx(
        ranked.alignment_to_reference.to_numpy(), abs=1e-12
    )
    assert (ranked.ci_low <= ranked.alignment_to_reference).all() and (
        ranked.alignment_to_reference <= ranked.ci_high
    ).all()
    assert (ranked.rank_low <= ranked["rank"].astype(int)).all() and (
        ranked["rank"].astype(int) <= ranked.rank_high
    ).all()
    assert meta["uncertainty"]["groups"] == 20 and meta["uncertainty"]["samples"] == 24
    assert ranked.tier.iloc[0] == 1 and ranked.tier.diff().dropna().isin([0, 1]).all()
    md = (tmp_path / "board" / "leaderboard.md").read_text()
    assert "resamples with replacement of the 20 groups of samples" in md
    limits = md.split("## What these data can and cannot show")[1].split("##")[0]
    assert "24 samples in 20 groups" in limits and "Random-initialised controls score" in limits
    assert "rests on 2 models" not in limits  # fewer than 3 trained models with a score: no within-kind row
    corr = pd.read_csv(tmp_path / "board" / "correlations.csv")
    # three trained EfficientNet-Lites have a mean alignment: the family gets its own row (the trained row too)
    assert set(corr.models) == {"all", "trained", "family efficientnet-lite"}
    assert set(corr[corr.models == "family efficientnet-lite"].alignment) == {"mean_alignment"}
    terms.loc[0, "efficientnet-lite1"] += 0.5  # an edited terms file no longer averages to the scores
    terms.to_csv(run_dir / "sample_terms.csv", index=False)
    edited = cli(*reg, "leaderboard", "--suite", "tiny-board", "--run", run_dir, "--out", tmp_path / "board-edited")
    assert edited.exit_code == 2 and "sample_terms table: the mean terms of mutual_knn" in edited.stderr
    (run_dir / "sample_terms.csv").unlink()  # a run without terms (an older one) still has a leaderboard
    older = cli_json(*reg, "leaderboard", "--suite", "tiny-board", "--run", run_dir, "--out", tmp_path / "board-old")
    assert "ci_low" not in pd.read_csv(Path(older["files"]["leaderboard.csv"]))
    by_cka = cli_json(
        *reg,
        "leaderboard",
        "--suite",
        "tiny-board",
        "--runs",
        tmp_path / "runs",
        "--metric",
        "cka",
        "--out",
        tmp_path / "board-cka",
    )
    assert Path(by_cka["files"]["leaderboard.md"]).read_text().count("cka") >= 1
    published = cli("publish", "--suite", "tiny-board", "--from", tmp_path, "--to", tmp_path / "site")
    assert published.exit_code == 2  # no tmp_path/tiny-board bundle: clear error
    published = cli("publish", "--suite", "board", "--from", tmp_path, "--to", tmp_path / "site")
    assert published.exit_code == 0 and (tmp_path / "site" / "board" / "index.html").exists()


def test_matrices_follow_the_paper_orientation_for_asymmetric_metrics() -> None:
    """The long table holds metric(model_x, model_y); the matrix entry [a, b] is metric(b, a), as the PRH
    pipeline's alignment_scores[x, y] = compute_score(y_feats, x_feats)."""
    from prh_bench.results.matrices import alignment_matrix

    rows = [("a", "b", 0.3), ("b", "a", 0.7)]  # cycle_knn(a, b) = 0.3, cycle_knn(b, a) = 0.7
    best = pd.DataFrame([{"metric": "cycle_knn", "model_x": x, "model_y": y, "score": v} for x, y, v in rows])
    mat = alignment_matrix(best, "cycle_knn", ["a", "b"])
    assert mat.loc["a", "b"] == 0.7 and mat.loc["b", "a"] == 0.3
    sym = alignment_matrix(best.iloc[:1].assign(metric="mutual_knn"), "mutual_knn", ["a", "b"])
    assert sym.loc["a", "b"] == sym.loc["b", "a"] == 0.3


def test_classical_mds_recovers_planar_distances() -> None:
    from scipy.spatial.distance import pdist, squareform

    from prh_bench.results.figures import classical_mds

    pts = np.random.default_rng(1).normal(size=(7, 2))
    d = squareform(pdist(pts))
    xy, kept = classical_mds(d)
    np.testing.assert_allclose(squareform(pdist(xy)), d, atol=1e-9)
    assert kept == pytest.approx(1.0)


def test_markdown_tables_escape_text_columns_of_every_dtype() -> None:
    """pandas 3 gives text columns the dtype `str`: escaping only object columns let markup through."""
    import pandas as pd

    from prh_bench.results.report import md_table

    for dtype in (object, "str", "string"):
        table = pd.DataFrame(
            {"model": pd.Series(["<img src=x onerror=alert(1)>", "a|b"], dtype=dtype), "score": [0.5, 0.25]}
        )
        md = md_table(table)
        assert not re.search(r"(?<!\\)[<|]img", md) and r"\<img" in md and r"a\|b" in md and md.count("\n") == 3


def test_publish_replaces_links_in_the_destination_and_refuses_links_in_the_bundle(tmp_path: Path) -> None:
    """`publish --to` a folder holding a symlink overwrote the link's target; a symlink inside a bundle
    published its target's content."""
    bundle = tmp_path / "boards" / "board"
    bundle.mkdir(parents=True)
    (bundle / "index.html").write_text("<html>board</html>")
    (bundle / "leaderboard.md").write_text("| model |")
    secret, victim = tmp_path / "secret.txt", tmp_path / "victim.txt"
    secret.write_text("private"), victim.write_text("keep me")
    site = tmp_path / "site" / "board"
    site.mkdir(parents=True)
    (site / "index.html").symlink_to(victim)
    assert cli("publish", "--suite", "board", "--from", tmp_path / "boards", "--to", tmp_path / "site").exit_code == 0
    assert victim.read_text() == "keep me" and not (site / "index.html").is_symlink()
    assert (site / "index.html").read_text() == "<html>board</html>" and not list(site.glob(".publish-*"))
    (bundle / "leak.txt").symlink_to(secret)
    result = cli("publish", "--suite", "board", "--from", tmp_path / "boards", "--to", tmp_path / "other")
    assert result.exit_code == 2 and "leak.txt: the bundle holds a link" in result.output
    assert not (tmp_path / "other" / "board" / "leak.txt").exists()
    (bundle / "leak.txt").unlink()
    (tmp_path / "site2").mkdir()
    (tmp_path / "site2" / "board").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    result = cli("publish", "--suite", "board", "--from", tmp_path / "boards", "--to", tmp_path / "site2")
    assert result.exit_code == 2 and "is a link or a file" in result.output


def test_a_dollar_in_a_model_id_is_text_in_figures(tmp_path: Path) -> None:
    """Model ids from run folders made elsewhere may hold '$': matplotlib read '$x$' as TeX and raised while
    saving the figure."""
    from prh_bench.results.figures import matrix_figure, pyplot

    ids = ["price$a", "b$c$d", "$\\frac{"]
    mat = pd.DataFrame(np.eye(3) * 0.5 + 0.5, index=ids, columns=ids)
    fig = matrix_figure(mat, "alignment of $ models", "mutual_knn")
    fig.savefig(tmp_path / "h.png")  # raised "ValueError: ... Expected end of text" before
    pyplot().close(fig)
    assert (tmp_path / "h.png").stat().st_size > 1000


def test_a_row_status_says_what_happened_to_the_model() -> None:
    """ok with scores and no failed run; failed when a run failed; 'no results' for a model nothing ran (a store
    without its records): never a status made up for a model that did not run."""
    from prh_bench.results.leaderboard import model_status
    from prh_bench.results.run_record import ModelEntry, ModelRun

    ok, failed = ModelRun(condition="d", status="cached"), ModelRun(condition="d", status="failed", error="x")
    assert model_status(ModelEntry(manifest_version=1, runs=[ok]), scored=True) == "ok"
    assert model_status(ModelEntry(manifest_version=1, runs=[ok, failed]), scored=True) == "failed"
    assert model_status(ModelEntry(manifest_version=1, runs=[failed]), scored=False) == "failed"
    assert model_status(ModelEntry(manifest_version=1), scored=True) == "ok"
    assert model_status(ModelEntry(manifest_version=1), scored=False) == "no results"
