"""What a suite would do, without running it: per model and condition, cached or to extract, whether its
weights can be had here, and how much feature storage it needs; per condition and metric, how many model
pairs (and permutation nulls) the pair cache already holds, how many are left to compute, and an estimate of
their time and memory."""

from __future__ import annotations

import functools
import json
import math
import time
from dataclasses import dataclass
from typing import Any

import pandas as pd

from .align import Metric, prepare, summarize_layers
from .backend import resolve_dtype
from .context import Condition, condition_samples, enclosing, load_samples, resolve_device, suite_conditions
from .errors import BadInput, PrhBenchError
from .features import EntryInfo, FeatureCache, model_feature_key
from .lazy import torch
from .manifest import ModelManifest, SuiteManifest
from .pair_cache import PairCache
from .registry import Registry
from .score_job import DEFAULT_BUDGET_GIB, Member, ScoreJob


def weights_status(registry: Registry, m: ModelManifest) -> str:
    """'local', 'download' (hub or URL, not cached yet), or 'unavailable: why', from the backend when it can
    tell ('unknown' otherwise)."""
    return registry.plugins.backends[m.backend].weights_status(m)


def feature_widths(registry: Registry, m: ModelManifest) -> list[int] | None:
    try:
        return registry.plugins.backends[m.backend].feature_widths(m)
    except Exception:  # noqa: BLE001 (a width estimate must never break a plan)
        return None


@dataclass(frozen=True)
class Rates:
    """Seconds per layer of preparation and summary, per model pair of the pair stage, and per model pair and
    permutation of a null, measured here on models of a typical size."""

    summary: float
    pair: float
    null: float


#: the largest N that `measured_rates` times directly; beyond it, times at N/2 and N extrapolate
MEASURED_MAX_N = 2048


def _timed_rates(metric: Metric, params: dict[str, Any], n: int, width: int, layers: int) -> Rates:
    from .align.calibrate import calibrate_summaries

    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(n, width, generator=g) for _ in range(4 * layers)]
    t0 = time.perf_counter()
    sx = summarize_layers(metric, prepare(feats[:layers]), **params)
    sy = summarize_layers(metric, prepare(feats[layers:]), **params)
    t1 = time.perf_counter()
    metric.cross_scores(sx, sy, **params)
    t2 = time.perf_counter()
    calibrate_summaries(metric, sx, sy[:layers], 0.0, params, n, 4)
    t3 = time.perf_counter()
    return Rates((t1 - t0) / (4 * layers), (t2 - t1) / 3, (t3 - t2) / 4)


@functools.cache
def measured_rates(metric: Metric, params_json: str, n: int, width: int, layers: int) -> Rates:
    """Time the metric on random features of N = n samples, models of `layers` layers of the given width: four
    models summarised, one scored against three in one call, 4 permutations of one pair's null. An estimate
    for this machine, not a promise (the timing is as noisy as the machine). Past MEASURED_MAX_N samples,
    models of at most 4 layers are timed at MEASURED_MAX_N / 2 and MEASURED_MAX_N samples and each stage is
    extrapolated along the power of N it showed (clamped to [1, 2]: linear to quadratic), pairs and nulls
    scaled by the layer pairs."""
    params = json.loads(params_json)
    if n <= MEASURED_MAX_N:
        return _timed_rates(metric, params, n, width, layers)
    few = min(layers, 4)
    small = _timed_rates(metric, params, MEASURED_MAX_N // 2, width, few)
    large = _timed_rates(metric, params, MEASURED_MAX_N, width, few)

    def grown(t1: float, t2: float) -> float:
        power = min(2.0, max(1.0, math.log(max(t2, 1e-9) / max(t1, 1e-9), 2)))
        return t2 * (n / MEASURED_MAX_N) ** power

    pairs = (layers / few) ** 2
    return Rates(
        grown(small.summary, large.summary),
        grown(small.pair, large.pair) * pairs,
        grown(small.null, large.null) * pairs,
    )


def scoring_work(
    registry: Registry,
    suite: SuiteManifest,
    cache: PairCache,
    cond: Condition,
    n: int,
    members: list[Member],
    pending: dict[str, list[int] | None],
    budget: int,
    groups: tuple[int, ...] | None = None,
) -> list[dict[str, Any]]:
    """Per metric: the pairs (and nulls) stored and to compute among `members` (models with cached features)
    and `pending` (models still to extract, with their estimated widths), and an estimate of the work."""
    rows = []
    unknown = [mid for mid, w in pending.items() if w is None]
    stand_ins = [Member(mid, "", EntryInfo(n, [], w or [], f"pending:{mid}")) for mid, w in pending.items()]
    for use in suite.metrics:
        metric, params = registry.metric(use.name, cond.metric_params(use.params))
        job = ScoreJob(
            metric,
            params,
            registry.get(use.name).version,
            suite.prepare,
            suite.calibrate,
            tuple(members) + tuple(stand_ins),
            budget,
            suite.reference,
            groups,
        )
        cached = {m.id for m in members}
        pairs = job.unordered_pairs()
        todo = [(a, b) for a, b in pairs if not ({a.id, b.id} <= cached and cache.scores_path(job, a, b).exists())]
        nulls = job.null_pairs(pairs)
        nulls_todo = [(a, b) for a, b in nulls if not ({a.id, b.id} <= cached and cache.null_path(job, a, b).exists())]
        involved = {m.id: m for p in todo + nulls_todo for m in p}
        row = {
            "condition": cond.label,
            "metric": use.name,
            "pairs": len(pairs),
            "pairs_cached": len(pairs) - len(todo),
            "pairs_to_compute": len(todo),
            "nulls": len(nulls),
            "nulls_to_compute": len(nulls_todo),
            "est_seconds": None,
            "est_memory_MiB": None,
            "note": "",
        }
        if involved and not (unknown and set(unknown) & set(involved)):
            held = sorted((sum(job.summary_nbytes(m) for m in g if m.id in involved) for g in job.groups), reverse=True)
            row["est_memory_MiB"] = max(min(sum(held[:2]), budget), job.least_nbytes()) / 2**20
            try:
                job.check_fits()
            except BadInput as e:  # no rate measured either: it would build the N x N summaries it warns of
                row["note"] = str(e)
                rows.append(row)
                continue
            widths = sorted(d for m in involved.values() for d in m.info.widths)
            depth = sorted(job.layers(m) for m in involved.values())[len(involved) // 2]
            rates = measured_rates(
                metric, json.dumps(params, sort_keys=True), n, int(widths[len(widths) // 2]), max(1, min(depth, 24))
            )
            perms = suite.calibrate.permutations if suite.calibrate else 0
            row["est_seconds"] = (
                rates.summary * sum(job.layers(m) for m in involved.values())
                + rates.pair * len(todo) * (2 - metric.symmetric)
                + rates.null * perms * len(nulls_todo)
            )
        elif involved:
            row["note"] = f"layer widths unknown for {', '.join(sorted(set(unknown) & set(involved)))}"
        rows.append(row)
    return rows


def plan_suite(
    registry: Registry,
    suite_id: str,
    cache: FeatureCache,
    max_samples: int | None = None,
    budget_gib: float = DEFAULT_BUDGET_GIB,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per condition and model: its extraction; one row per condition and metric: its pair work)."""
    suite = registry.get(suite_id, SuiteManifest)
    device = resolve_device("auto")  # the keys of a run with the default device (`dtype: auto` depends on it)
    models = [resolve_dtype(m, device) for m in registry.suite_models(suite)]
    weights = {m.id: weights_status(registry, m) for m in models}
    widths = {m.id: feature_widths(registry, m) for m in models}
    pair_cache = PairCache(cache.root)
    rows, work = [], []
    conditions = suite_conditions(registry, suite)
    for index, cond in enumerate(conditions):
        outer = enclosing(conditions, index)
        try:
            samples = condition_samples(load_samples(registry, cond.dataset, max_samples or suite.max_samples), cond)
            n: int | None = len(samples)
            data_note = ""
        except (BadInput, PrhBenchError) as exc:
            samples, data_note = None, f"dataset unavailable: {exc}"
            n = int(cond.dataset.options.get("limit") or cond.dataset.options.get("count") or 0) or None
        members, pending = [], {}
        for m in models:
            if samples is not None:
                key, _ = model_feature_key(registry.plugins.backends[m.backend], m, cond.dataset, samples)
                cached = cache.path(m.id, key).exists()
                status = (
                    "cached"
                    if cached
                    else ("to extract" if not weights[m.id].startswith("unavailable") else "weights unavailable here")
                )
                if cached:
                    members.append(Member(m.id, key, cache.info(m.id, key)))
                elif status == "to extract":
                    pending[m.id] = widths[m.id]
                    if outer is not None:
                        status = f"to slice from {conditions[outer].label}"  # no extraction of its own
            else:
                status = "dataset unavailable"
            w = widths[m.id]
            mb = n * sum(w) * 4 / 2**20 if (w and n) else None
            rows.append(
                {
                    "condition": cond.label,
                    "model": m.id,
                    "status": status,
                    "weights": weights[m.id],
                    "layers": len(w) if w else None,
                    "feature_MiB": mb,
                    "note": data_note,
                }
            )
        if samples is not None:
            work += scoring_work(
                registry,
                suite,
                pair_cache,
                cond,
                len(samples),
                members,
                pending,
                int(budget_gib * 2**30),
                samples.group_codes,
            )
    return pd.DataFrame(rows), pd.DataFrame(work)
