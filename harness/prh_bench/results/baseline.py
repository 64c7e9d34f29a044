"""Score baselines: a suite's scores frozen in a committed JSON file, and the check that a run still gives them.

A baseline holds every score of a run folder (each layer pair of each model pair, probe and per-model scores),
the versions that define them (suite, metrics, model and dataset manifests, sample counts) and the tolerance
the check uses by default. The check lists every model pair that moved beyond tolerance, every score missing
from the run or not in the baseline, and every version that differs. Library versions are shown, not checked:
the tolerance is what absorbs their numerical noise.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..errors import BadInput
from .documents import Finite
from .matrices import params_keys
from .results import Results

FORMAT = 2  # 2: per-table tolerances
#: mutual_knn on 280 samples with k=10 moves by 1/2800 = 3.6e-4 per neighbour that flips; the default allows
#: a few flips from another CPU's float rounding, and catches any change of preprocessing, weights or metric
DEFAULT_TOLERANCE = {"atol": 2e-3, "rtol": 0.0}
#: a linear probe's accuracy moves by 1/n_test per test sample another machine's rounding flips (1/150 on
#: pocket-digits): three flips pass, a changed model or probe does not
DEFAULT_TABLE_TOLERANCES = {"probes": {"atol": 0.02, "rtol": 0.0}}
Table = Literal["scores", "probes", "model_scores"]
TABLES: dict[Table, list[str]] = {  # table -> the columns that identify a score
    "scores": ["condition", "metric", "params", "model_x", "model_y", "layer_x", "layer_y"],
    "probes": ["task", "dataset", "model"],
    "model_scores": ["condition", "model", "score"],
}
VALUE: dict[Table, str] = {"scores": "score", "probes": "score", "model_scores": "mean"}


@dataclass(frozen=True)
class Measured:
    """A run's scores and versions in the baseline's layout: what a baseline freezes and a check compares."""

    suite: str
    versions: dict[str, Any]
    libraries: dict[str, str]
    tables: dict[Table, pd.DataFrame]  # per table of TABLES, as the run wrote it (parameters as text)


def measured(res: Results) -> Measured:
    """The scores and versions of a run's results."""
    rec = res.record
    versions = {
        "suite": rec.suite.version,
        "metrics": {k: v.version for k, v in rec.metrics.items()},
        "models": {k: v.manifest_version for k, v in rec.models.items()},
        "datasets": {c.dataset.id: c.dataset.version for c in rec.conditions},
        "n_samples": {c.label: c.n_samples for c in rec.conditions},
    }
    scores = res.scores.assign(params=params_keys(res.scores.params))
    tables: dict[Table, pd.DataFrame] = {"scores": scores, "probes": res.probes, "model_scores": res.model_scores}
    return Measured(rec.suite_id, versions, rec.libraries, tables)


def write_baseline(run: Measured, path: Path, tolerance: dict[str, float] | None = None) -> dict[str, Any]:
    """Freeze a run's scores into `path`: one score per line, so a deliberate update diffs readably."""
    doc = {
        "format": FORMAT,
        "suite": run.suite,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "tolerance": tolerance or DEFAULT_TOLERANCE,
        "tolerances": DEFAULT_TABLE_TOLERANCES,
        "versions": run.versions,
        "libraries": run.libraries,
    }
    lines = ["{"] + [f"  {json.dumps(k)}: {json.dumps(v, sort_keys=True)}," for k, v in doc.items()]
    for n, table in enumerate(TABLES):
        rows = [f"    {json.dumps(r)}" for r in run.tables[table].to_dict("records")]
        end = "" if n == len(TABLES) - 1 else ","
        lines += (
            [f"  {json.dumps(table)}: [", ",\n".join(rows), f"  ]{end}"]
            if rows
            else [f"  {json.dumps(table)}: []{end}"]
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n}\n", encoding="utf-8")
    return doc


Name = Annotated[str, Field(strict=True, min_length=1, max_length=1000)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Tolerance(_Strict):
    atol: Finite = Field(ge=0)
    rtol: Finite = Field(ge=0)


class Versions(_Strict):
    suite: int = Field(strict=True)
    metrics: dict[Name, Annotated[int, Field(strict=True)]]
    models: dict[Name, Annotated[int, Field(strict=True)]]
    datasets: dict[Name, Annotated[int, Field(strict=True)]]
    n_samples: dict[Name, Annotated[int, Field(strict=True)]]


class ScoreRow(_Strict):
    condition: Name
    model_x: Name
    model_y: Name
    layer_x: Name
    layer_y: Name
    metric: Name
    params: Annotated[str, Field(strict=True)]
    score: Finite


class ProbeRow(_Strict):
    task: Name
    dataset: Name
    model: Name
    score: Finite


class ModelScoreRow(_Strict):
    condition: Name
    model: Name
    score: Name
    mean: Finite


class Baseline(_Strict):
    """The schema of a baseline file: every score finite, every tolerance finite and >= 0, no row twice."""

    format: Literal[1, 2]
    suite: Name
    created: str = ""
    tolerance: Tolerance
    tolerances: dict[Table, Tolerance] = {}
    versions: Versions
    libraries: dict[Name, Annotated[str, Field(strict=True)]] = {}
    scores: list[ScoreRow]
    probes: list[ProbeRow]
    model_scores: list[ModelScoreRow]

    @model_validator(mode="after")
    def _unique(self) -> Baseline:
        for table, keys in TABLES.items():
            seen: set[tuple[str, ...]] = set()
            for i, row in enumerate(getattr(self, table)):
                key = tuple(getattr(row, k) for k in keys)
                if key in seen:
                    raise ValueError(f"{table}.{i} repeats the row {dict(zip(keys, key, strict=True))}")
                seen.add(key)
        return self


def read_baseline(path: Path) -> Baseline:
    """A baseline file, checked against its schema (format 1 files have one tolerance for all tables)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInput(f"{path}: cannot read the baseline ({exc})") from None
    except RecursionError:
        raise BadInput(f"{path}: nested too deeply to be a baseline") from None
    if not isinstance(doc, dict):
        raise BadInput(f"{path}: not a prh-bench baseline (expected a JSON object, got {type(doc).__name__})")
    try:
        return Baseline.model_validate(doc)
    except ValidationError as exc:
        problems = [
            f"field '{'.'.join(map(str, e['loc'])) or '(top level)'}': {e['msg']}"
            + (f", got {e['input']!r}"[:200] if e["type"] != "missing" else "")
            for e in exc.errors()[:10]
        ]
        raise BadInput(f"{path}: not a valid prh-bench baseline:\n  " + "\n  ".join(problems)) from None


def tolerances(baseline: Baseline, atol: float | None = None, rtol: float | None = None) -> dict[str, dict[str, float]]:
    """Per table, the tolerance the check uses: the baseline's (its per-table entries over its default), with
    --atol / --rtol overriding every table."""
    out: dict[str, dict[str, float]] = {}
    for table in TABLES:
        tol = (baseline.tolerances.get(table) or baseline.tolerance).model_dump()
        tol["atol"] = tol["atol"] if atol is None else atol
        tol["rtol"] = tol["rtol"] if rtol is None else rtol
        out[table] = tol
    return out


@dataclass
class CheckResult:
    moved: list[dict[str, Any]] = field(default_factory=list)  # per model pair (or probe / model score)
    missing: list[dict[str, Any]] = field(default_factory=list)  # in the baseline, not in the run
    unexpected: list[dict[str, Any]] = field(default_factory=list)  # in the run, not in the baseline
    versions: list[str] = field(default_factory=list)
    libraries: list[str] = field(default_factory=list)  # shown only
    compared: int = 0

    @property
    def ok(self) -> bool:
        return not (self.moved or self.missing or self.unexpected or self.versions)


def _diff_versions(old: Any, new: Any, where: str, out: list[str]) -> None:
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new), key=str):
            _diff_versions(old.get(k), new.get(k), f"{where}.{k}", out)
    elif old != new:
        out.append(f"{where}: baseline {old!r}, run {new!r}")


def _frame(frame: pd.DataFrame, table: Table) -> pd.Series:
    """A table's values indexed by their key columns (as text)."""
    frame = frame.reindex(columns=TABLES[table] + [VALUE[table]])
    return frame.astype(dict.fromkeys(TABLES[table], str)).set_index(TABLES[table])[VALUE[table]].astype(float)


def compare(baseline: Baseline, run: Measured, tol: dict[str, dict[str, float]]) -> CheckResult:
    """The run against the baseline, each table within its tolerance (see `tolerances`)."""
    res = CheckResult()
    if baseline.suite != run.suite:
        res.versions.append(f"suite: baseline {baseline.suite!r}, run {run.suite!r}")
    _diff_versions(baseline.versions.model_dump(), run.versions, "versions", res.versions)
    _diff_versions(baseline.libraries, run.libraries, "libraries", res.libraries)
    for table, keys in TABLES.items():
        old = _frame(pd.DataFrame([r.model_dump() for r in getattr(baseline, table)]), table)
        new = _frame(run.tables[table], table)
        both = old.index.intersection(new.index)
        res.missing += [dict(zip(keys, k, strict=True)) | {"table": table} for k in old.index.difference(new.index)]
        res.unexpected += [dict(zip(keys, k, strict=True)) | {"table": table} for k in new.index.difference(old.index)]
        res.compared += len(both)
        a, b = old.loc[both], new.loc[both]
        atol, rtol = tol[table]["atol"], tol[table]["rtol"]
        bad = ~((a - b).abs() <= atol + rtol * a.abs())  # a NaN on either side is a move, never a pass
        if not bad.any():
            continue
        diffs = pd.DataFrame({"baseline": a[bad], "run": b[bad]}).reset_index()
        diffs["diff"] = diffs.run - diffs.baseline
        group = [c for c in keys if c not in ("layer_x", "layer_y")]
        for key, part in diffs.groupby(group, sort=False):
            worst = part.loc[part["diff"].abs().idxmax()]
            res.moved.append(
                dict(zip(group, key, strict=True))
                | {
                    "table": table,
                    "count": len(part),
                    "baseline": float(worst.baseline),
                    "run": float(worst.run),
                    "diff": float(worst["diff"]),
                }
                | ({"layers": f"{worst.layer_x} / {worst.layer_y}"} if table == "scores" else {})
            )
    return res


def describe(res: CheckResult, tol: dict[str, dict[str, float]]) -> str:
    """The check's report: what failed, then what is only shown."""

    def name(r: dict[str, Any]) -> str:
        if r["table"] == "scores":
            return f"[{r['condition']}] {r['metric']} {r['model_x']} x {r['model_y']}"
        if r["table"] == "probes":
            return f"probe {r['task']} on {r['dataset']}: {r['model']}"
        return f"[{r['condition']}] {r['model']} {r['score']}"

    out = []
    if res.moved:
        out.append(
            f"moved beyond tolerance ({len(res.moved)}; "
            + ", ".join(f"{t}: atol={v['atol']:g} rtol={v['rtol']:g}" for t, v in tol.items())
            + "):"
        )
        out += [
            f"  {name(r)}: {r['baseline']:.6f} -> {r['run']:.6f} ({r['diff']:+.2e})"
            + (f" at {r['layers']}, {r['count']} layer pair(s) moved" if "layers" in r else "")
            for r in res.moved
        ]
    for what, rows in (("missing from the run", res.missing), ("not in the baseline", res.unexpected)):
        if rows:
            pairs = list(dict.fromkeys(name(r) for r in rows))
            out.append(f"{what} ({len(rows)} scores of {len(pairs)}):")
            out += [f"  {p}" for p in pairs]
    if res.versions:
        out.append(f"version mismatches ({len(res.versions)}):")
        out += [f"  {v}" for v in res.versions]
    if res.libraries:
        out.append("library versions differ (not checked; the tolerance absorbs their noise):")
        out += [f"  {v}" for v in res.libraries]
    verdict = "ok" if res.ok else "FAILED"
    out.append(f"{verdict}: {res.compared} scores compared")
    return "\n".join(out)
