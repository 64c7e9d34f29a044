"""The pair stage's disk stores: each model pair's scores and permutation null, and the small summaries of a model
(the kNN family's neighbour lists), as checksummed entries of the cache keyed by their job (score_job.py)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import torch

from .cache_files import entry_lock, inside, read_valid, write_entry
from .errors import PrhBenchError
from .score_job import Member, Pair, ScoreJob, doc_sha256


class PairCache:
    """Pair entries under CACHE/pairs/METRIC/KEY.safetensors, nulls under CACHE/nulls/METRIC/KEY.safetensors,
    written atomically with a checksum (cache_files.py)."""

    def __init__(self, root: Path):
        self.root = root

    def _path(self, kind: str, job: ScoreJob, key: str) -> Path:
        return inside(self.root, kind, job.metric.name, f"{key}.safetensors")

    def scores_path(self, job: ScoreJob, a: Member, b: Member) -> Path:
        return self._path("pairs", job, job.pair_key(a, b))

    def null_path(self, job: ScoreJob, a: Member, b: Member) -> Path:
        return self._path("nulls", job, job.null_key(a, b))

    def lock(self, job: ScoreJob, keys: list[str]) -> contextlib.AbstractContextManager[None]:
        """Held while one run computes these entries: a second run wanting the same ones waits, then reads."""
        return entry_lock(inside(self.root, "pairs", job.metric.name, f"batch-{doc_sha256(sorted(keys))}"))

    def load_scores(self, job: ScoreJob, a: Member, b: Member) -> dict[Pair, torch.Tensor] | None:
        """{(a, b): a's layers x b's, (b, a): b's x a's}, or None when not stored (or corrupt)."""
        path = self.scores_path(job, a, b)
        if (entry := read_valid(path, "pair scores")) is None:
            return None
        tensors, meta = entry
        x, y = (a, b) if meta["x"] == a.info.digest else (b, a)
        xy = tensors["xy"]
        yx = tensors.get("yx", xy.T)
        if tuple(xy.shape) != (job.layers(x), job.layers(y)) or tuple(yx.shape) != (job.layers(y), job.layers(x)):
            raise PrhBenchError(
                f"pair entry {path} holds {tuple(xy.shape)} scores for models of {job.layers(x)} and "
                f"{job.layers(y)} layers; delete it and run again"
            )
        return {(x.id, y.id): xy, (y.id, x.id): yx}

    def save_scores(self, job: ScoreJob, a: Member, b: Member, scores: dict[Pair, torch.Tensor]) -> None:
        x, y = sorted((a, b), key=lambda m: m.info.digest)
        tensors = {"xy": scores[(x.id, y.id)]} | ({} if job.metric.symmetric else {"yx": scores[(y.id, x.id)]})
        write_entry(
            self.scores_path(job, a, b),
            tensors,
            {"x": x.info.digest, "y": y.info.digest, "scoring": json.dumps(job.scoring, sort_keys=True)},
        )

    def load_null(self, job: ScoreJob, a: Member, b: Member) -> dict[str, Any] | None:
        entry = read_valid(self.null_path(job, a, b), "permutation null")
        return None if entry is None else {"exchange": "free"} | json.loads(entry[1]["calibration"])  # free: older

    def save_null(self, job: ScoreJob, a: Member, b: Member, row: dict[str, Any], null: torch.Tensor) -> None:
        assert job.calibrate is not None
        write_entry(
            self.null_path(job, a, b),
            {"null": null},
            {
                "calibration": json.dumps(row, sort_keys=True),
                "scoring": json.dumps(job.scoring, sort_keys=True),
                "calibrate": job.calibrate.model_dump_json(),
            },
        )


class SummaryCache:
    """A model's summaries under CACHE/summaries/METRIC/KEY.safetensors, for metrics whose summaries are small
    (`Metric.summaries_to_tensors`): a model's later pairs then read them instead of its features."""

    def __init__(self, root: Path):
        self.root = root

    def path(self, job: ScoreJob, m: Member) -> Path:
        return inside(self.root, "summaries", job.metric.name, f"{job.summary_key(m)}.safetensors")

    def load(self, job: ScoreJob, m: Member) -> list[Any] | None:
        if (entry := read_valid(self.path(job, m), "summaries")) is None:
            return None
        return job.metric.summaries_from_tensors(entry[0])

    def save(self, job: ScoreJob, m: Member, summaries: list[Any]) -> None:
        if (tensors := job.metric.summaries_to_tensors(summaries)) is not None:
            write_entry(self.path(job, m), tensors, {"scoring": json.dumps(job.scoring, sort_keys=True)})
