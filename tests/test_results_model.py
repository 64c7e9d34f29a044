"""The one results model: what a run writes is what every reader gets back, parameters as data, nothing lost or
re-typed on the way through the files."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from prh_bench.errors import BadInput
from prh_bench.manifest import DatasetManifest, SuiteManifest
from prh_bench.results.matrices import params_keys
from prh_bench.results.results import Results
from prh_bench.results.run_record import ConditionEntry, MetricEntry, ModelEntry, ModelRun, RunRecord

SUITE = SuiteManifest(
    kind="suite",
    id="s",
    version=3,
    dataset="d",
    models=["NA", "b", "c"],
    metrics=[{"name": "mutual_knn", "params": {"k": 2}}, {"name": "cka"}],
    reference="b",
)
DATASET = DatasetManifest(kind="dataset", id="d", version=2, loader="images", modality="vision")


def results(tmp_path: Path, conditions: tuple[str, ...] = ("d",)) -> Results:
    """Three models (one named 'NA', which a CSV reader would take for missing), two metrics, a NaN score."""
    knn, cka = {"k": 2}, {"kernel": "linear"}
    rows = []
    for cond in conditions:
        for x, y in (("NA", "b"), ("NA", "c"), ("b", "c")):
            for metric, params in (("mutual_knn", knn), ("cka", cka)):
                for lx in ("l0", "l1"):
                    score = math.nan if (x, lx, metric) == ("NA", "l1", "cka") else 0.1 * len(rows)
                    rows.append(
                        {
                            "condition": cond,
                            "model_x": x,
                            "model_y": y,
                            "layer_x": lx,
                            "layer_y": "NA",
                            "metric": metric,
                            "params": params,
                            "score": score,
                        }
                    )
    record = RunRecord(
        suite=SUITE,
        conditions=[ConditionEntry(label=c, dataset=DATASET, n_samples=40) for c in conditions],
        models={
            m: ModelEntry(
                manifest_version=1,
                weights="random (seed 0)",
                runs=[ModelRun(condition=c, status="cached", layers=2, widths=[8, 16]) for c in conditions],
            )
            for m in ("NA", "b", "c")
        },
        metrics={"mutual_knn": MetricEntry(version=1), "cka": MetricEntry(version=1)},
    )
    probes = pd.DataFrame(
        {"task": ["linear_probe"] * 3, "dataset": ["d"] * 3, "model": ["NA", "b", "c"], "score": [0.5, 0.6, 0.7]}
    )
    return Results(tmp_path, record, pd.DataFrame(rows), probes=probes)


def test_written_results_read_back_equal(tmp_path: Path) -> None:
    res = results(tmp_path)
    files = res.write(tmp_path / "run")
    assert set(files) == {"scores", "probes", "sidecar"}
    back = Results.read(tmp_path / "run")
    assert back.record == res.record
    pd.testing.assert_frame_equal(back.scores, res.scores)  # 'NA' stays a name, NaN stays NaN, params stay dicts
    pd.testing.assert_frame_equal(back.probes, res.probes)
    assert back.scores.params.iloc[0] == {"k": 2} and back.params("cka") == {"kernel": "linear"}
    assert (tmp_path / "run" / "scores.csv").read_text().count('"{""k"": 2}"') == 6  # canonical text on disk
    assert (
        back.matrix("cka").loc["c", "NA"]
        == res.scores[
            (res.scores.metric == "cka") & (res.scores.model_y == "c") & (res.scores.model_x == "NA")
        ].score.max()
    )
    assert back.models.widest.tolist() == [16, 16, 16]


def test_parameter_texts_are_written_once_per_shared_dict() -> None:
    shared = {"k": 10, "a": 1}
    assert params_keys([shared, shared, {"a": 1, "k": 10}]) == ['{"a": 1, "k": 10}'] * 3


def test_consistency_is_computed_from_the_matrices(tmp_path: Path) -> None:
    one = results(tmp_path)
    assert one.consistency("cka").empty
    two = results(tmp_path, ("d", "d noisy"))
    table = two.consistency("mutual_knn")
    assert table[["condition", "against"]].values.tolist() == [["d noisy", "d"]] and table.models.iloc[0] == 3


def test_a_table_that_is_not_the_records_is_refused(tmp_path: Path) -> None:
    res = results(tmp_path)
    res.write(tmp_path / "run")
    text = (tmp_path / "run" / "scores.csv").read_text()
    (tmp_path / "run" / "scores.csv").write_text(text.replace('"{""k"": 2}"', '"[2]"', 1))
    with pytest.raises(BadInput, match=r"field 'params' of metric 'mutual_knn': expected a JSON object"):
        Results.read(tmp_path / "run")
    (tmp_path / "run" / "scores.csv").write_text(text.replace("\nd,", "\nelsewhere,", 1))
    with pytest.raises(BadInput, match=r"no entry with n_samples for condition 'elsewhere'"):
        Results.read(tmp_path / "run")
