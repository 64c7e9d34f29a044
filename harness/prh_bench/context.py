"""A run's context: what it runs (the spec a worker rebuilds it from), its conditions (data sets, transform
levels), the targets of extraction, loading and transforming samples, and the device. The driver (runner.py)
and the workers (executors.py) both read it; neither reaches into the other."""

from __future__ import annotations

import dataclasses
import hashlib
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .backend import resolve_dtype
from .errors import BadInput, PrhBenchError
from .features import FeatureCache, Features
from .manifest import DatasetManifest, ModelManifest, SuiteManifest
from .pair_cache import PairCache
from .registry import Registry
from .samples import SampleSet
from .score_job import DEFAULT_BUDGET_GIB, Member


@dataclass(frozen=True)
class RunSpec:
    """What a worker needs to rebuild a run's context: small and picklable."""

    suite: str
    cache_root: str
    registry_dirs: tuple[str, ...] = ()
    device: str = "auto"
    force: bool = False
    max_samples: int | None = None
    budget_gib: float = DEFAULT_BUDGET_GIB
    threads: int | None = None  # torch threads of a worker: CPU results depend on it in the last bits
    extra_models: tuple[str, ...] = ()  # run beside the suite's own (`run --add-model`, `verify`)


@dataclass(frozen=True)
class Target:
    """The sample set of an extraction: a condition of the suite (its index) or a probe data set (its id)."""

    condition: int | None = None
    probe: str | None = None


@dataclass(frozen=True)
class Condition:
    """One dataset, possibly transformed at one level, possibly cut to its first `samples` in a seeded order: a
    suite runs once per condition of its sweep."""

    dataset: DatasetManifest
    transform: str | None = None
    level: float | None = None
    seed: int = 0
    samples: int | None = None
    k: int | None = None  # the metrics' k under this condition (a sweep of k)

    @property
    def label(self) -> str:
        parts = [self.dataset.id]
        if self.transform is not None and self.level is not None:
            # Short where that is exact (0.1, not 0.1000000000000000055); every digit where 6 would merge levels.
            level = f"{self.level:g}" if float(f"{self.level:g}") == self.level else repr(self.level)
            parts.append(f"{self.transform}={level}")
        if self.samples is not None:
            parts.append(f"n={self.samples}")
        if self.k is not None:
            parts.append(f"k={self.k}")
        return " ".join(parts)

    def metric_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """A suite's parameters of a metric under this condition: k replaced in a sweep of k."""
        return params if self.k is None else {**params, "k": self.k}


def suite_conditions(registry: Registry, suite: SuiteManifest) -> list[Condition]:
    sweep = suite.sweep
    datasets = sweep.datasets if sweep and sweep.datasets else [suite.dataset]
    levels: list[float | None] = list(sweep.levels) if sweep and sweep.levels else [None]
    sizes: list[int | None] = list(sweep.samples) if sweep and sweep.samples else [None]
    ks: list[int | None] = list(sweep.k) if sweep and sweep.k else [None]
    out: list[Condition] = []
    for ds in datasets:
        manifest = registry.get(ds, DatasetManifest)
        for level in levels:
            for n in sizes:
                out.extend(
                    Condition(
                        manifest,
                        sweep.transform if sweep and level is not None else None,
                        level,
                        sweep.seed if sweep else 0,
                        n,
                        k,
                    )
                    for k in ks
                )
    return out


def enclosing(conditions: list[Condition], index: int) -> int | None:
    """The index of the largest condition of a sweep of N whose samples begin with condition `index`'s (the
    same data set, transform, level and seed: the sets nest), when it is larger: its features' first rows are
    this condition's, so one extraction serves every N."""
    cond = conditions[index]
    if cond.samples is None:
        return None
    same = [
        (c.samples, i)
        for i, c in enumerate(conditions)
        if c.samples is not None
        and (c.dataset.id, c.transform, c.level, c.seed) == (cond.dataset.id, cond.transform, cond.level, cond.seed)
    ]
    n, outer = max(same)
    return outer if n > cond.samples else None


def condition_samples(samples: SampleSet, cond: Condition) -> SampleSet:
    """A condition's samples: the first `cond.samples` of the set shuffled with the sweep's seed (one order for
    every N, so the smaller sets nest in the larger), then transformed."""
    if cond.samples is not None:
        if cond.samples > len(samples.samples):
            raise BadInput(
                f"sweep.samples: N={cond.samples} exceeds the {len(samples.samples)} samples of data set "
                f"'{cond.dataset.id}' (after the suite's max_samples)"
            )
        order = np.random.default_rng(cond.seed).permutation(len(samples.samples))[: cond.samples]
        samples = SampleSet(tuple(samples.samples[i] for i in order))
    return apply_transform(samples, cond)


def apply_transform(samples: SampleSet, cond: Condition) -> SampleSet:
    """Images under a condition's transform, each with noise seeded by the sweep seed and the sample id:
    gaussian_noise adds N(0, level^2) to pixels in [0, 1]; blend_noise mixes (1 - level) image + level
    uniform noise. Texts pass unchanged."""
    if cond.transform is None:
        return samples
    level = float(cond.level or 0.0)  # a transform comes with its level (Sweep's validator)
    out = []
    for s in samples.samples:
        if s.image is None:
            out.append(s)
            continue
        seed = int.from_bytes(hashlib.sha256(f"{cond.seed}/{s.id}".encode()).digest()[:8], "little")
        rng = np.random.default_rng(seed)
        x = np.asarray(s.image.convert("RGB"), dtype=np.float32) / 255
        if cond.transform == "gaussian_noise":
            x = x + rng.normal(0.0, level, x.shape)
        else:
            x = (1 - level) * x + level * rng.random(x.shape)
        img = Image.fromarray((np.clip(x, 0, 1) * 255).round().astype(np.uint8))
        out.append(dataclasses.replace(s, image=img))
    return SampleSet(tuple(out))


DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def resolve_device(name: str) -> torch.device:
    """The torch device a run uses; an unknown name or a device this machine lacks is bad input."""
    if not DEVICE.match(name):
        raise BadInput(f"--device {name!r}: expected auto, cpu, cuda, cuda:N or mps")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise BadInput(f"--device {name}: no CUDA device is available here (use --device cpu or auto)")
        index = int(name.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise BadInput(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if name == "mps" and not torch.backends.mps.is_available():
        raise BadInput("--device mps: no Apple GPU is available here")
    return torch.device(name)


def load_samples(registry: Registry, dataset: DatasetManifest, limit: int | None) -> SampleSet:
    loader = registry.plugins.loaders[dataset.loader]
    return loader(dataset).subset(limit)


class RunContext:
    """The registry, suite, cache and sample sets of a run, as seen by the driver or by one worker."""

    def __init__(self, spec: RunSpec, registry: Registry | None = None):
        from .manager import load_plugins

        self.spec = spec
        self.registry = registry or Registry.load(load_plugins(), [Path(d) for d in spec.registry_dirs])
        suite = self.registry.get(spec.suite, SuiteManifest)
        self.suite = suite
        self.models: dict[str, ModelManifest] = {
            m.id: resolve_dtype(m, self.device) for m in self.registry.suite_models(suite, spec.extra_models)
        }
        self.conditions = suite_conditions(self.registry, suite)
        self.cache = FeatureCache(Path(spec.cache_root))
        self.pairs = PairCache(Path(spec.cache_root))
        self._data: dict[tuple[str, int | None], SampleSet] = {}
        self._last: tuple[Target, tuple[DatasetManifest, SampleSet, str]] | None = None

    @cached_property
    def device(self) -> torch.device:
        return resolve_device(self.spec.device)

    def dataset(self, dataset: DatasetManifest, limit: int | None) -> SampleSet:
        if (dataset.id, limit) not in self._data:
            self._data[(dataset.id, limit)] = load_samples(self.registry, dataset, limit)
        return self._data[(dataset.id, limit)]

    def samples(self, target: Target) -> tuple[DatasetManifest, SampleSet, str]:
        """The data set, the samples (transformed under a sweep condition) and the label of a target. The last
        target's are kept: every model of a condition reads them, and a sweep's conditions come one by one
        (keeping all of a 100-level noise sweep would hold 100 copies of the images)."""
        if self._last is None or self._last[0] != target:
            self._last = (target, self._samples(target))
        return self._last[1]

    def _samples(self, target: Target) -> tuple[DatasetManifest, SampleSet, str]:
        if target.condition is not None:
            cond = self.conditions[target.condition]
            limit = self.spec.max_samples or self.suite.max_samples
            return cond.dataset, condition_samples(self.dataset(cond.dataset, limit), cond), cond.label
        ds = self.registry.get(target.probe or "", DatasetManifest)
        return ds, self.dataset(ds, None), f"probe {ds.id}"

    def enclosing(self, target: Target) -> Target | None:
        if target.condition is None or (outer := enclosing(self.conditions, target.condition)) is None:
            return None
        return Target(condition=outer)

    def features(self, model_id: str, key: str) -> Features:
        feats = self.cache.load(model_id, key)
        if feats is None:
            raise PrhBenchError(
                f"features of '{model_id}' vanished from (or were damaged in) the cache "
                f"{self.cache.root} during the run; run again to extract them anew"
            )
        return feats

    def member_features(self, m: Member) -> Features:
        return self.features(m.id, m.key)
