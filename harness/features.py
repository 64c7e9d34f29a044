"""Feature extraction and the content-addressed feature cache.

A cache entry is keyed by everything that changes features: the model manifest's feature fields (backend,
source, revision, layers, pooling, weights, preprocessing, dtype, version), the dataset manifest and the ids
and content digest of the samples, and the versions of the backend's libraries. Entries are safetensors
files written to a temporary name and renamed atomically; an entry whose stored key differs or that cannot
be read is never used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from .backend import FeatureExtractor
from .errors import ExtractionFailed
from .manifest import DatasetManifest, ModelManifest
from .samples import SampleSet

log = logging.getLogger(__name__)
CACHE_FORMAT = 1
ENV_CACHE = "PRH_BENCH_CACHE"


def cache_root() -> Path:
    """$PRH_BENCH_CACHE, else the user's cache dir (e.g. ~/.cache/prh-bench)."""
    env = os.environ.get(ENV_CACHE)
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("prh-bench"))


def library_versions(names: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "absent"
    return out


def feature_key(
    model: ModelManifest, libraries: tuple[str, ...], dataset: DatasetManifest, samples: SampleSet
) -> tuple[str, dict[str, Any]]:
    """The cache key (sha256 hex) and the document it hashes."""
    doc = {
        "format": CACHE_FORMAT,
        "model": model.feature_fields(),
        "dataset": dataset.model_dump(mode="json", include={"loader", "options", "revision", "version"}),
        "sample_ids": hashlib.sha256("\n".join(samples.ids).encode()).hexdigest(),
        "n_samples": len(samples),
        "sample_content": samples.digest,
        "libraries": library_versions(libraries),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest(), doc


@dataclass(frozen=True)
class Features:
    """One model's features on one sample set: a list of N x D tensors, one per layer, and per-sample extras."""

    layer_names: list[str]
    tensors: list[torch.Tensor]
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return self.tensors[0].shape[0]


def read_features(path: Path) -> tuple[Features, dict[str, str]]:
    """Features and metadata of one cache file (safetensors: no pickle)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        layers = json.loads(meta["layers"])
        tensors = [f.get_tensor(f"layer{i:03d}") for i in range(len(layers))]
        extras = {name: f.get_tensor(f"extra.{name}") for name in json.loads(meta.get("extras", "[]"))}
    return Features(layers, tensors, extras), meta


class FeatureCache:
    def __init__(self, root: Path):
        self.root = root

    def path(self, model_id: str, key: str) -> Path:
        return self.root / "features" / model_id / f"{key}.safetensors"

    def load(self, model_id: str, key: str) -> Features | None:
        """The cached features, or None when absent, unreadable or stored under another key."""
        path = self.path(model_id, key)
        if not path.exists():
            return None
        try:
            feats, meta = read_features(path)
        except Exception as exc:  # a truncated or foreign file: never trust it
            log.warning("cache entry %s is unreadable (%s); recomputing", path, exc)
            return None
        if meta.get("key") != key:
            log.warning("cache entry %s was stored under another key; recomputing", path)
            return None
        return feats

    def save(self, model_id: str, key: str, feats: Features, doc: dict[str, Any]) -> Path:
        """Write atomically: a reader sees the old entry or the complete new one, never a partial file."""
        from safetensors.torch import save_file

        path = self.path(model_id, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {f"layer{i:03d}": t.contiguous() for i, t in enumerate(feats.tensors)}
        tensors |= {f"extra.{name}": t.contiguous() for name, t in feats.extras.items()}
        meta = {"key": key, "layers": json.dumps(feats.layer_names), "extras": json.dumps(list(feats.extras)),
                "key_doc": json.dumps(doc, sort_keys=True)}
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".safetensors")
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata=meta)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return path


def extract(
    extractor: FeatureExtractor, samples: SampleSet, batch_size: int, desc: str = "", progress: bool = True
) -> Features:
    """Run the extractor over all samples in batches; check shapes and finiteness. On an out-of-memory error
    the batch size halves and the batch is retried (down to 1)."""
    names = list(extractor.layer_names) + list(extractor.extra_names)
    parts: list[list[torch.Tensor]] = [[] for _ in names]
    done, size = 0, batch_size
    with torch.inference_mode(), tqdm(total=len(samples), desc=desc, disable=not progress, unit="sample", leave=False) as bar:
        while done < len(samples):
            batch = samples.samples[done : done + size]
            try:
                outs = extractor(batch)
            except torch.OutOfMemoryError:
                if size == 1:
                    raise ExtractionFailed(f"{desc}: out of memory even with batch size 1") from None
                size = max(1, size // 2)
                log.warning("%s: out of memory; retrying with batch size %d", desc, size)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                continue
            if len(outs) != len(names):
                raise ExtractionFailed(f"{desc}: extractor returned {len(outs)} outputs, expected {len(names)}")
            for store, out in zip(parts, outs):
                store.append(out)
            done += len(batch)
            bar.update(len(batch))
    tensors = [torch.cat(p).float() for p in parts]
    for name, t in zip(names, tensors):
        if t.shape[0] != len(samples):
            raise ExtractionFailed(f"{desc}: '{name}' has {t.shape[0]} rows for {len(samples)} samples")
        if not torch.isfinite(t).all():
            raise ExtractionFailed(f"{desc}: '{name}' has NaN or infinite values")
    n_layers = len(extractor.layer_names)
    return Features(names[:n_layers], tensors[:n_layers], dict(zip(names[n_layers:], tensors[n_layers:])))
