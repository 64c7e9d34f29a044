"""Leaderboards from stored results only (never re-extracting): models ranked by alignment to a reference,
with mean alignment to all others, best layer pair and downstream scores, and how alignment correlates with
each downstream score (Pearson and Spearman, bootstrap 95% intervals, permutation p-values)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel

from .. import __version__
from ..errors import BadInput
from ..manifest import NO_WEIGHTS_LABEL, DatasetManifest, SuiteManifest
from ..registry import Registry
from ..samples import group_codes
from .matrices import alignment_matrix, best_partner, chance_level
from .results import Results
from .run_record import ModelEntry, RunRecord
from .uncertainty import ALPHA, adjacent_tests, rank_intervals
from .uncertainty import RESAMPLES as UNCERTAINTY_RESAMPLES

RESAMPLES = 2000


class NullSettings(BaseModel):
    """The permutation nulls behind the p-values and calibrated scores."""

    permutations: int
    alpha: float
    exchange: str  # what the shuffles exchanged: free, or within_groups


class UncertaintySettings(BaseModel):
    """How the intervals and tiers were resampled (results/uncertainty.py)."""

    resamples: int
    samples: int
    groups: int
    alpha: float
    test_floor: float  # the smallest p a test of this many resamples can give
    tiers: int
    grouped_by: str


class LeaderboardMeta(BaseModel):
    """What a leaderboard was built from and how: written into leaderboard.json, read by its page."""

    harness: str  # prh-bench's version
    suite: str
    suite_version: int
    metric: str
    metric_params: dict[str, Any]
    reference: str | None
    n_samples: int
    chance_level: float
    chance_source: str
    calibration: NullSettings | None
    condition: str
    source: str  # the run folder, or the results store
    created: str | None  # when the run (or the load of the store) happened
    manifest_versions: dict[str, int]
    dataset: DatasetManifest
    libraries: dict[str, str]
    scores_sources: dict[str, str]  # per downstream score, where its numbers come from
    solved_rule: str
    uncertainty: UncertaintySettings | None


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
    meta: LeaderboardMeta
    consistency: pd.DataFrame  # with several conditions: how alike their matrices and rankings are


#: fewest models for a bootstrap interval of r: resamples of 3 or 4 models repeat a few configurations, and
#: their percentiles look precise (0.99-1.00 for three points) where nothing is known
MIN_BOOTSTRAP = 5
#: residual degrees of freedom a partial correlation keeps (n - 2 - controls): fewer covariates than that allows
MIN_PARTIAL_DF = 4


def correlate(x: np.ndarray, y: np.ndarray, seed: int = 0) -> list[dict[str, Any]]:
    """Pearson and Spearman r of paired samples with percentile-bootstrap 95% intervals (models resampled with
    replacement; resamples where either side is constant have no r and are skipped, their count reported; none
    below MIN_BOOTSTRAP models) and two-sided permutation p-values (scipy: exact when all pairings can be
    enumerated)."""
    from scipy import stats

    out = []
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(x), size=(RESAMPLES, len(x)))
    usable = [i for i in draws if np.ptp(x[i]) > 0 and np.ptp(y[i]) > 0]
    for name, fn in (
        ("pearson", lambda a, b: stats.pearsonr(a, b).statistic),
        ("spearman", lambda a, b: stats.spearmanr(a, b).statistic),
    ):
        boot = np.array([fn(x[i], y[i]) for i in usable])
        perm = stats.permutation_test(
            (x, y), fn, permutation_type="pairings", n_resamples=RESAMPLES, random_state=np.random.default_rng(seed + 1)
        )
        low, high = np.percentile(boot, [2.5, 97.5]) if len(boot) and len(x) >= MIN_BOOTSTRAP else (math.nan, math.nan)
        out.append(
            {
                "statistic": name,
                "r": float(fn(x, y)),
                "ci_low": float(low),
                "ci_high": float(high),
                "p_value": float(perm.pvalue),
                "n": len(x),
                "bootstrap_resamples": len(boot),
            }
        )
    return out


#: covariates of the partial correlations, as columns of the table (model_size)
SIZE_COLUMNS = ("log10_params", "depth", "log2_width")


def model_kind(weights: object) -> str:
    """From a weights label: 'random' for a random-initialised control, 'parameter-free' for a model without
    weights (a fixed colour space), 'trained' otherwise."""
    if str(weights).startswith("random"):
        return "random"
    return "parameter-free" if weights == NO_WEIGHTS_LABEL else "trained"


def model_size(record: RunRecord, condition: str, table: pd.DataFrame) -> dict[str, list[float]]:
    """Per model of the table: log10 of its parameter count (manifest), its depth (layers extracted) and log2 of
    its widest layer (features), from the run record under `condition`; NaN where unknown."""
    out: dict[str, list[float]] = {c: [] for c in SIZE_COLUMNS}
    for mid, params in zip(table.model, table.params, strict=True):
        entry = record.models.get(mid)
        run = entry.run_under(condition) if entry else None
        out["log10_params"].append(math.log10(params) if pd.notna(params) and params > 0 else math.nan)
        out["depth"].append(float(run.layers) if run and run.layers else math.nan)
        out["log2_width"].append(math.log2(max(run.widths)) if run and run.widths else math.nan)
    return out


def partial_r(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> float:
    """Pearson r of x and y after each is regressed on the columns of z (with an intercept) by least squares."""
    design = np.column_stack([np.ones(len(x)), z])
    rx = x - design @ np.linalg.lstsq(design, x, rcond=None)[0]
    ry = y - design @ np.linalg.lstsq(design, y, rcond=None)[0]
    if np.ptp(rx) < 1e-12 * max(1.0, np.abs(x).max()) or np.ptp(ry) < 1e-12 * max(1.0, np.abs(y).max()):
        return math.nan  # a covariate explains one side entirely
    return float(np.corrcoef(rx, ry)[0, 1])


def correlate_partial(x: np.ndarray, y: np.ndarray, z: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """Partial Pearson r of x and y controlling for z, a percentile-bootstrap 95% interval (models resampled;
    resamples where it is undefined are skipped and counted) and a two-sided Freedman-Lane permutation p-value
    (y's residuals on z permuted and added back to its fit, add-one)."""
    rng = np.random.default_rng(seed)
    r = partial_r(x, y, z)
    boot = [
        b
        for i in rng.integers(0, len(x), size=(RESAMPLES, len(x)))
        if np.linalg.matrix_rank(np.column_stack([np.ones(len(x)), z[i]])) == z.shape[1] + 1
        and not math.isnan(b := partial_r(x[i], y[i], z[i]))
    ]
    design = np.column_stack([np.ones(len(x)), z])
    fit = design @ np.linalg.lstsq(design, y, rcond=None)[0]
    res = y - fit
    perm = [partial_r(x, fit + res[rng.permutation(len(y))], z) for _ in range(RESAMPLES)]
    hits = sum(1 for v in perm if not math.isnan(v) and abs(v) >= abs(r) * (1 - 1e-12))
    low, high = np.percentile(boot, [2.5, 97.5]) if boot and len(x) >= MIN_BOOTSTRAP else (math.nan, math.nan)
    return {
        "statistic": "partial pearson",
        "r": r,
        "ci_low": float(low),
        "ci_high": float(high),
        "p_value": (1 + hits) / (RESAMPLES + 1),
        "n": len(x),
        "bootstrap_resamples": len(boot),
    }


def grouped_correlations(table: pd.DataFrame, measure: str, score: str) -> list[dict[str, Any]]:
    """Correlations of an alignment measure with a score over all models, within the trained models alone
    (random controls sit at chance on every score: across both kinds, r mostly measures the gap between two
    clusters) and within each family of trained models (`ModelManifest.family`); then, for each, the partial
    correlation controlling for the size covariates that are known for every model and vary, as many as leave
    MIN_PARTIAL_DF residual degrees of freedom."""
    trained = table[table.kind == "trained"]
    families = [(f"family {f}", part) for f, part in trained.groupby("family")] if "family" in table else []
    out = []
    for models, part in [("all", table), ("trained", trained), *families]:
        ok = part[[measure, score, *SIZE_COLUMNS]].dropna(subset=[measure, score])
        if len(ok) < 3 or ok[score].nunique() < 2 or ok[measure].nunique() < 2:
            continue
        x, y = ok[measure].to_numpy(float), ok[score].to_numpy(float)
        out += [{"models": models, "controls": "", **c} for c in correlate(x, y)]
        controls = [c for c in SIZE_COLUMNS if ok[c].notna().all() and ok[c].nunique() > 1][
            : max(0, len(ok) - 2 - MIN_PARTIAL_DF)
        ]
        if controls:
            out.append(
                {
                    "models": models,
                    "controls": ", ".join(controls),
                    **correlate_partial(x, y, ok[controls].to_numpy(float)),
                }
            )
    return out


def build(
    registry: Registry,
    suite_id: str,
    res: Results,
    reference: str | None = None,
    metric: str | None = None,
    verification: dict[str, str] | None = None,
) -> Leaderboard:
    """The leaderboard of a run's (or a store's) first condition; `verification`: per model, how its results
    were checked (a results store's ledger, verify.verification_labels), shown as a column."""
    suite = registry.get(suite_id, SuiteManifest)
    if (got := res.suite) != suite_id:
        raise BadInput(f"{res.source} is a run of suite '{got}', not '{suite_id}'; give a run of '{suite_id}'")
    metric = metric or suite.metrics[0].name
    if metric not in res.metrics:
        raise BadInput(f"{res.source}: no '{metric}' scores; it has {sorted(res.metrics)}")
    condition = res.scores.condition.iloc[0]
    best = res.best(metric, condition)
    models = list(res.record.models)
    done = [m for m in models if m in set(best.model_x) | set(best.model_y)]
    mat = alignment_matrix(best, metric, done)
    reference = reference or suite.reference
    if reference is not None and reference not in mat.index:
        raise BadInput(
            f"reference '{reference}' has no results in {res.source}; models with results: {', '.join(done)}"
        )
    downstream = downstream_scores(registry, suite, res, condition)
    cal = res.calibration
    nulls = cal[(cal.metric == metric) & (cal.condition == condition)] if not cal.empty else cal
    n = res.n_samples(condition)
    params = res.params(metric)
    chance, chance_source = chance_level(registry.plugins.metrics.get(metric), metric, params, n, nulls)
    rows = []
    for mid in models:
        entry = res.record.models[mid]
        manifest = registry.entries.get(entry.manifest_id or mid)
        row: dict[str, Any] = {
            "model": mid,
            "weights": entry.weights,
            "params": getattr(manifest, "params", None),
            "family": getattr(manifest, "family", None),
        }
        if verification is not None:
            row["verification"] = verification.get(mid, "unverified")
        if mid in mat.index:
            row["alignment_to_reference"] = mat.loc[mid, reference] if reference and mid != reference else math.nan
            if reference and not nulls.empty:
                null = null_of(nulls, mid, reference)
                row |= {"p_value": null.get("p_value", math.nan), "calibrated": null.get("calibrated", math.nan)}
            if (partner := best_partner(mat, best, mid)) is not None:
                row |= {
                    "mean_alignment": partner.mean_alignment,
                    "best_partner": partner.model,
                    "best_layer_pair": partner.layer_pair,
                }
        for name, values in downstream.items():
            row[name] = values.get(mid, math.nan)
        row["status"] = model_status(entry, mid in mat.index)
        rows.append(row)
    key = "alignment_to_reference" if reference else "mean_alignment"
    table = pd.DataFrame(rows)
    is_ref = table.model == reference
    table = pd.concat(
        [table[is_ref], table[~is_ref].sort_values(key, ascending=False, na_position="last", kind="stable")]
    )
    table.insert(0, "rank", ["reference"] * int(is_ref.sum()) + [str(i) for i in range(1, int((~is_ref).sum()) + 1)])
    table, uncertainty = with_uncertainty(table, res, metric, condition, reference)
    table = table.assign(kind=table.weights.map(model_kind), **model_size(res.record, condition, table))
    corr = []
    for name in downstream:
        direction = "higher is better" if score_higher_is_better(registry, name) else "lower is better"
        for measure in ("alignment_to_reference", "mean_alignment"):
            if measure in table:
                corr += [
                    {"alignment": measure, "score": name, "score_direction": direction, **c}
                    for c in grouped_correlations(table, measure, name)
                ]
    binned = binned_view(table, key) if "tasks_solved" in table else pd.DataFrame()
    meta = LeaderboardMeta(
        harness=__version__,
        suite=suite.id,
        suite_version=suite.version,
        metric=metric,
        metric_params=params,
        reference=reference,
        n_samples=n,
        chance_level=chance,
        chance_source=chance_source,
        calibration=NullSettings(
            permutations=int(nulls.permutations.iloc[0]),
            alpha=float(nulls.alpha.iloc[0]),
            exchange=str(nulls.exchange.iloc[0]) if "exchange" in nulls else "free",
        )
        if not nulls.empty
        else None,
        condition=condition,
        source=str(res.source),
        created=res.record.created,
        manifest_versions={m: res.record.models[m].manifest_version for m in models},
        dataset=res.record.conditions[0].dataset,
        libraries=res.record.libraries,
        scores_sources={
            n: getattr(registry.score_table(n), "source", "computed by this harness from the run") for n in downstream
        },
        solved_rule=f"a model solves a probe task at >= {SOLVED_FRACTION:.0%} of the best score among the suite's models",
        uncertainty=uncertainty,
    )
    return Leaderboard(
        suite,
        metric,
        reference,
        condition,
        table.reset_index(drop=True),
        mat,
        pd.DataFrame(corr),
        binned,
        meta,
        res.consistency(metric),
    )


def model_status(entry: ModelEntry, scored: bool) -> str:
    """'ok' for a model with scores, 'failed' when its run failed, 'no results' when nothing ran it (a store
    without its records)."""
    if scored and all(r.status != "failed" for r in entry.runs):
        return "ok"
    return "failed" if any(r.status == "failed" for r in entry.runs) else "no results"


def with_uncertainty(
    table: pd.DataFrame, res: Results, metric: str, condition: str, reference: str | None
) -> tuple[pd.DataFrame, UncertaintySettings | None]:
    """The ranked table with each model's interval of alignment to the reference and of rank, its tier (adjacent
    ranks the paired tests cannot separate share one) and the Holm-adjusted p of the test against the next rank
    (results/uncertainty.py), from the run's per-sample terms; and what was done, for the page. Unchanged, with
    None, where the run has no terms (no reference, or a metric that is not a mean over samples)."""
    terms = res.sample_terms
    if terms.empty or reference is None:
        return table, None
    part = terms[(terms.metric == metric) & (terms.condition.astype(str) == condition)]
    aligned = table.set_index("model").alignment_to_reference
    ranked = [m for m in table.model[table["rank"] != "reference"] if m in part and pd.notna(aligned.get(m))]
    if part.empty or len(ranked) < 2:
        return table, None
    values = part[ranked].to_numpy(dtype=float)
    score = aligned.reindex(ranked).to_numpy(dtype=float)
    if not np.allclose(values.mean(axis=0), score, rtol=0, atol=1e-9):
        raise BadInput(
            f"{res.source}: sample_terms table: the mean terms of {metric} under {condition!r} are not the "
            "scores of the scores table; the run folder is mixed or edited: run the suite again"
        )
    codes = group_codes(part["group"].tolist())
    intervals = rank_intervals(values, codes)
    tests = adjacent_tests(values, codes)
    extra = pd.concat([intervals, tests[["tier", "p_next_holm"]]], axis=1).assign(model=ranked)
    extra = extra.rename(columns={"score_low": "ci_low", "score_high": "ci_high", "p_next_holm": "p_vs_next"})
    table = table.merge(extra, on="model", how="left").astype(
        {"rank_low": "Int64", "rank_high": "Int64", "tier": "Int64"}
    )
    groups = int(codes.max()) + 1
    return table, UncertaintySettings(
        resamples=UNCERTAINTY_RESAMPLES,
        samples=len(part),
        groups=groups,
        alpha=ALPHA,
        test_floor=1 / (UNCERTAINTY_RESAMPLES + 1),
        tiers=int(tests.tier.max()),
        grouped_by="the samples' groups (Sample.group)" if groups < len(part) else "none: each sample alone",
    )


def score_higher_is_better(registry: Registry, name: str) -> bool:
    """A downstream score's direction: a per-sample score computed by the run (bits per byte) its backend's; a
    score table says its own, a probe ('TASK:DATASET') its task's; tasks solved is higher-is-better."""
    if (higher := registry.plugins.sample_scores().get(name)) is not None:
        return higher
    task = registry.plugins.tasks.get(name.split(":", 1)[0]) if ":" in name else None
    if task is not None:
        return task.higher_is_better
    table = registry.score_table(name)
    return table.higher_is_better if table is not None else True


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
        rows.append(
            {
                "tasks_solved": int(solved),
                "models": len(vals),
                f"mean_{measure}": vals.mean(),
                "standard_error": vals.std(ddof=1) / math.sqrt(len(vals)) if len(vals) > 1 else math.nan,
            }
        )
    return pd.DataFrame(rows)


#: the PRH paper's rule: a model solves a task when it reaches 80% of the best score among the suite's models
SOLVED_FRACTION = 0.8


def downstream_scores(
    registry: Registry, suite: SuiteManifest, res: Results, condition: str
) -> dict[str, dict[str, float]]:
    """Per score name, model -> value: from score tables, per-sample scores (bits per byte) and probe tasks from
    the run itself, and, with probes, the number of tasks each model solves."""
    out: dict[str, dict[str, float]] = {}
    probes = res.probes if not res.probes.empty else pd.DataFrame(columns=["task", "dataset", "model", "score"])
    solved: dict[str, float] = {}
    for (task, dataset), part in probes.groupby(["task", "dataset"], sort=False):
        out[f"{task}:{dataset}"] = dict(zip(part.model, part.score, strict=True))
        if not score_higher_is_better(registry, f"{task}:{dataset}"):
            continue  # "solved at 80% of the best" is the paper's rule for accuracies, not for bits per byte
        best = part.score.max()
        for model, score in zip(part.model, part.score, strict=True):
            solved[model] = solved.get(model, 0) + float(score >= SOLVED_FRACTION * best)
    if solved:
        out["tasks_solved"] = solved
    for name in suite.scores:
        if name in registry.plugins.sample_scores():
            ms = (
                res.model_scores
                if not res.model_scores.empty
                else pd.DataFrame(columns=["condition", "model", "score", "mean"])
            )
            sub = ms[(ms.score == name) & (ms.condition == condition)]
            out[name] = dict(zip(sub.model, sub["mean"], strict=True))
        else:
            table = registry.score_table(name)
            assert table is not None
            out[name] = dict(table.values.items())
    return out
