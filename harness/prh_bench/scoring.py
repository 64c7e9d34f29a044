"""The pair stage of a run: each model pair's scores stored on their own, computed in memory-bounded batches.

Storage and lookup are per model pair. An entry holds one pair's layer x layer scores under a key of what
they depend on: the metric, its parameters and version, the code that computes them (`metric_code_digest`),
torch's version, the preparation, and the two models' feature checksums (which bind the model, the data set,
its samples and the extraction code). Not the models' ids, the suite or the other models of the run: a pair
scored once is read back by every run and suite that needs it, so adding a model to a suite of N scores N
pairs, removing one scores none, and suites that share models on one data set share their pairs. A
permutation null is an entry of its own, keyed also by the calibration settings and the pair's order (the
later model's samples are shuffled).

Computation is batched. Models are split, in suite order, into groups whose summaries (and the pair stage's
working copies of them) fit half the memory budget; a tile is a group against itself or against a later
group. A tile's missing pairs are computed together (`align.pair_batches.score_pairs`), summaries only of the
models they involve, at most two groups' at a time, features read one model at a time; a run killed while
scoring loses at most the tile in progress. Metrics with small summaries (the kNN family: N x k indices) keep
them in the cache too, so a model added later costs its own preparation and summaries, not everyone's.

Batching changes a pair's score by rounding at most: count metrics (the kNN family: mutual_knn, cycle_knn,
lcs_knn, edit_knn) give the same bits whatever the batch; float64 kernel, subspace and RSA scores agree
within 1e-12 (matrix products sum in a shape-dependent order). Once stored, a pair is read, never
recomputed, so every later run sees the same bits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .align import LayerScores, prepare, summarize_layers
from .align.calibrate import calibrate_summaries
from .align.pair_batches import score_pairs
from .errors import PrhBenchError
from .features import Features
from .pair_cache import PairCache, SummaryCache
from .score_job import Member, Pair, ScoreJob


class Summaries:
    """Per-layer summaries of the members of groups, read from the summary cache or computed on demand from
    features read one model at a time; at most two groups' are held. The group asked for with keep=True stays
    (the row of tiles being computed); of the others only the last one stays, since it may be the next row's
    group."""

    def __init__(self, job: ScoreJob, load: Callable[[Member], Features], cache: SummaryCache):
        self.job, self.load, self.cache = job, load, cache
        self.row: tuple[int, dict[str, list[Any]]] | None = None
        self.last: tuple[int, dict[str, list[Any]]] | None = None

    def of(self, g: int, models: set[str], keep: bool = False) -> dict[str, list[Any]]:
        held = next((h for h in (self.row, self.last) if h is not None and h[0] == g), None)
        if held is None:
            self.last = None  # drop it before computing another group
            held = (g, {})
        if keep:
            self.row, self.last = held, (self.last if self.last is not held else None)
        else:
            self.last = held
        prep, out = self.job.prepare, held[1]
        for m in self.job.groups[g]:
            if m.id in models and m.id not in out:
                if (found := self.cache.load(self.job, m)) is None:
                    feats = prepare(
                        self.load(m).tensors,
                        prep.clamp_quantile,
                        prep.l2_normalize,
                        prep.concat_layers,
                        prep.clamp,
                        prep.precision,
                    )
                    found = summarize_layers(self.job.metric, feats, **self.job.params)
                    self.cache.save(self.job, m, found)
                out[m.id] = found
        return out


@dataclass
class TileResult:
    """What a tile's pairs read: scores in both orders, nulls by ordered pair, and how many were computed."""

    scores: dict[Pair, torch.Tensor] = field(default_factory=dict)
    nulls: dict[Pair, dict[str, Any]] = field(default_factory=dict)
    computed: int = 0
    nulls_computed: int = 0


def _read(
    job: ScoreJob,
    cache: PairCache,
    pairs: list[tuple[Member, Member]],
    nulls: list[tuple[Member, Member]],
    out: TileResult,
) -> tuple[list[tuple[Member, Member]], list[tuple[Member, Member]]]:
    """Read what is stored into `out`; return the pairs and the nulls still missing."""
    missing = []
    for a, b in pairs:
        if (a.id, b.id) not in out.scores:
            if (found := cache.load_scores(job, a, b)) is None:
                missing.append((a, b))
            else:
                out.scores |= found
    missing_nulls = []
    for a, b in nulls:
        if (a.id, b.id) not in out.nulls:
            if (row := cache.load_null(job, a, b)) is None:
                missing_nulls.append((a, b))
            else:
                out.nulls[(a.id, b.id)] = row
    return missing, missing_nulls


def run_tile(job: ScoreJob, cache: PairCache, summaries: Summaries, i: int, j: int, out: TileResult) -> None:
    """A tile's pairs and nulls, read from the cache or computed and stored. Stored entries are read without
    a lock (a read-only cache works); missing ones are computed under a lock on exactly that set of entries,
    which a second run sharing the cache waits on and then finds stored."""
    pairs = job.tile_pairs(i, j)
    nulls = job.null_pairs(pairs)
    missing, missing_nulls = _read(job, cache, pairs, nulls, out)
    if not missing and not missing_nulls:
        return
    keys = [job.pair_key(a, b) for a, b in missing] + [job.null_key(a, b) for a, b in missing_nulls]
    with cache.lock(job, keys):
        missing, missing_nulls = _read(job, cache, missing, missing_nulls, out)
        involved = {m.id for p in missing + missing_nulls for m in p}
        both = summaries.of(i, involved, keep=True)
        both = both | (summaries.of(j, involved) if j != i else {})
        computed = score_pairs(job.metric, both, [(a.id, b.id) for a, b in missing], job.params)
        for a, b in missing:
            cache.save_scores(job, a, b, computed)
        out.scores |= computed
        out.computed += len(missing)
        for a, b in missing_nulls:
            assert job.calibrate is not None  # nulls are asked for only with calibrate
            cal = calibrate_summaries(
                job.metric,
                both[a.id],
                both[b.id],
                LayerScores(out.scores[(a.id, b.id)], job.metric.higher_is_better).best,
                job.params,
                a.info.n,
                job.calibrate.permutations,
                job.calibrate.seed,
                job.calibrate.alpha,
                job.sample_groups if job.exchange == "within_groups" else None,
            )
            row = {
                "model_x": a.id,
                "model_y": b.id,
                "metric": job.metric.name,
                **cal.as_dict(),
                "exchange": job.exchange,
            }
            cache.save_null(job, a, b, row, cal.null)
            out.nulls[(a.id, b.id)] = row
        out.nulls_computed += len(missing_nulls)


@dataclass(frozen=True)
class JobScores:
    """A job's results: `pair(a, b)` is model a's layers x model b's; nulls as calibration rows."""

    job: ScoreJob
    result: TileResult

    def pair(self, a: str, b: str) -> torch.Tensor:
        return self.result.scores[(a, b)]

    def calibration(self) -> list[dict[str, Any]]:
        """The permutation nulls of the pairs that have one, in the order of `ScoreJob.pairs`, named as in
        this run (a stored null may have been computed by a run that named the models otherwise)."""
        nulls = self.result.nulls
        # One column order whether a null was computed now or read back (calibration.csv is then byte-identical).
        return [
            {"model_x": a.id, "model_y": b.id}
            | {k: v for k, v in sorted(nulls[(a.id, b.id)].items()) if k not in ("model_x", "model_y")}
            for a, b in self.job.pairs()
            if (a.id, b.id) in nulls
        ]


def run_tiles(
    job: ScoreJob,
    cache: PairCache,
    load: Callable[[Member], Features],
    tiles: list[tuple[int, int]],
    on_done: Callable[[], None] = lambda: None,
) -> TileResult:
    """The given tiles in order (rows of tiles share their group's summaries)."""
    summaries, out = Summaries(job, load, SummaryCache(cache.root)), TileResult()
    for i, j in tiles:
        run_tile(job, cache, summaries, i, j, out)
        on_done()
    return out


def collect(job: ScoreJob, cache: PairCache, computed: int = 0, nulls_computed: int = 0) -> JobScores:
    """Every pair and null of a job from the cache, once other processes have computed them."""
    out = TileResult(computed=computed, nulls_computed=nulls_computed)
    pairs = job.unordered_pairs()
    missing, missing_nulls = _read(job, cache, pairs, job.null_pairs(pairs), out)
    if missing or missing_nulls:
        a, b = (missing or missing_nulls)[0]
        raise PrhBenchError(
            f"the {job.metric.name} scores of {a.id} and {b.id} are missing from {cache.root} after "
            "scoring (a Ray node that does not share the cache folder?)"
        )
    return JobScores(job, out)
