"""Score baselines: `baseline` freezes a run's scores, `check` fails on any score that moved, any score
missing and any version that changed, and passes again once the change is reverted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from .conftest import cli
from .test_faults import MODEL, registry

TWO = {"f-resnet18": "resnet18", "f-lite0": "tf_efficientnet_lite0"}


@pytest.fixture
def frozen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path, Path]:
    """A registry, a run of its suite and the baseline written from it (working directory: tmp_path)."""
    monkeypatch.chdir(tmp_path)
    reg = registry(tmp_path / "reg", TWO)
    assert cli("--registry", reg, "run", "--suite", "faulty", "--out", tmp_path / "run").exit_code == 0
    made = cli("baseline", "--suite", "faulty", "--run", tmp_path / "run", "--out", tmp_path / "faulty.json")
    assert made.exit_code == 0, made.output
    return reg, tmp_path / "run", tmp_path / "faulty.json"


def test_unchanged_run_passes_and_baseline_is_one_score_per_line(frozen: tuple[Path, Path, Path]) -> None:
    reg, run, base = frozen
    result = cli("--registry", reg, "check", "--baseline", base, "--run", run, "--atol", "0")
    assert result.exit_code == 0, result.output
    doc = json.loads(base.read_text())
    assert doc["versions"]["models"] == {"f-resnet18": 1, "f-lite0": 1} and doc["tolerance"]["atol"] == 2e-3
    assert len(doc["scores"]) == len(base.read_text().splitlines()) - 13  # header lines + 3 tables
    assert doc["format"] == 2 and doc["tolerances"] == {"probes": {"atol": 0.02, "rtol": 0.0}}
    assert f"ok: {len(doc['scores'])} scores compared" in result.output


def test_a_moved_score_fails_listing_the_pair(frozen: tuple[Path, Path, Path]) -> None:
    reg, run, base = frozen
    doc = json.loads(base.read_text())
    row = next(r for r in doc["scores"] if r["metric"] == "cka")
    row["score"] += 0.01
    base.write_text(json.dumps(doc))
    result = cli("--registry", reg, "check", "--baseline", base, "--run", run)
    assert result.exit_code == 1
    assert "moved beyond tolerance (1; scores: atol=0.002 rtol=0" in result.output
    assert f"cka {row['model_x']} x {row['model_y']}" in result.output and "(-1.00e-02)" in result.output
    assert cli("--registry", reg, "check", "--baseline", base, "--run", run, "--atol", "0.02").exit_code == 0


def test_a_changed_manifest_fails_the_check_and_passes_after_revert(frozen: tuple[Path, Path, Path]) -> None:
    """The CI guard end to end: change preprocessing (the scores move), check fails; revert, check passes."""
    reg, _, base = frozen
    manifest = reg / "f-lite0.yaml"
    original = manifest.read_text()
    manifest.write_text(original.replace("[3, 64, 64]", "[3, 96, 96]"))
    moved = cli("--registry", reg, "check", "--baseline", base)
    assert moved.exit_code == 1 and "FAILED" in moved.output
    assert "f-lite0 x f-resnet18" in moved.output and "version" not in moved.output
    manifest.write_text(original)
    assert cli("--registry", reg, "check", "--baseline", base, "--atol", "0").exit_code == 0


def test_missing_models_and_version_changes_are_listed(frozen: tuple[Path, Path, Path], tmp_path: Path) -> None:
    reg, _, base = frozen
    (reg / "f-resnet18.yaml").write_text(
        MODEL.format(id="f-resnet18", source="resnet18", weights="{random: 0}").replace("version: 1", "version: 2")
    )
    (reg / "f-lite0.yaml").unlink()
    (reg / "f-resnet10.yaml").write_text(MODEL.format(id="f-resnet10", source="resnet10t", weights="{random: 2}"))
    result = cli("--registry", reg, "check", "--baseline", base, "--json")
    assert result.exit_code == 1
    out = json.loads(result.stdout)
    assert not out["ok"] and out["compared"] == 0
    both_ways = {("f-lite0", "f-resnet18"), ("f-resnet18", "f-lite0")}  # cknna scores each pair both ways
    assert {(r["model_x"], r["model_y"]) for r in out["missing"]} == both_ways
    assert {(r["model_x"], r["model_y"]) for r in out["unexpected"]} == {
        ("f-resnet10", "f-resnet18"),
        ("f-resnet18", "f-resnet10"),
    }
    assert "versions.models.f-resnet18: baseline 1, run 2" in out["versions"]
    assert "versions.models.f-lite0: baseline 1, run None" in out["versions"]


@pytest.mark.parametrize(
    "content,message",
    [
        ("{not json", "cannot read the baseline"),
        ('{"format": 1}', "field 'suite': Field required"),
        ("[1, 2]", "expected a JSON object, got list"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        (
            (
                '{"format": 9, "suite": "s", "tolerance": {}, "versions": {}, '
                '"scores": [], "probes": [], "model_scores": []}'
            ),
            "field 'format': Input should be 1 or 2, got 9",
        ),
    ],
)
def test_bad_baseline_file_is_bad_input(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "b.json"
    path.write_text(content)
    result = cli("check", "--baseline", path, "--run", tmp_path)
    assert result.exit_code == 2 and message in result.stderr


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["tolerance"].update(atol=float("nan")), "field 'tolerance.atol'"),
        (
            lambda d: d["tolerance"].update(atol=-1),
            "field 'tolerance.atol': Input should be greater than or equal to 0",
        ),
        (lambda d: d["tolerance"].update(atol="0.5"), "field 'tolerance.atol': Input should be a valid number"),
        (lambda d: d.update(tolerance={}), "field 'tolerance.atol': Field required"),
        (
            lambda d: d.update(tolerances={"probes": {"atol": float("inf"), "rtol": 0}}),
            "field 'tolerances.probes.atol'",
        ),
        (lambda d: d["scores"][0].update(score="0.5"), "field 'scores.0.score': Input should be a valid number"),
        (lambda d: d["scores"][0].update(score=float("nan")), "field 'scores.0.score'"),
        (lambda d: d["scores"].append(dict(d["scores"][0])), "repeats the row"),
        (
            lambda d: d["scores"][0].update(extra={"a": [[[[1]]]]}),
            "field 'scores.0.extra': Extra inputs are not permitted",
        ),
        (lambda d: d["versions"].update(suite="1"), "field 'versions.suite': Input should be a valid integer"),
    ],
)
def test_ill_typed_baselines_are_bad_input_never_a_pass(frozen: tuple[Path, Path, Path], change, message: str) -> None:
    reg, run, base = frozen
    doc = json.loads(base.read_text())
    change(doc)
    base.write_text(json.dumps(doc))
    result = cli("--registry", reg, "check", "--baseline", base, "--run", run)
    assert result.exit_code == 2 and message in result.stderr, result.output


@pytest.mark.parametrize("atol", ["nan", "-1", "inf", "abc"])
def test_a_nan_or_negative_tolerance_option_is_refused(frozen: tuple[Path, Path, Path], atol: str) -> None:
    reg, run, base = frozen
    doc = json.loads(base.read_text())
    doc["scores"][0]["score"] += 0.5  # a moved score that a NaN tolerance would let pass
    base.write_text(json.dumps(doc))
    result = cli("--registry", reg, "check", "--baseline", base, "--run", run, "--atol", atol)
    assert result.exit_code == 2 and "--atol" in result.output


def test_a_probe_moved_by_one_test_sample_passes_and_a_changed_probe_fails(frozen: tuple[Path, Path, Path]) -> None:
    """Another machine's rounding may flip a probe's test sample (1/150 on pocket-digits): within the probe
    table's tolerance; a score moved by as much still fails."""
    from prh_bench.results.baseline import ProbeRow, compare, measured, read_baseline, tolerances
    from prh_bench.results.results import Results

    _reg, run, base = frozen
    doc, got = read_baseline(base), measured(Results.read(run))
    probe = {"task": "linear_probe", "dataset": "d", "model": "f-lite0"}
    got.tables["probes"] = pd.DataFrame([probe | {"score": 0.547}])

    def baseline_with(probe_score: float, score_shift: float = 0.0) -> Any:
        scores = [doc.scores[0].model_copy(update={"score": doc.scores[0].score + score_shift}), *doc.scores[1:]]
        return doc.model_copy(update={"probes": [ProbeRow(**probe, score=probe_score)], "scores": scores})

    assert compare(baseline_with(0.540), got, tolerances(doc)).ok
    assert not compare(baseline_with(0.60), got, tolerances(doc)).ok
    assert not compare(baseline_with(0.540, 0.007), got, tolerances(doc)).ok


def test_baseline_needs_a_run_of_that_suite(frozen: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _, run, _ = frozen
    result = cli("baseline", "--suite", "pocket", "--run", run)
    assert result.exit_code == 2 and "is a run of suite 'faulty', not 'pocket'" in result.stderr
    result = cli("baseline", "--suite", "pocket", "--runs", tmp_path / "nowhere")
    assert result.exit_code == 2 and "no stored results of suite 'pocket'" in result.stderr


def test_committed_baselines_match_their_suites() -> None:
    """Every offline suite has a baseline, and so does every leaderboard published under leaderboards/ (CI runs
    each baseline's suite: a published page no baseline guards could drift unseen); each names its suite's
    current versions."""
    from prh_bench.manager import load_plugins
    from prh_bench.registry import Registry

    reg = Registry.load(load_plugins())
    root = Path(__file__).parents[1] / "leaderboards" / "baselines"
    published = sorted(p.name for p in root.parent.iterdir() if p.is_dir() and p.name != "baselines")
    assert "real-language-vision-ci" in published
    for suite in dict.fromkeys(["pocket", "pocket-text", "pocket-digits", *published]):
        doc = json.loads((root / f"{suite}.json").read_text())
        manifest = reg.get(suite)
        assert doc["suite"] == suite and doc["versions"]["suite"] == manifest.version
        models = reg.suite_models(manifest)
        assert doc["versions"]["models"] == {m.id: m.version for m in models}
        assert doc["scores"]


def _drop_conditions(run: Path) -> None:
    doc = json.loads((run / "run.json").read_text())
    doc["conditions"] = []
    (run / "run.json").write_text(json.dumps(doc))


def _word_for_k(run: Path) -> None:
    scores = run / "scores.csv"
    scores.write_text(scores.read_text().replace('""k"": 5', '""k"": ""five""'))


@pytest.mark.parametrize(
    ("damage", "commands", "message"),
    [
        (
            _drop_conditions,
            ("leaderboard", "baseline", "check"),
            "run.json: field 'conditions': no entry with n_samples for condition 'pocket-photos' of the scores table",
        ),
        (
            _word_for_k,
            ("leaderboard",),
            "scores table, field 'params' of metric 'mutual_knn': mutual_knn: parameter 'k' must be an integer",
        ),
    ],
)
def test_a_run_folder_edited_or_mixed_is_bad_input(
    frozen: tuple[Path, Path, Path], damage, commands, message: str
) -> None:
    """A condition missing from run.json (a TypeError in the chance level, and a baseline its check refused)
    and a non-numeric k in the scores (a TypeError) are errors naming the file and field."""
    reg, run, base = frozen
    assert '""k"": 5' in (run / "scores.csv").read_text()
    damage(run)
    args = {
        "leaderboard": ("leaderboard", "--suite", "faulty", "--run", run, "--out", run.parent / "lb"),
        "baseline": ("baseline", "--suite", "faulty", "--run", run, "--out", run.parent / "again.json"),
        "check": ("check", "--baseline", base, "--run", run),
    }
    for command in commands:
        result = cli("--registry", reg, *args[command])
        assert result.exit_code == 2 and message in result.stderr, (command, result.output)
    assert not (run.parent / "again.json").exists()
