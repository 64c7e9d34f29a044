"""Feature extraction and the content-addressed feature cache.

A cache entry is keyed by everything that changes features: the model manifest's feature fields (backend,
source, revision, layers, pooling, weights, preprocessing, dtype, version), the dataset manifest and the ids
and content digest of the samples, and the versions of the backend's libraries. Entries are checksummed safetensors
files written atomically (see cache_files.py); an entry whose stored key differs, that cannot be read or that
fails its checksum is never used.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .backend import FeatureExtractor, ModelBackend
from .cache_files import CHECKSUM_FIELD, entry_lock, inside, read_entry, read_header, read_valid, write_entry
from .code_digest import code_digest
from .errors import ExtractionFailed
from .lazy import torch
from .manifest import DatasetManifest, ModelManifest
from .samples import SampleSet
from .weights import adapt_state_dict, local_source_sha256, unpinned_checkpoint_sha256

log = logging.getLogger(__name__)
CACHE_FORMAT = 3  # 2: entries carry a checksum of their tensors; 3: the key covers the extraction code
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
    model: ModelManifest,
    libraries: tuple[str, ...],
    dataset: DatasetManifest,
    samples: SampleSet,
    code: str = "",
    weights: str | None = None,
    source: str | None = None,
) -> tuple[str, dict[str, Any]]:
    """The cache key (sha256 hex) and the document it hashes. `code`: the digest of the extraction code (the
    backend's module and the helpers it uses, see code_digest); `weights`: the sha256 of a checkpoint file the
    manifest names without pinning its hash, and `source`: the digest of a local source folder or file, so that
    replacing the files makes a new key."""
    doc = {
        "format": CACHE_FORMAT,
        "model": model.feature_fields(),
        "code": code,
        "weights_sha256": weights,
        "source_sha256": source,
        "dataset": dataset.model_dump(mode="json", include={"loader", "options", "revision", "version"}),
        "sample_ids": hashlib.sha256("\n".join(samples.ids).encode()).hexdigest(),
        "n_samples": len(samples),
        "sample_content": samples.digest,
        "libraries": library_versions(libraries),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest(), doc


def model_feature_key(
    backend: ModelBackend, model: ModelManifest, dataset: DatasetManifest, samples: SampleSet
) -> tuple[str, dict[str, Any]]:
    """`feature_key` of a model as its backend extracts it: with the digest of the extraction code (the
    backend's module and the pooling and hook helpers it uses, `extract`, and the checkpoint adaptation of
    weights.py), of an unpinned checkpoint file and of a local source."""
    memo = cache_root() / "digests"  # file sha256s by path and stat, so large local files are hashed once
    return feature_key(
        model,
        backend.libraries,
        dataset,
        samples,
        code_digest(type(backend), extract, adapt_state_dict),
        unpinned_checkpoint_sha256(model.weights, model.id, memo),
        local_source_sha256(model.source, model.id, memo),
    )


@dataclass(frozen=True)
class Features:
    """One model's features on one sample set: a list of N x D tensors, one per layer, and per-sample scores
    computed on the way (a causal LM's bits per byte; their means are the run's model scores)."""

    layer_names: list[str]
    tensors: list[torch.Tensor]
    sample_scores: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return self.tensors[0].shape[0]

    def head(self, n: int) -> Features:
        """The first n samples' features (copies: a stored slice must not carry the whole tensor)."""
        return Features(
            self.layer_names,
            [t[:n].clone() for t in self.tensors],
            {name: t[:n].clone() for name, t in self.sample_scores.items()},
        )


def _features_of(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> Features:
    layers = json.loads(meta["layers"])
    extras = json.loads(meta.get("extras", "[]"))
    return Features(
        layers,
        [tensors[f"layer{i:03d}"] for i in range(len(layers))],
        {name: tensors[f"extra.{name}"] for name in extras},
    )


def read_features(path: Path) -> tuple[Features, dict[str, str]]:
    """Features and metadata of one cache file; `CorruptEntry` when it fails its checksum."""
    tensors, meta = read_entry(path)
    return _features_of(tensors, meta), meta


@dataclass(frozen=True)
class EntryInfo:
    """What scoring needs to know of a cached entry without reading its data: sample count, layer names and
    widths, and the checksum of its tensors (pair scores are keyed by it, so new features mean new scores)."""

    n: int
    layer_names: list[str]
    widths: list[int]
    digest: str


class FeatureCache:
    def __init__(self, root: Path):
        self.root = root

    def path(self, model_id: str, key: str) -> Path:
        return inside(self.root, "features", model_id, f"{key}.safetensors")

    def lock(self, model_id: str, key: str) -> contextlib.AbstractContextManager[None]:
        """Held while one run extracts an entry: a second run sharing the cache waits, then reads it."""
        return entry_lock(self.path(model_id, key))

    def load(self, model_id: str, key: str) -> Features | None:
        """The cached features, or None when absent, corrupt (checksum) or stored under another key."""
        path = self.path(model_id, key)
        if (entry := read_valid(path, "cache entry")) is None:
            return None
        if entry[1].get("key") != key:
            log.warning("cache entry %s was stored under another key; recomputing", path)
            return None
        return _features_of(*entry)

    def info(self, model_id: str, key: str) -> EntryInfo:
        """From the header of a stored entry only (checked against its metadata checksum and its key)."""
        from safetensors import safe_open

        path = self.path(model_id, key)
        meta = read_header(path)
        layers = json.loads(meta["layers"])
        with safe_open(str(path), framework="pt") as f:
            shapes = [f.get_slice(f"layer{i:03d}").get_shape() for i in range(len(layers))]
        return EntryInfo(shapes[0][0], layers, [s[1] for s in shapes], meta[CHECKSUM_FIELD])

    def save(self, model_id: str, key: str, feats: Features, doc: dict[str, Any]) -> Path:
        """Write atomically with a checksum: a reader sees the old entry or the complete new one."""
        path = self.path(model_id, key)
        tensors = {f"layer{i:03d}": t for i, t in enumerate(feats.tensors)}
        # stored as 'extra.NAME' tensors listed under 'extras' (the names of cache format 3)
        tensors |= {f"extra.{name}": t for name, t in feats.sample_scores.items()}
        write_entry(
            path,
            tensors,
            {
                "key": key,
                "layers": json.dumps(feats.layer_names),
                "extras": json.dumps(list(feats.sample_scores)),
                "key_doc": json.dumps(doc, sort_keys=True),
            },
        )
        return path


def extract(
    extractor: FeatureExtractor, samples: SampleSet, batch_size: int, desc: str = "", progress: bool = True
) -> Features:
    """Run the extractor over all samples in batches; check shapes and finiteness. On an out-of-memory error
    the batch size halves and the batch is retried (down to 1). Each output is copied into one float32 tensor
    per layer, allocated at the first batch: nothing of a batch outlives it (a pooled class token is a view of
    its block's whole token tensor), and no small block of it stays in the heap between one batch's freed
    activations and the next's, where it kept them from being reused (DINOv2-S's peak memory grew by 2.7 GB
    over 640 images so; benchmarks/bench_extract_memory.py)."""
    names = list(extractor.layer_names) + list(extractor.sample_score_names)
    tensors: list[torch.Tensor] = []
    extractor.prepare(samples)
    done, size = 0, batch_size
    with (
        torch.inference_mode(),
        tqdm(total=len(samples), desc=desc, disable=not progress, unit="sample", leave=False) as bar,
    ):
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
            if not tensors:
                tensors = [torch.empty((len(samples), *out.shape[1:]), dtype=torch.float32) for out in outs]
            for name, store, out in zip(names, tensors, outs, strict=True):
                if out.shape[0] != len(batch) or out.shape[1:] != store.shape[1:]:
                    raise ExtractionFailed(
                        f"{desc}: '{name}' gave shape {tuple(out.shape)} for a batch of "
                        f"{len(batch)}, expected {(len(batch), *store.shape[1:])}"
                    )
                store[done : done + len(batch)] = out
            done += len(batch)
            bar.update(len(batch))
    for name, t in zip(names, tensors, strict=True):
        if not torch.isfinite(t).all():
            raise ExtractionFailed(f"{desc}: '{name}' has NaN or infinite values")
    n_layers = len(extractor.layer_names)
    return Features(names[:n_layers], tensors[:n_layers], dict(zip(names[n_layers:], tensors[n_layers:], strict=True)))
