"""Leaderboards from stored results only (never re-extracting): models ranked by alignment to a reference,
with mean alignment to all others, best layer pair and downstream scores, and how alignment correlates with
each downstream score (Pearson and Spearman, bootstrap 95% intervals, permutation p-values)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import __version__
from ..errors import BadInput
from ..manifest import SuiteManifest
from ..registry import Registry
from .report import alignment_matrix, best_pairs, best_partner, chance_level
from .run_folder import read_run_record, read_run_table

RESAMPLES = 2000


@dataclass
class Leaderboard:
    suite: SuiteManifest
    metric: str
    reference: str | None
    condition: str
    table: pd.DataFrame  # one row per model, ranked
    matrix: pd.DataFrame  # model x model best scores
    correlations: pd.DataFrame  # one row per (alignment measure, downstream score, statistic)
    binned: pd.DataFrame  # models binned by tasks solved (with probes), mean alignment and standard error
    meta: dict[str, Any]


def correlate(x: np.ndarray, y: np.ndarray, seed: int = 0) -> list[dict[str, Any]]:
    """Pearson and Spearman r of paired samples with percentile-bootstrap 95% intervals (models resampled with
    replacement; resamples where either side is constant have no r and are skipped, their count reported) and
    two-sided permutation p-values (scipy: exact when all pairings can be enumerated)."""
    from scipy import stats

    out = []
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(x), size=(RESAMPLES, len(x)))
    usable = [i for i in draws if np.ptp(x[i]) > 0 and np.ptp(y[i]) > 0]
    for name, fn in (("pearson", lambda a, b: stats.pearsonr(a, b).statistic),
                     ("spearman", lambda a, b: stats.spearmanr(a, b).statistic)):
        boot = np.array([fn(x[i], y[i]) for i in usable])
        perm = stats.permutation_test((x, y), fn, permutation_type="pairings", n_resamples=RESAMPLES,
                                      random_state=np.random.default_rng(seed + 1))
        low, high = np.percentile(boot, [2.5, 97.5]) if len(boot) else (math.nan, math.nan)
        out.append({"statistic": name, "r": float(fn(x, y)), "ci_low": float(low), "ci_high": float(high),
                    "p_value": float(perm.pvalue), "n": len(x), "bootstrap_resamples": len(boot)})
    return out


def build(registry: Registry, suite_id: str, run_dir: Path, reference: str | None = None,
          metric: str | None = None) -> Leaderboard:
    suite = registry.get(suite_id, SuiteManifest)
    side = read_run_record(run_dir)
    scores = read_run_table(run_dir, "scores", side, registry.plugins.metrics)
    if scores is None:
        raise BadInput(f"{run_dir}: no scores table; give a folder written by `prh-bench run`")
    if (got := side.suite_id) != suite_id:
        raise BadInput(f"{run_dir} is a run of suite '{got}', not '{suite_id}'; give a run of '{suite_id}'")
    metric = metric or suite.metrics[0].name
    if metric not in set(scores.metric):
        raise BadInput(f"{run_dir}: no '{metric}' scores; it has {sorted(set(scores.metric))}")
    condition = scores.condition.iloc[0]
    best = best_pairs(scores[(scores.metric == metric) & (scores.condition == condition)])
    models = list(side.models)
    done = [m for m in models if m in set(best.model_x) | set(best.model_y)]
    mat = alignment_matrix(best, metric, done)
    reference = reference or suite.reference
    if reference is not None and reference not in mat.index:
        raise BadInput(f"reference '{reference}' has no results in {run_dir}; models with results: {', '.join(done)}")
    downstream = downstream_scores(registry, suite, run_dir, condition)
    nulls = calibration_of(run_dir, metric, condition)
    n = side.n_samples(condition)
    params = json.loads(best.params.iloc[0]) if not best.empty else {}
    chance, chance_source = chance_level(metric, params, n, nulls)
    rows = []
    for mid in models:
        entry = side.models[mid]
        status = [r.status for r in entry.runs]
        row: dict[str, Any] = {"model": mid, "weights": entry.weights,
                               "params": getattr(registry.entries.get(entry.manifest_id or mid), "params", None)}
        if mid in mat.index:
            row["alignment_to_reference"] = mat.loc[mid, reference] if reference and mid != reference else math.nan
            if reference and not nulls.empty:
                null = null_of(nulls, mid, reference)
                row |= {"p_value": null.get("p_value", math.nan), "calibrated": null.get("calibrated", math.nan)}
            if (partner := best_partner(mat, best, mid)) is not None:
                row |= {"mean_alignment": partner.mean_alignment, "best_partner": partner.model,
                        "best_layer_pair": partner.layer_pair}
        else:
            row["status"] = "failed"
        for name, values in downstream.items():
            row[name] = values.get(mid, math.nan)
        row.setdefault("status", "failed" if "failed" in status else "ok")
        rows.append(row)
    key = "alignment_to_reference" if reference else "mean_alignment"
    table = pd.DataFrame(rows)
    is_ref = table.model == reference
    table = pd.concat([table[is_ref], table[~is_ref].sort_values(key, ascending=False, na_position="last", kind="stable")])
    table.insert(0, "rank", ["reference"] * int(is_ref.sum()) + [str(i) for i in range(1, int((~is_ref).sum()) + 1)])
    corr = []
    for name in downstream:
        for measure in ("alignment_to_reference", "mean_alignment"):
            if measure not in table:
                continue
            ok = table[[measure, name]].dropna()
            if len(ok) >= 3 and ok[name].nunique() > 1 and ok[measure].nunique() > 1:
                direction = "higher is better" if score_higher_is_better(registry, name) else "lower is better"
                corr += [{"alignment": measure, "score": name, "score_direction": direction, **c}
                         for c in correlate(ok[measure].to_numpy(), ok[name].to_numpy())]
    binned = binned_view(table, key) if "tasks_solved" in table else pd.DataFrame()
    meta = {"harness": __version__, "suite": suite.id, "suite_version": suite.version, "metric": metric,
            "metric_params": params, "reference": reference, "n_samples": n,
            "chance_level": chance, "chance_source": chance_source,
            "calibration": ({"permutations": int(nulls.permutations.iloc[0]), "alpha": float(nulls.alpha.iloc[0])}
                            if not nulls.empty else None),
            "condition": condition, "run": str(run_dir), "run_created": side.created,
            "manifest_versions": {m: side.models[m].manifest_version for m in models},
            "dataset": side.conditions[0].dataset, "libraries": side.libraries,
            "scores_sources": {n: getattr(registry.score_table(n), "source", "computed by this harness from the run")
                               for n in downstream},
            "solved_rule": f"a model solves a probe task at >= {SOLVED_FRACTION:.0%} of the best score among the suite's models"}
    return Leaderboard(suite, metric, reference, condition, table.reset_index(drop=True), mat, pd.DataFrame(corr),
                       binned, meta)


def score_higher_is_better(registry: Registry, name: str) -> bool:
    """A downstream score's direction: bits per byte (computed by the run) is lower-is-better; a score table says
    its own, a probe ('TASK:DATASET') its task's; tasks solved is higher-is-better."""
    if name == "bits_per_byte":
        return False
    task = registry.plugins.tasks.get(name.split(":", 1)[0]) if ":" in name else None
    if task is not None:
        return task.higher_is_better
    table = registry.score_table(name)
    return table.higher_is_better if table is not None else True


def calibration_of(run_dir: Path, metric: str, condition: str) -> pd.DataFrame:
    """The run's permutation nulls of one metric under one condition (empty when the suite asked for none)."""
    path = run_dir / "calibration.csv"
    if not path.exists():
        return pd.DataFrame()
    cal = pd.read_csv(path)
    if "alpha" not in cal:  # written before the calibrated score followed calibrated-similarity: not comparable
        raise BadInput(f"{path}: permutation nulls without the calibrated-similarity score (an older run); "
                       "run the suite again")
    return cal[(cal.metric == metric) & (cal.condition == condition)]


def null_of(nulls: pd.DataFrame, model: str, reference: str) -> dict[str, Any]:
    """The null of the leaderboard entry [model, reference], i.e. metric(reference, model) in the PRH
    orientation; a symmetric metric stores one row per pair, in either order."""
    for x, y in ((reference, model), (model, reference)):
        hit = nulls[(nulls.model_x == x) & (nulls.model_y == y)]
        if len(hit):
            return hit.iloc[0].to_dict()
    return {}


def binned_view(table: pd.DataFrame, measure: str) -> pd.DataFrame:
    """The paper's binned view: models grouped by the number of tasks they solve, mean alignment per bin
    with its standard error."""
    rows = []
    for solved, part in table.dropna(subset=[measure, "tasks_solved"]).groupby("tasks_solved"):
        vals = part[measure]
        rows.append({"tasks_solved": int(solved), "models": len(vals), f"mean_{measure}": vals.mean(),
                     "standard_error": vals.std(ddof=1) / math.sqrt(len(vals)) if len(vals) > 1 else math.nan})
    return pd.DataFrame(rows)


#: the PRH paper's rule: a model solves a task when it reaches 80% of the best score among the suite's models
SOLVED_FRACTION = 0.8


def downstream_scores(registry: Registry, suite: SuiteManifest, run_dir: Path, condition: str) -> dict[str, dict[str, float]]:
    """Per score name, model -> value: from score tables, bits per byte and probe tasks from the run itself,
    and, with probes, the number of tasks each model solves."""
    out: dict[str, dict[str, float]] = {}
    path = run_dir / "probes.csv"
    probes = pd.read_csv(path) if path.exists() else pd.DataFrame(columns=["task", "dataset", "model", "score"])
    solved: dict[str, float] = {}
    for (task, dataset), part in probes.groupby(["task", "dataset"], sort=False):
        out[f"{task}:{dataset}"] = dict(zip(part.model, part.score))
        if not score_higher_is_better(registry, f"{task}:{dataset}"):
            continue  # "solved at 80% of the best" is the paper's rule for accuracies, not for bits per byte
        best = part.score.max()
        for model, score in zip(part.model, part.score):
            solved[model] = solved.get(model, 0) + float(score >= SOLVED_FRACTION * best)
    if solved:
        out["tasks_solved"] = solved
    for name in suite.scores:
        if name == "bits_per_byte":
            path = run_dir / "model_scores.csv"
            ms = pd.read_csv(path) if path.exists() else pd.DataFrame(columns=["condition", "model", "score", "mean"])
            sub = ms[(ms.score == name) & (ms.condition == condition)]
            out[name] = dict(zip(sub.model, sub["mean"]))
        else:
            table = registry.score_table(name)
            assert table is not None
            out[name] = {m: v for m, v in table.values.items()}
    return out
