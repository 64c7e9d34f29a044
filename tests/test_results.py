"""Pairs scored once serve every suite, results merge across machines, and leaderboards come from the merge."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prh_bench.results.pair_records import disagreement, read_records
from prh_bench.results.run_folder import PARQUET_ROWS, read_table, write_table

from .conftest import cli, write_yaml
from .test_merge import record as merge_record

pytestmark = pytest.mark.slow  # runs models end to end, or kills, races or spawns processes

MODEL = (
    "kind: model\nid: {id}\nversion: 1\nbackend: timm\nsource: {source}\nmodality: vision\nweights: {{random: {seed}}}\n"
    "preprocess: {{input_size: [3, 48, 48]}}\ntags: [{tags}]\n"
)
SUITE = (
    "kind: suite\nid: {id}\nversion: 1\ndataset: pocket-photos\nmodels: {{tags: [{tag}]}}\n"
    "metrics: [{{name: mutual_knn, k: 5}}, {{name: cka}}]\nmax_samples: 40\nreference: r18\n"
    "calibrate: {{permutations: 9, pairs: reference}}\n"
)


def registry(root: Path) -> Path:
    models = {
        "r18": ("resnet18", "a, b"),
        "r10": ("resnet10t", "a, b"),
        "lite0": ("tf_efficientnet_lite0", "a, b"),
        "r14": ("resnet14t", "a"),
        "r26": ("resnet26", "b"),
    }
    for seed, (mid, (source, tags)) in enumerate(models.items()):
        write_yaml(root / f"{mid}.yaml", MODEL.format(id=mid, source=source, seed=seed, tags=tags))
    for suite in ("a", "b"):
        write_yaml(root / f"suite-{suite}.yaml", SUITE.format(id=f"suite-{suite}", tag=suite))
    return root


def run(reg: Path, suite: str, out: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    monkeypatch.setenv("PRH_BENCH_CACHE", str(cache))
    done = cli("--registry", reg, "run", "--suite", suite, "--out", out)
    assert done.exit_code == 0, done.output
    return {w["metric"]: w for w in json.loads((out / "run.json").read_text())["pair_work"]}


def test_suites_sharing_models_share_their_pairs_and_results_merge(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg = registry(tmp_path / "reg")
    # Suite a (r18, r10, lite0, r14) then suite b (r18, r10, lite0, r26) on one cache: b computes only r26's pairs.
    first = run(reg, "suite-a", tmp_path / "a", tmp_path / "cache", monkeypatch)
    assert {m: (w["pairs"], w["pairs_computed"], w["nulls_computed"]) for m, w in first.items()} == {
        "mutual_knn": (6, 6, 3),
        "cka": (6, 6, 3),
    }
    second = run(reg, "suite-b", tmp_path / "b", tmp_path / "cache", monkeypatch)
    assert {m: (w["pairs"], w["pairs_computed"], w["nulls_computed"]) for m, w in second.items()} == {
        "mutual_knn": (6, 3, 1),
        "cka": (6, 3, 1),
    }
    # Suite b again on a cache of its own (another machine): the same scores, bitwise for the count metric.
    alone = run(reg, "suite-b", tmp_path / "b2", tmp_path / "cache2", monkeypatch)
    assert all(w["pairs_computed"] == 6 for w in alone.values())
    shared, scratch = (read_table(tmp_path / d, "scores") for d in ("b", "b2"))
    knn = shared.metric == "mutual_knn"
    assert shared[knn].score.tolist() == scratch[knn].score.tolist()
    assert (shared[~knn].score - scratch[~knn].score).abs().max() <= 1e-12

    store = tmp_path / "store"
    merged = cli("merge", tmp_path / "a", tmp_path / "b2", "--into", store)
    assert merged.exit_code == 0, merged.output
    # 6 pairs of a + 6 of b2, 3 of them the same measurement: 9 pairs x 2 metrics; the 3 shared agree.
    assert "18 records added (9 files), 6 already present" in merged.output
    again = cli("merge", tmp_path / "b", "--into", store)
    assert "0 records added (0 files), 12 already present" in again.output

    board = cli(
        "--registry", reg, "leaderboard", "--suite", "suite-b", "--results", store, "--out", tmp_path / "lb", "--json"
    )
    assert board.exit_code == 0, board.output
    from_run = cli(
        "--registry",
        reg,
        "leaderboard",
        "--suite",
        "suite-b",
        "--run",
        tmp_path / "b2",
        "--out",
        tmp_path / "lb2",
        "--json",
    )
    table, expected = (json.loads((tmp_path / d / "leaderboard.json").read_text())["table"] for d in ("lb", "lb2"))
    assert [r["model"] for r in table] == [r["model"] for r in expected]
    for got, want in zip(table, expected, strict=True):
        assert got.get("alignment_to_reference") == pytest.approx(want.get("alignment_to_reference"), abs=1e-12)
        assert got.get("p_value") == want.get("p_value")
    assert from_run.exit_code == 0

    # A record from other features (a changed checkpoint, another library version) is refused, nothing written.
    victim = next((tmp_path / "b" / "results").rglob("r26.json"))
    records = json.loads(victim.read_text())
    records[0]["model_y"]["features_sha256"] = "0" * 64
    victim.write_text(json.dumps(records))
    before = sorted((p, p.read_bytes()) for p in store.rglob("*.json"))
    refused = cli("merge", tmp_path / "b", "--into", store)
    assert refused.exit_code == 2
    assert "refusing to merge: 1 record(s) disagree" in refused.output
    assert "model_y.features_sha256" in refused.output and str(victim) in refused.output
    assert sorted((p, p.read_bytes()) for p in store.rglob("*.json")) == before


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r.update(scores=[[0.5]]), "scores must be"),
        (lambda r: r.update(metric_version="1"), "field 'metric_version'"),
        (lambda r: r["model_x"].update(features_sha256="../../etc"), "field 'model_x.features_sha256'"),
        (lambda r: r.update(extra=1), "field 'extra'"),
    ],
)
def test_a_malformed_results_file_is_bad_input_naming_file_and_field(tmp_path: Path, change, message: str) -> None:
    record = merge_record(score=0.1)
    path = tmp_path / "d" / "x" / "y.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps([record]))
    (path.parent / ".tmp-abc.json").write_text("[{")  # a writer killed mid-file is no record
    (rec,) = read_records(path)
    other = rec.model_copy(update={"scores": [[0.1, float("nan")]]})
    assert disagreement(rec, rec) == "" and disagreement(rec, other) == "scores: a NaN on one side only"
    change(record)
    path.write_text(json.dumps([record]))
    done = cli("merge", tmp_path, "--into", tmp_path / "store")
    assert done.exit_code == 2 and str(path) in done.output and message in done.output


def test_long_tables_are_parquet_and_read_back_equal(tmp_path: Path) -> None:
    import pandas as pd

    short = pd.DataFrame({"params": ['{"k": 10}'] * 3, "layer_x": ["a", "b", "c"], "score": [0.1, 0.2, 0.3]})
    assert write_table(short, tmp_path, "scores").name == "scores.csv"
    pd.testing.assert_frame_equal(read_table(tmp_path, "scores"), short)
    long = pd.concat([short] * (PARQUET_ROWS // 3 + 1), ignore_index=True)
    (tmp_path / "x").mkdir()
    assert write_table(long, tmp_path / "x", "scores").name == "scores.parquet"
    pd.testing.assert_frame_equal(read_table(tmp_path / "x", "scores"), long)


def test_run_records_of_every_format_read_through_one_schema(tmp_path: Path) -> None:
    from prh_bench.errors import BadInput
    from prh_bench.results.run_record import RUN_FORMAT, read_run_record

    suite = {"kind": "suite", "id": "s", "version": 1, "dataset": "d", "models": ["m"], "metrics": [{"name": "cka"}]}
    dataset = {"kind": "dataset", "id": "d", "version": 1, "loader": "images", "modality": "vision"}
    old = {
        "suite": suite,
        "libraries": {"torch": "2"},
        "metrics": {"cka": {"version": 1}},
        "conditions": [{"label": "d", "dataset": dataset, "transform": None, "level": None, "n_samples": 20}],
        "models": {
            "m@step1": {
                "manifest_version": 1,
                "revision": "step1",
                "weights": "hub",
                "runs": [
                    {"condition": "d", "status": "cached", "cache_key": "k", "layers": 2, "seconds": 0.1, "error": ""}
                ],
            }
        },
    }
    (tmp_path / "run.json").write_text(json.dumps(old))  # format 1: no format field, no pair work
    record = read_run_record(tmp_path)
    assert record.format == RUN_FORMAT and record.suite_id == "s" and record.pair_work == []
    assert record.n_samples("d") == 20 and record.models["m@step1"].manifest_id is None
    for doc, message in [
        ({**old, "format": RUN_FORMAT + 1}, "newer than this prh-bench reads"),
        ({**old, "models": {"m": {"manifest_version": "one"}}}, "field 'models.m.manifest_version'"),
        ({**old, "suite": {**suite, "metrics": []}}, "field 'suite.metrics'"),
        ({**old, "scores_csv": "x"}, "field 'scores_csv': Extra inputs are not permitted"),
        ([old], "a JSON object is expected"),
    ]:
        (tmp_path / "run.json").write_text(json.dumps(doc))
        with pytest.raises(BadInput, match=message):
            read_run_record(tmp_path)
