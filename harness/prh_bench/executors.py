"""Where a run's work happens. The driver (runner.py) hands out two kinds of work, both of which leave their
results in the shared cache: extracting one model's features on one sample set, and computing tiles of pair
scores (scoring.py). `LocalExecutor` does them in this process, in order; `RayExecutor` makes each a Ray task
with its resource needs, on a local Ray instance or a cluster whose nodes share the cache directory."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
from tqdm import tqdm

from .backend import ModelBackend
from .context import RunContext, RunSpec, Target
from .errors import BadInput, PrhBenchError, WeightsUnavailable
from .features import Features, extract, model_feature_key
from .manifest import ModelManifest
from .score_job import ScoreJob
from .scoring import JobScores, collect, run_tiles
from .weights import offline

#: one line per finished model and stage for a log file (the CLI turns it on when stderr is no terminal: a
#: cold run under SLURM or CI printed nothing for 22 minutes)
PROGRESS = logging.getLogger("prh_bench.progress")


#: sliced: the first rows of a larger nested set's features
Status = Literal["cached", "extracted", "sliced", "failed"]


@dataclass
class ModelOutcome:
    model: str
    status: Status
    seconds: float = 0.0
    error: str = ""
    key: str = ""
    layers: int = 0
    condition: str = ""
    model_scores: dict[str, float] | None = None  # the mean of each per-sample score (bits per byte)
    widths: list[int] | None = None  # each layer's feature width, once its features are in the cache


def finished(o: ModelOutcome, i: int, n: int) -> None:
    what = f"failed ({o.error.partition(':')[0]})" if o.status == "failed" else f"{o.status}, {o.layers} layers"
    PROGRESS.info("[%d/%d] %s on %s: %s in %.1f s", i, n, o.model, o.condition, what, o.seconds)


def check_offline(backend: ModelBackend, m: ModelManifest) -> None:
    """Under --offline, a model whose weights are not on this machine fails before it is built or anything is
    fetched (building ViT-G to find its weights missing took 57 s and 5.5 GB), with the backend's reason."""
    if not offline():
        return
    status = backend.weights_status(m)
    if status == "download":
        raise WeightsUnavailable(
            f"model '{m.id}': its weights are not on this machine and --offline forbids "
            "fetching them; run once with the network (they are then cached), or set a local "
            "checkpoint in the manifest's `weights`"
        )
    if status.startswith("unavailable"):
        why = status.removeprefix("unavailable: ")
        raise WeightsUnavailable(why if why.startswith(f"model '{m.id}'") else f"model '{m.id}': {why}")


def extract_one(ctx: RunContext, model_id: str, target: Target, progress: bool = False) -> ModelOutcome:
    """One model's features on one sample set, from the cache or extracted and stored. While one run
    extracts, others sharing the cache wait on the entry's lock and then read it."""
    m = ctx.models[model_id]
    dataset, samples, label = ctx.samples(target)
    backend = ctx.registry.plugins.backends[m.backend]
    key, doc = model_feature_key(backend, m, dataset, samples)
    start = time.perf_counter()

    def done(status: Status, feats: Features) -> ModelOutcome:
        return ModelOutcome(
            m.id,
            status,
            time.perf_counter() - start,
            key=key,
            layers=len(feats.layer_names),
            condition=label,
            model_scores={k: float(v.mean()) for k, v in feats.sample_scores.items()},
        )

    if not ctx.spec.force and (feats := ctx.cache.load(m.id, key)) is not None:
        return done("cached", feats)  # no lock needed to read a stored entry (a read-only cache works)
    with ctx.cache.lock(m.id, key):
        if not ctx.spec.force and (feats := ctx.cache.load(m.id, key)) is not None:
            return done("cached", feats)
        if (outer := ctx.enclosing(target)) is not None:
            # A sweep of N: the first rows of the largest nested point's features, extracted first if need be.
            # Batches of other samples may move a text model's last bits (padding), never which samples they are.
            big = extract_one(ctx, model_id, outer, progress)
            if big.status == "failed":
                return dataclasses.replace(big, condition=label)
            feats = ctx.features(m.id, big.key).head(len(samples))
            ctx.cache.save(m.id, key, feats, {**doc, "first_rows_of": big.key})
            return done("sliced", feats)
        try:
            check_offline(backend, m)
            feats = extract(backend.load(m, ctx.device), samples, m.batch_size, desc=m.id, progress=progress)
            ctx.cache.save(m.id, key, feats, doc)
        except (PrhBenchError, RuntimeError, OSError, ValueError) as exc:  # the run's summary gives the reason
            return ModelOutcome(
                m.id, "failed", time.perf_counter() - start, f"{type(exc).__name__}: {exc}", key, condition=label
            )
    return done("extracted", feats)


class Executor(Protocol):
    def extract(self, ctx: RunContext, models: list[str], target: Target, progress: bool) -> list[ModelOutcome]:
        """Each model's features on the target's samples, in the cache; their outcomes in model order."""

    def score(self, ctx: RunContext, job: ScoreJob, progress: bool) -> JobScores:
        """Every pair of the job, read from the pair cache or computed and stored, and returned."""


class LocalExecutor:
    """In this process, one model and one tile at a time."""

    def extract(self, ctx: RunContext, models: list[str], target: Target, progress: bool) -> list[ModelOutcome]:
        label = ctx.samples(target)[2]
        bar = tqdm(models, desc=f"{ctx.suite.id}: models ({label})", disable=not progress, unit="model")
        done = []
        for mid in bar:
            done.append(extract_one(ctx, mid, target, progress))
            finished(done[-1], len(done), len(models))
        return done

    def score(self, ctx: RunContext, job: ScoreJob, progress: bool) -> JobScores:
        tiles = job.tiles()
        with tqdm(total=len(tiles), desc=job.metric.name, disable=not progress, unit="tile", leave=False) as bar:
            return JobScores(job, run_tiles(job, ctx.pairs, ctx.member_features, tiles, lambda: bar.update()))


_WORKER_CONTEXTS: dict[RunSpec, RunContext] = {}


def _worker_context(spec: RunSpec) -> RunContext:
    """A Ray worker builds a run's context once and reuses it across the tasks it runs."""
    if spec not in _WORKER_CONTEXTS:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
        _WORKER_CONTEXTS[spec] = RunContext(spec)
    if spec.threads:
        torch.set_num_threads(spec.threads)
    return _WORKER_CONTEXTS[spec]


def _ray_extract(spec: RunSpec, model_id: str, target: Target) -> ModelOutcome:
    return extract_one(_worker_context(spec), model_id, target)


def _ray_score(spec: RunSpec, job: ScoreJob, i: int, j: int) -> tuple[int, int]:
    ctx = _worker_context(spec)
    done = run_tiles(job, ctx.pairs, ctx.member_features, [(i, j)])
    return done.computed, done.nulls_computed


class RayExecutor:
    """Each extraction a Ray task (a GPU when the run's device asks for one and the cluster has one, and the
    manifest's memory need), each tile of pairs a task (its memory budget). Workers read and write the cache
    at the run's cache root, which every node must see (a shared file system).

    Every task gets as many CPUs, and torch threads, as this process uses (at most a node's CPUs): on the same
    kind of machine, results then equal the local executor's bit for bit."""

    def __init__(self, address: str | None = None):
        import ray

        if not ray.is_initialized():
            env = {k: v for k, v in os.environ.items() if k.startswith(("PRH_BENCH_", "HF_", "TRANSFORMERS_", "OMP_"))}
            ray.init(address=address, runtime_env={"env_vars": env}, logging_level=logging.WARNING)
        self.ray = ray
        nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
        self.threads = max(1, min(torch.get_num_threads(), max(int(n.get("CPU", 1)) for n in nodes)))
        self.node_memory = max(n.get("memory", 0) for n in nodes)  # a task asking for more would wait forever

    def _spec(self, ctx: RunContext) -> RunSpec:
        return dataclasses.replace(ctx.spec, threads=self.threads)

    def _gpus(self, ctx: RunContext, m: ModelManifest) -> float:
        if ctx.spec.device == "cpu" or self.ray.cluster_resources().get("GPU", 0) == 0:
            return 0
        return m.resources.gpus

    def extract(self, ctx: RunContext, models: list[str], target: Target, progress: bool) -> list[ModelOutcome]:
        task = self.ray.remote(_ray_extract)
        refs: list[Any] = []  # ray object references, and outcomes decided here
        label = ctx.samples(target)[2]
        for mid in models:
            m = ctx.models[mid]
            options = {"num_cpus": self.threads, "num_gpus": self._gpus(ctx, m)}
            if (memory := m.memory_bytes()) is not None:
                if memory > self.node_memory:
                    refs.append(
                        ModelOutcome(
                            mid,
                            "failed",
                            error=f"needs {memory / 2**30:.1f} GiB of memory; the "
                            f"largest Ray node has {self.node_memory / 2**30:.1f} GiB",
                            condition=label,
                        )
                    )
                    continue
                options["memory"] = memory
            refs.append(task.options(**options).remote(self._spec(ctx), mid, target))
        count = iter(range(1, len(refs) + 1))
        return self._gather(refs, f"{ctx.suite.id}: models", progress, lambda o: finished(o, next(count), len(refs)))

    def score(self, ctx: RunContext, job: ScoreJob, progress: bool) -> JobScores:
        if job.budget > self.node_memory:
            raise BadInput(
                f"--memory-budget {job.budget / 2**30:g} GiB exceeds the memory of the largest Ray node "
                f"({self.node_memory / 2**30:.1f} GiB)"
            )
        task = self.ray.remote(_ray_score).options(num_cpus=self.threads, memory=job.budget)
        done = self._gather(
            [task.remote(self._spec(ctx), job, i, j) for i, j in job.tiles()], job.metric.name, progress
        )
        return collect(job, ctx.pairs, sum(c for c, _ in done), sum(n for _, n in done))

    def _gather(self, refs: list[Any], desc: str, progress: bool, each: Callable[[Any], None] | None = None) -> list:
        """Results in submission order (entries that are already outcomes pass through); `each` sees every
        result as it comes."""
        tasks = [r for r in refs if isinstance(r, self.ray.ObjectRef)]
        for r in refs:
            if each is not None and not isinstance(r, self.ray.ObjectRef):
                each(r)
        with tqdm(total=len(tasks), desc=desc, disable=not progress, leave=False) as bar:
            while tasks:
                ready, tasks = self.ray.wait(tasks, num_returns=1)
                bar.update(len(ready))
                if each is not None:
                    each(self.ray.get(ready[0]))
        return [self.ray.get(r) if isinstance(r, self.ray.ObjectRef) else r for r in refs]
