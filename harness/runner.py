"""Plans and executes a suite: load data, get each model's features (cache or extraction), score every
model pair at every layer pair, and hand the results to the report writer. One model failing never loses
the others' results."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm import tqdm

from .align import LayerScores, prepare, summarize_layers
from .align.calibrate import calibrate_summaries
from .align.matrix import score_models
from .align.prepare import CONCAT
from .errors import BadInput, PrhBenchError
from .features import FeatureCache, Features, extract, feature_key
from .manifest import DatasetManifest, ModelManifest, SuiteManifest
from .registry import Registry
from .samples import SampleSet

log = logging.getLogger(__name__)
NEEDS = {"vision": "image", "text": "text"}


@dataclass
class ModelOutcome:
    model: str
    status: str  # cached | extracted | failed
    seconds: float = 0.0
    error: str = ""
    key: str = ""
    layers: int = 0
    condition: str = ""


@dataclass(frozen=True)
class Condition:
    """One dataset, possibly transformed at one level: a suite runs once per condition of its sweep."""

    dataset: DatasetManifest
    transform: str | None = None
    level: float | None = None
    seed: int = 0

    @property
    def label(self) -> str:
        return self.dataset.id + (f" {self.transform}={self.level:g}" if self.transform is not None else "")


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
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def failures(self) -> list[ModelOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]


def suite_conditions(registry: Registry, suite: SuiteManifest) -> list[Condition]:
    sweep = suite.sweep
    datasets = sweep.datasets if sweep and sweep.datasets else [suite.dataset]
    levels: list[float | None] = list(sweep.levels) if sweep and sweep.levels else [None]
    out = []
    for ds in datasets:
        manifest = registry.get(ds, DatasetManifest)
        assert isinstance(manifest, DatasetManifest)
        for level in levels:
            out.append(Condition(manifest, sweep.transform if level is not None else None, level,
                                 sweep.seed if sweep else 0))
    return out


def apply_transform(samples: SampleSet, cond: Condition) -> SampleSet:
    """Images under a condition's transform, each with noise seeded by the sweep seed and the sample id:
    gaussian_noise adds N(0, level^2) to pixels in [0, 1]; blend_noise mixes (1 - level) image + level
    uniform noise. Texts pass unchanged."""
    if cond.transform is None:
        return samples
    out = []
    for s in samples.samples:
        if s.image is None:
            out.append(s)
            continue
        seed = int.from_bytes(hashlib.sha256(f"{cond.seed}/{s.id}".encode()).digest()[:8], "little")
        rng = np.random.default_rng(seed)
        x = np.asarray(s.image.convert("RGB"), dtype=np.float32) / 255
        if cond.transform == "gaussian_noise":
            x = x + rng.normal(0.0, cond.level, x.shape)
        else:
            x = (1 - cond.level) * x + cond.level * rng.random(x.shape)
        img = Image.fromarray((np.clip(x, 0, 1) * 255).round().astype(np.uint8))
        out.append(dataclasses.replace(s, image=img))
    return SampleSet(tuple(out))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BadInput(f"--device {name}: no CUDA device is available here")
    return torch.device(name)


def load_samples(registry: Registry, dataset: DatasetManifest, limit: int | None) -> SampleSet:
    loader = registry.plugins.loaders[dataset.loader]
    return loader(dataset).head(limit)


def reads(m: ModelManifest, samples: SampleSet) -> bool:
    """Whether the samples carry the modality the model reads (images for vision, texts for text)."""
    return getattr(samples.samples[0], NEEDS[m.modality]) is not None


def check_modalities(models: list[ModelManifest], samples: SampleSet, dataset: DatasetManifest) -> None:
    for m in models:
        if not reads(m, samples):
            raise BadInput(f"model '{m.id}' reads {m.modality} but dataset '{dataset.id}' has no {NEEDS[m.modality]}s")


def model_features(
    registry: Registry, m: ModelManifest, dataset: DatasetManifest, samples: SampleSet, cache: FeatureCache,
    device: torch.device, force: bool, progress: bool,
) -> tuple[Features | None, ModelOutcome]:
    backend = registry.plugins.backends[m.backend]
    key, doc = feature_key(m, backend.libraries, dataset, samples)
    start = time.perf_counter()
    if not force and (feats := cache.load(m.id, key)) is not None:
        return feats, ModelOutcome(m.id, "cached", time.perf_counter() - start, key=key, layers=len(feats.layer_names))
    try:
        extractor = backend.load(m, device)
        feats = extract(extractor, samples, m.batch_size, desc=m.id, progress=progress)
        cache.save(m.id, key, feats, doc)
    except (PrhBenchError, RuntimeError, OSError, ValueError) as exc:
        log.error("model '%s' failed: %s", m.id, exc)
        return None, ModelOutcome(m.id, "failed", time.perf_counter() - start, f"{type(exc).__name__}: {exc}", key)
    return feats, ModelOutcome(m.id, "extracted", time.perf_counter() - start, key=key, layers=len(feats.layer_names))


def score_pairs(
    registry: Registry, suite: SuiteManifest, feats: dict[str, Features], progress: bool
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every model pair x every layer pair x every metric, as a long table (and permutation nulls of each
    pair's best score when the suite asks). Per-layer summaries are computed once per model and metric and
    reused across all pairs and all permutations."""
    rows: list[dict[str, Any]] = []
    nulls: list[dict[str, Any]] = []
    ids = list(feats)
    prep = suite.prepare
    prepared = {mid: prepare(f.tensors, prep.clamp_quantile, prep.l2_normalize, prep.concat_layers)
                for mid, f in feats.items()}
    names = {mid: f.layer_names + ([CONCAT] if prep.concat_layers else []) for mid, f in feats.items()}
    for use in suite.metrics:
        metric, params = registry.metric(use.name, use.params)
        summaries = {mid: summarize_layers(metric, prepared[mid], **params) for mid in ids}
        zoo = score_models(metric, summaries, params)
        pairs = [(a, b) for i, a in enumerate(ids) for b in ids[i + 1 :]]
        if not metric.symmetric:
            pairs += [(b, a) for a, b in pairs]
        for a, b in tqdm(pairs, desc=metric.name, disable=not progress, leave=False):
            matrix = zoo.block(a, b)
            for i, lx in enumerate(names[a]):
                for j, ly in enumerate(names[b]):
                    rows.append({"model_x": a, "model_y": b, "layer_x": lx, "layer_y": ly, "metric": metric.name,
                                 "params": json.dumps(params, sort_keys=True), "score": float(matrix[i, j])})
            if suite.calibrate is not None:
                best = LayerScores(matrix, metric.higher_is_better).best
                cal = calibrate_summaries(metric, summaries[a], summaries[b], best, params, feats[a].n,
                                          suite.calibrate.permutations, suite.calibrate.seed)
                nulls.append({"model_x": a, "model_y": b, "metric": metric.name, **cal.as_dict()})
    columns = ["model_x", "model_y", "layer_x", "layer_y", "metric", "params", "score"]
    return pd.DataFrame(rows, columns=columns), pd.DataFrame(nulls)


def run_suite(
    registry: Registry, suite_id: str, cache: FeatureCache, *, device: str = "auto", force: bool = False,
    progress: bool = True, max_samples: int | None = None,
) -> SuiteRun:
    suite = registry.get(suite_id, SuiteManifest)
    assert isinstance(suite, SuiteManifest)
    models = registry.suite_models(suite)
    conds = suite_conditions(registry, suite)
    dev = resolve_device(device)
    timings = {"load_data": 0.0, "features": 0.0, "scoring": 0.0}
    outcomes: list[ModelOutcome] = []
    scores, nulls, extras, sizes = [], [], [], {}
    loaded: dict[str, SampleSet] = {}
    for cond in conds:
        t0 = time.perf_counter()
        if cond.dataset.id not in loaded:
            loaded[cond.dataset.id] = load_samples(registry, cond.dataset, max_samples or suite.max_samples)
            check_modalities(models, loaded[cond.dataset.id], cond.dataset)
        samples = apply_transform(loaded[cond.dataset.id], cond)
        sizes[cond.label] = len(samples)
        timings["load_data"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        feats: dict[str, Features] = {}
        desc = f"{suite.id}: models" + (f" ({cond.label})" if len(conds) > 1 else "")
        for m in tqdm(models, desc=desc, disable=not progress, unit="model"):
            f, outcome = model_features(registry, m, cond.dataset, samples, cache, dev, force, progress)
            outcome.condition = cond.label
            outcomes.append(outcome)
            if f is not None:
                feats[m.id] = f
                extras += [{"condition": cond.label, "model": m.id, "score": k, "mean": float(v.mean())}
                           for k, v in f.extras.items()]
        timings["features"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        table, cal = score_pairs(registry, suite, feats, progress)
        scores.append(table.assign(condition=cond.label))
        nulls.append(cal.assign(condition=cond.label))
        timings["scoring"] += time.perf_counter() - t0
    t0 = time.perf_counter()
    probes = run_probes(registry, suite, models, cache, dev, force, progress, outcomes)
    timings["probes"] = time.perf_counter() - t0
    order = ["condition", "model_x", "model_y", "layer_x", "layer_y", "metric", "params", "score"]
    versions = {u.name: registry.get(u.name).version for u in suite.metrics}
    return SuiteRun(suite, {m.id: m for m in models}, conds, sizes, outcomes, pd.concat(scores)[order],
                    pd.concat(nulls), pd.DataFrame(extras), probes, versions, timings)


def run_probes(
    registry: Registry, suite: SuiteManifest, models: list[ModelManifest], cache: FeatureCache, dev: torch.device,
    force: bool, progress: bool, outcomes: list[ModelOutcome],
) -> pd.DataFrame:
    """Every model that reads the probe data set's modality, scored by the probe's task on its features."""
    rows = []
    for probe in suite.probes:
        ds = registry.get(probe.dataset, DatasetManifest)
        assert isinstance(ds, DatasetManifest)
        try:
            samples = load_samples(registry, ds, None)
        except PrhBenchError as exc:  # the alignment results are already computed: keep them, report this
            log.error("probe data set '%s' is unavailable: %s", ds.id, exc)
            outcomes.append(ModelOutcome(f"probe:{ds.id}", "failed", error=str(exc), condition=f"probe {ds.id}"))
            continue
        task = registry.plugins.tasks[probe.task]
        params = task.params(**probe.params)
        for m in models:
            if not reads(m, samples):
                continue
            f, outcome = model_features(registry, m, ds, samples, cache, dev, force, progress)
            outcome.condition = f"probe {ds.id}"
            outcomes.append(outcome)
            if f is not None:
                rows.append({"task": probe.task, "dataset": ds.id, "model": m.id,
                             "score": task.evaluate(f, samples, **params)})
    return pd.DataFrame(rows, columns=["task", "dataset", "model", "score"])
