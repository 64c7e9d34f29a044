"""Drives a suite: its conditions, each model's features (cache or extraction), every model pair scored at
every layer pair, probes, and the results handed to the report writer. One model failing never loses the
others' results."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from .align.metric import Metric
from .align.prepare import CONCAT
from .context import Condition, RunContext, RunSpec, Target
from .errors import BadInput, PrhBenchError
from .executors import PROGRESS, Executor, LocalExecutor, ModelOutcome
from .features import FeatureCache
from .manifest import DatasetManifest, ModelManifest, SuiteManifest
from .pair_details import pair_details
from .registry import Registry
from .samples import SampleSet
from .score_job import DEFAULT_BUDGET_GIB, Member, ScoreJob
from .scoring import JobScores

log = logging.getLogger(__name__)
NEEDS = {"vision": "image", "text": "text"}


@dataclass(frozen=True)
class ScoredJob:
    """One metric's pair scores under one condition of N samples, with the layer names of its models."""

    condition: Condition
    n: int
    scores: JobScores
    layer_names: dict[str, list[str]]


@dataclass
class SuiteRun:
    suite: SuiteManifest
    models: dict[str, ModelManifest]  # as run (revision sweeps make 'ID@REVISION' models)
    conditions: list[Condition]
    n_samples: dict[str, int]  # per condition label
    outcomes: list[ModelOutcome]
    scores: pd.DataFrame  # long table: one row per (condition, model pair, layer pair, metric)
    calibration: pd.DataFrame  # one row per (condition, model pair, metric) when the suite asks for nulls
    model_scores: pd.DataFrame  # per condition and model, the mean of each per-sample extra (bits per byte)
    probes: pd.DataFrame  # per probe task and model: its score
    metric_versions: dict[str, int]
    device: str
    seconds: dict[str, float] = field(default_factory=dict)
    pair_work: list[dict[str, Any]] = field(default_factory=list)  # per condition and metric: pairs read / computed
    scored: list[ScoredJob] = field(default_factory=list)  # every job's pair scores, for the per-pair records
    #: with `search: ivf`: {"recall": per model and layer, "pairs": per pair, its score on rows searched exactly}
    approximate_search: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {"recall": [], "pairs": []})
    #: per condition, metric and sample: each model's term of its score with the reference (pair_details)
    sample_terms: pd.DataFrame = field(default_factory=pd.DataFrame)
    max_samples: int | None = None  # the run's --max-samples (a verifier draws the same samples with it)

    def metric(self, name: str) -> Metric | None:
        """The metric (plugin object) the run scored under `name`."""
        return next((s.scores.job.metric for s in self.scored if s.scores.job.metric.name == name), None)

    @property
    def failures(self) -> list[ModelOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]


def reads(m: ModelManifest, samples: SampleSet) -> bool:
    """Whether the samples carry the modality the model reads (images for vision, texts for text)."""
    return getattr(samples.samples[0], NEEDS[m.modality]) is not None


def check_modalities(models: list[ModelManifest], samples: SampleSet, dataset: DatasetManifest) -> None:
    for m in models:
        if not reads(m, samples):
            raise BadInput(f"model '{m.id}' reads {m.modality} but dataset '{dataset.id}' has no {NEEDS[m.modality]}s")


def score_rows(job: ScoreJob, scores: JobScores, names: dict[str, list[str]]) -> list[dict[str, Any]]:
    """The long table of one job: every ordered model pair it scores x every layer pair (its parameters one
    dict, shared by the rows)."""
    params = job.params
    rows = []
    for a, b in job.pairs():
        matrix = scores.pair(a.id, b.id)
        for i, lx in enumerate(names[a.id]):
            for j, ly in enumerate(names[b.id]):
                rows.append(
                    {
                        "model_x": a.id,
                        "model_y": b.id,
                        "layer_x": lx,
                        "layer_y": ly,
                        "metric": job.metric.name,
                        "params": params,
                        "score": float(matrix[i, j]),
                    }
                )
    return rows


def run_suite(
    registry: Registry,
    suite_id: str,
    cache: FeatureCache,
    *,
    device: str = "auto",
    force: bool = False,
    progress: bool = True,
    max_samples: int | None = None,
    executor: Executor | None = None,
    budget_gib: float | None = None,
    registry_dirs: tuple[Path, ...] = (),
    extra_models: tuple[str, ...] = (),
) -> SuiteRun:
    """Extract (or reuse) every model's features, then score every model pair at every layer pair with every
    metric, condition by condition. Work goes to the executor (this process by default); its results go to
    the cache first, so a run killed at any point resumes where it stopped. `extra_models` run beside the
    suite's own, under its conditions, metrics and preparation (a contributor's model against the zoo)."""
    # Absolute paths: Ray workers run in folders of their own.
    spec = RunSpec(
        suite_id,
        str(cache.root.resolve()),
        tuple(str(Path(d).resolve()) for d in registry_dirs),
        device,
        force,
        max_samples,
        budget_gib or DEFAULT_BUDGET_GIB,
        extra_models=tuple(extra_models),
    )
    ctx = RunContext(spec, registry)
    used = ctx.device  # an unusable device, like bad metric parameters, is an error before any work
    suite, models = ctx.suite, list(ctx.models.values())
    executor = executor or LocalExecutor()
    versions = {u.name: registry.get(u.name).version for u in suite.metrics}
    timings = {"load_data": 0.0, "features": 0.0, "scoring": 0.0}
    outcomes: list[ModelOutcome] = []
    scores, nulls, model_scores, sizes, work, scored = [], [], [], {}, [], []
    approx: dict[str, list[dict[str, Any]]] = {"recall": [], "pairs": []}
    terms = []
    for index, cond in enumerate(ctx.conditions):
        t0 = time.perf_counter()
        _, samples, _ = ctx.samples(Target(condition=index))
        check_modalities(models, samples, cond.dataset)
        metrics = [registry.metric(u.name, cond.metric_params(u.params)) for u in suite.metrics]
        for metric, params in metrics:
            metric.check_n(len(samples), **params)
        sizes[cond.label] = len(samples)
        timings["load_data"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        done = executor.extract(ctx, list(ctx.models), Target(condition=index), progress)
        outcomes += done
        ok = [o for o in done if o.status != "failed"]
        PROGRESS.info(
            "%s: features of %d models (%d failed) in %.1f s",
            cond.label,
            len(done),
            len(done) - len(ok),
            time.perf_counter() - t0,
        )
        model_scores += [
            {"condition": cond.label, "model": o.model, "score": k, "mean": v}
            for o in ok
            for k, v in (o.model_scores or {}).items()
        ]
        timings["features"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        members = tuple(Member(o.model, o.key, cache.info(o.model, o.key)) for o in ok)
        for o, m in zip(ok, members, strict=True):
            o.widths = m.info.widths
        names = {m.id: m.info.layer_names + ([CONCAT] if suite.prepare.concat_layers else []) for m in members}
        rows, cal = [], []
        for use, (metric, params) in zip(suite.metrics, metrics, strict=True):
            job = ScoreJob(
                metric,
                params,
                versions[use.name],
                suite.prepare,
                suite.calibrate,
                members,
                int(spec.budget_gib * 2**30),
                suite.reference,
                samples.group_codes,
            )
            job.check_fits()
            t1 = time.perf_counter()
            job_scores = executor.score(ctx, job, progress)
            PROGRESS.info(
                "%s: %s of %d pairs (%d computed) in %.1f s",
                cond.label,
                use.name,
                len(job.unordered_pairs()),
                job_scores.result.computed,
                time.perf_counter() - t1,
            )
            rows += score_rows(job, job_scores, names)
            cal += job_scores.calibration()
            scored.append(ScoredJob(cond, len(samples), job_scores, names))
            details = pair_details(
                job_scores,
                cache.root,
                ctx.member_features,
                names,
                cond.label,
                samples.ids,
                [s.group for s in samples.samples],
            )
            approx["recall"] += details.recall
            approx["pairs"] += details.approximate
            terms.append(details.terms)
            unordered = job.unordered_pairs()
            work.append(
                {
                    "condition": cond.label,
                    "metric": use.name,
                    "pairs": len(unordered),
                    "pairs_computed": job_scores.result.computed,
                    "nulls": len(job.null_pairs(unordered)),
                    "nulls_computed": job_scores.result.nulls_computed,
                }
            )
        columns = ["model_x", "model_y", "layer_x", "layer_y", "metric", "params", "score"]
        scores.append(pd.DataFrame(rows, columns=columns).assign(condition=cond.label))
        nulls.append(pd.DataFrame(cal).assign(condition=cond.label))
        timings["scoring"] += time.perf_counter() - t0
    t0 = time.perf_counter()
    probes = run_probes(ctx, executor, progress, outcomes)
    timings["probes"] = time.perf_counter() - t0
    order = ["condition", "model_x", "model_y", "layer_x", "layer_y", "metric", "params", "score"]
    return SuiteRun(
        suite,
        ctx.models,
        ctx.conditions,
        sizes,
        outcomes,
        pd.concat(scores)[order],
        pd.concat(nulls),
        pd.DataFrame(model_scores),
        probes,
        versions,
        str(used),
        timings,
        pair_work=work,
        scored=scored,
        approximate_search=approx,
        sample_terms=pd.concat(terms) if terms else pd.DataFrame(),
        max_samples=max_samples,
    )


def run_probes(ctx: RunContext, executor: Executor, progress: bool, outcomes: list[ModelOutcome]) -> pd.DataFrame:
    """Every model that reads the probe data set's modality, scored by the probe's task on its features (read
    back from the cache one model at a time)."""
    rows = []
    for probe in ctx.suite.probes:
        try:
            ds, samples, _ = ctx.samples(Target(probe=probe.dataset))
        except PrhBenchError as exc:  # the alignment results are already computed: keep them, report this
            log.error("probe data set '%s' is unavailable: %s", probe.dataset, exc)
            outcomes.append(
                ModelOutcome(f"probe:{probe.dataset}", "failed", error=str(exc), condition=f"probe {probe.dataset}")
            )
            continue
        task = ctx.registry.plugins.tasks[probe.task]
        params = task.params(**probe.params)
        readers = [
            mid
            for mid, m in ctx.models.items()
            if reads(m, samples)
            and (
                task.sample_score is None
                or task.sample_score in ctx.registry.plugins.backends[m.backend].sample_score_names
            )
        ]
        done = executor.extract(ctx, readers, Target(probe=probe.dataset), progress)
        outcomes += done
        for o in done:
            if o.status != "failed":
                feats = ctx.features(o.model, o.key)
                rows.append(
                    {
                        "task": probe.task,
                        "dataset": ds.id,
                        "model": o.model,
                        "score": task.evaluate(feats, samples, **params),
                    }
                )
    return pd.DataFrame(rows, columns=["task", "dataset", "model", "score"])
