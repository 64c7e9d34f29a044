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
group. A tile's missing pairs are computed together (`align.matrix.score_pairs`), summaries only of the
models they involve, at most two groups' at a time, features read one model at a time; a run killed while
scoring loses at most the tile in progress. Metrics with small summaries (the kNN family: N x k indices) keep
them in the cache too, so a model added later costs its own preparation and summaries, not everyone's.

Batching changes a pair's score by rounding at most: count metrics (the kNN family: mutual_knn, cycle_knn,
lcs_knn, edit_knn) give the same bits whatever the batch; float64 kernel, subspace and RSA scores agree
within 1e-12 (matrix products sum in a shape-dependent order). Once stored, a pair is read, never
recomputed, so every later run sees the same bits.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from .align import LayerScores, prepare, summarize_layers
from .align.calibrate import calibrate_summaries
from .align.matrix import score_pairs
from .align.metric import Metric
from .code_digest import files_digest
from .errors import BadInput, PrhBenchError
from .features import EntryInfo, Features
from .manifest import Calibration, Prepare
from .store import entry_lock, inside, read_valid, write_entry

PAIR_FORMAT = 1
DEFAULT_BUDGET_GIB = 4.0
Pair = tuple[str, str]


@functools.cache
def metric_code_digest(cls: type) -> str:
    """sha256 of the code a stored score depends on: every module of `prh_bench.align` (the preparation, the
    calibration and the helpers metrics share) and the source files that define the metric class and its
    bases (a plugin's own module). Editing any of them makes new entries even when no manifest version is
    bumped, so no stale score is ever read back."""
    align = Path(inspect.getfile(prepare)).parent
    return files_digest([*align.glob("*.py"), *(Path(inspect.getfile(c)) for c in cls.__mro__
                                              if c.__module__ not in ("builtins", "abc") and not c.__module__.startswith("typing"))])


def _sha(doc: object) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Member:
    """A model that has features under the job's condition: its id, its feature cache key and their header."""

    id: str
    key: str
    info: EntryInfo


@dataclass(frozen=True)
class ScoreJob:
    """One metric under one condition over the models that have features, with the memory budget in bytes."""

    metric: Metric
    params: dict[str, Any]
    version: int
    prepare: Prepare
    calibrate: Calibration | None
    members: tuple[Member, ...]
    budget: int
    reference: str | None = None  # the suite's; with calibrate.pairs = reference, only its pairs get nulls
    sample_groups: tuple[int, ...] | None = None  # each sample's group code (SampleSet.group_codes), if any

    @property
    def exchange(self) -> str:
        """What the null's shuffles exchange: 'within_groups' or 'free' (calibrate.exchange, 'auto' resolved)."""
        assert self.calibrate is not None
        if self.calibrate.exchange == "auto":
            return "within_groups" if self.sample_groups is not None else "free"
        if self.calibrate.exchange == "within_groups" and self.sample_groups is None:
            raise BadInput("calibrate.exchange: within_groups, but the data set's samples carry no groups (only "
                           "loaders that know them, like photo_crops, set Sample.group); use auto or free")
        return self.calibrate.exchange

    def layers(self, m: Member) -> int:
        return len(m.info.widths) + self.prepare.concat_layers

    def summary_nbytes(self, m: Member, n: int | None = None) -> int:
        """A model's summaries and the pair stage's working memory for them, as the metric estimates (at its
        own N, or at `n` samples)."""
        widths = m.info.widths + ([sum(m.info.widths)] if self.prepare.concat_layers else [])
        metric, n = self.metric, n or m.info.n
        return sum(metric.summary_nbytes(n, d, **self.params) + metric.work_nbytes(n, d, **self.params) for d in widths)

    def least_nbytes(self, n: int | None = None) -> int:
        """The memory no batching goes below: the summaries of the two largest models, which one tile holds."""
        return sum(sorted((self.summary_nbytes(m, n) for m in self.members), reverse=True)[:2])

    def check_fits(self) -> None:
        """Refuse, before any work, a job of a metric that holds N x N values (RBF CKA, kernel CKA, CKNNA's
        pair stage, RSA) whose two largest models' summaries exceed the budget, naming the N that would fit.
        Other metrics' summaries grow as N: a small budget only makes their groups smaller."""
        n = self.members[0].info.n if self.members else 0
        if len(self.members) < 2 or not self.metric.n_by_n(n, **self.params):
            return
        if (need := self.least_nbytes()) <= self.budget:
            return
        lo, hi = 1, self.members[0].info.n  # the largest N that fits, by bisection (needs grow with N)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if self.least_nbytes(mid) <= self.budget else (lo, mid - 1)
        raise BadInput(f"{self.metric.name}: the summaries of two models at N={n} take "
                       f"{need / 2**30:.2f} GiB, over the memory budget of {self.budget / 2**30:g} GiB (--memory-budget); "
                       f"at most N={lo} samples fit (--max-samples), or use a metric that needs no N x N matrix "
                       "(the kNN family, linear CKA)")

    @cached_property
    def groups(self) -> list[list[Member]]:
        """Consecutive members whose summaries fit half the budget (a model larger than that is alone)."""
        groups: list[list[Member]] = []
        used = 0
        for m in self.members:
            size = self.summary_nbytes(m)
            if not groups or used + size > self.budget // 2:
                groups.append([])
                used = 0
            groups[-1].append(m)
            used += size
        return groups

    def unordered_pairs(self) -> list[tuple[Member, Member]]:
        """Each pair of different members once, x before y in suite order: what the store holds."""
        ms = self.members
        return [(a, b) for n, a in enumerate(ms) for b in ms[n + 1 :]]

    def pairs(self) -> list[tuple[Member, Member]]:
        """The ordered model pairs reported, in suite order: each unordered pair once (x before y), then the
        reverse pairs when the metric is not symmetric."""
        pairs = self.unordered_pairs()
        return pairs + ([] if self.metric.symmetric else [(b, a) for a, b in pairs])

    def tiles(self) -> list[tuple[int, int]]:
        """Row by row; within row i, the other groups from the last down to i + 1, so that the group met last
        in a row is the next row's own group and its summaries carry over."""
        g = len(self.groups)
        return [(i, j) for i in range(g) for j in [i, *range(g - 1, i, -1)]]

    def tile_pairs(self, i: int, j: int) -> list[tuple[Member, Member]]:
        """The unordered model pairs of a tile, x before y in suite order."""
        if i == j:
            return [(a, b) for n, a in enumerate(self.groups[i]) for b in self.groups[i][n + 1 :]]
        return [(a, b) for a in self.groups[i] for b in self.groups[j]]

    def wants_null(self, a: Member, b: Member) -> bool:
        return self.calibrate is not None and (self.calibrate.pairs == "all" or self.reference in (a.id, b.id))

    def null_pairs(self, pairs: Iterable[tuple[Member, Member]]) -> list[tuple[Member, Member]]:
        """The ordered pairs that get a null: (x, y) shuffles y; (y, x) too when the metric is not symmetric."""
        pairs = list(pairs)
        both = pairs + ([] if self.metric.symmetric else [(b, a) for a, b in pairs])
        return [(a, b) for a, b in both if self.wants_null(a, b)]

    @cached_property
    def scoring(self) -> dict[str, Any]:
        """What a pair's scores depend on besides its two feature entries."""
        return {"format": PAIR_FORMAT, "metric": self.metric.name, "params": self.params, "version": self.version,
                "code": metric_code_digest(type(self.metric)), "torch": torch.__version__,
                "prepare": self.prepare.model_dump(mode="json")}

    @cached_property
    def scoring_id(self) -> str:
        return _sha(self.scoring)

    def pair_key(self, a: Member, b: Member) -> str:
        """The same for (a, b) and (b, a): entries hold the pair with the smaller feature checksum first."""
        return _sha([self.scoring_id, *sorted((a.info.digest, b.info.digest))])

    def summary_key(self, m: Member) -> str:
        return _sha([self.scoring_id, "summaries", m.info.digest])

    def null_key(self, a: Member, b: Member) -> str:
        assert self.calibrate is not None
        # A free null keeps the key it had before shuffles could be grouped; a grouped one is keyed by its groups.
        grouped = [_sha(self.sample_groups)] if self.exchange == "within_groups" else []
        return _sha([self.scoring_id, self.calibrate.model_dump(mode="json", exclude={"exchange"}), a.info.digest,
                     b.info.digest, *grouped])


class PairStore:
    """Pair entries under CACHE/pairs/METRIC/KEY.safetensors, nulls under CACHE/nulls/METRIC/KEY.safetensors,
    written atomically with a checksum (store.py)."""

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
        return entry_lock(inside(self.root, "pairs", job.metric.name, f"batch-{_sha(sorted(keys))}"))

    def load_scores(self, job: ScoreJob, a: Member, b: Member) -> dict[Pair, torch.Tensor] | None:
        """{(a, b): a's layers x b's, (b, a): b's x a's}, or None when not stored (or corrupt)."""
        path = self.scores_path(job, a, b)
        if (entry := read_valid(path, "pair scores")) is None:
            return None
        tensors, meta = entry
        x, y = (a, b) if meta["x"] == a.info.digest else (b, a)
        xy = tensors["xy"]
        yx = tensors["yx"] if "yx" in tensors else xy.T
        if tuple(xy.shape) != (job.layers(x), job.layers(y)) or tuple(yx.shape) != (job.layers(y), job.layers(x)):
            raise PrhBenchError(f"pair entry {path} holds {tuple(xy.shape)} scores for models of {job.layers(x)} and "
                                f"{job.layers(y)} layers; delete it and run again")
        return {(x.id, y.id): xy, (y.id, x.id): yx}

    def save_scores(self, job: ScoreJob, a: Member, b: Member, scores: dict[Pair, torch.Tensor]) -> None:
        x, y = sorted((a, b), key=lambda m: m.info.digest)
        tensors = {"xy": scores[(x.id, y.id)]} | ({} if job.metric.symmetric else {"yx": scores[(y.id, x.id)]})
        write_entry(self.scores_path(job, a, b), tensors,
                    {"x": x.info.digest, "y": y.info.digest, "scoring": json.dumps(job.scoring, sort_keys=True)})

    def load_null(self, job: ScoreJob, a: Member, b: Member) -> dict[str, Any] | None:
        entry = read_valid(self.null_path(job, a, b), "permutation null")
        return None if entry is None else {"exchange": "free"} | json.loads(entry[1]["calibration"])  # free: older

    def save_null(self, job: ScoreJob, a: Member, b: Member, row: dict[str, Any], null: torch.Tensor) -> None:
        assert job.calibrate is not None
        write_entry(self.null_path(job, a, b), {"null": null},
                    {"calibration": json.dumps(row, sort_keys=True), "scoring": json.dumps(job.scoring, sort_keys=True),
                     "calibrate": job.calibrate.model_dump_json()})


class SummaryStore:
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


class Summaries:
    """Per-layer summaries of the members of groups, read from the summary store or computed on demand from
    features read one model at a time; at most two groups' are held. The group asked for with keep=True stays
    (the row of tiles being computed); of the others only the last one stays, since it may be the next row's
    group."""

    def __init__(self, job: ScoreJob, load: Callable[[Member], Features], store: SummaryStore):
        self.job, self.load, self.store = job, load, store
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
                if (found := self.store.load(self.job, m)) is None:
                    feats = prepare(self.load(m).tensors, prep.clamp_quantile, prep.l2_normalize, prep.concat_layers,
                                    prep.clamp, prep.precision)
                    found = summarize_layers(self.job.metric, feats, **self.job.params)
                    self.store.save(self.job, m, found)
                out[m.id] = found
        return out


@dataclass
class TileResult:
    """What a tile's pairs read: scores in both orders, nulls by ordered pair, and how many were computed."""

    scores: dict[Pair, torch.Tensor] = field(default_factory=dict)
    nulls: dict[Pair, dict[str, Any]] = field(default_factory=dict)
    computed: int = 0
    nulls_computed: int = 0


def _read(job: ScoreJob, store: PairStore, pairs: list[tuple[Member, Member]], nulls: list[tuple[Member, Member]],
          out: TileResult) -> tuple[list[tuple[Member, Member]], list[tuple[Member, Member]]]:
    """Read what is stored into `out`; return the pairs and the nulls still missing."""
    missing = []
    for a, b in pairs:
        if (a.id, b.id) not in out.scores:
            if (found := store.load_scores(job, a, b)) is None:
                missing.append((a, b))
            else:
                out.scores |= found
    missing_nulls = []
    for a, b in nulls:
        if (a.id, b.id) not in out.nulls:
            if (row := store.load_null(job, a, b)) is None:
                missing_nulls.append((a, b))
            else:
                out.nulls[(a.id, b.id)] = row
    return missing, missing_nulls


def run_tile(job: ScoreJob, store: PairStore, summaries: Summaries, i: int, j: int, out: TileResult) -> None:
    """A tile's pairs and nulls, read from the store or computed and stored. Stored entries are read without
    a lock (a read-only cache works); missing ones are computed under a lock on exactly that set of entries,
    which a second run sharing the cache waits on and then finds stored."""
    pairs = job.tile_pairs(i, j)
    nulls = job.null_pairs(pairs)
    missing, missing_nulls = _read(job, store, pairs, nulls, out)
    if not missing and not missing_nulls:
        return
    keys = [job.pair_key(a, b) for a, b in missing] + [job.null_key(a, b) for a, b in missing_nulls]
    with store.lock(job, keys):
        missing, missing_nulls = _read(job, store, missing, missing_nulls, out)
        involved = {m.id for p in missing + missing_nulls for m in p}
        both = summaries.of(i, involved, keep=True)
        both = both | (summaries.of(j, involved) if j != i else {})
        computed = score_pairs(job.metric, both, [(a.id, b.id) for a, b in missing], job.params)
        for a, b in missing:
            store.save_scores(job, a, b, computed)
        out.scores |= computed
        out.computed += len(missing)
        for a, b in missing_nulls:
            assert job.calibrate is not None  # nulls are asked for only with calibrate
            cal = calibrate_summaries(job.metric, both[a.id], both[b.id],
                                      LayerScores(out.scores[(a.id, b.id)], job.metric.higher_is_better).best,
                                      job.params, a.info.n, job.calibrate.permutations, job.calibrate.seed,
                                      job.calibrate.alpha, job.sample_groups if job.exchange == "within_groups" else None)
            row = {"model_x": a.id, "model_y": b.id, "metric": job.metric.name, **cal.as_dict(),
                   "exchange": job.exchange}
            store.save_null(job, a, b, row, cal.null)
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
        return [{"model_x": a.id, "model_y": b.id}
                | {k: v for k, v in sorted(nulls[(a.id, b.id)].items()) if k not in ("model_x", "model_y")}
                for a, b in self.job.pairs() if (a.id, b.id) in nulls]


def run_tiles(job: ScoreJob, store: PairStore, load: Callable[[Member], Features], tiles: list[tuple[int, int]],
              on_done: Callable[[], None] = lambda: None) -> TileResult:
    """The given tiles in order (rows of tiles share their group's summaries)."""
    summaries, out = Summaries(job, load, SummaryStore(store.root)), TileResult()
    for i, j in tiles:
        run_tile(job, store, summaries, i, j, out)
        on_done()
    return out


def collect(job: ScoreJob, store: PairStore, computed: int = 0, nulls_computed: int = 0) -> JobScores:
    """Every pair and null of a job from the store, once other processes have computed them."""
    out = TileResult(computed=computed, nulls_computed=nulls_computed)
    pairs = job.unordered_pairs()
    missing, missing_nulls = _read(job, store, pairs, job.null_pairs(pairs), out)
    if missing or missing_nulls:
        a, b = (missing or missing_nulls)[0]
        raise PrhBenchError(f"the {job.metric.name} scores of {a.id} and {b.id} are missing from {store.root} after "
                            "scoring (a Ray node that does not share the cache folder?)")
    return JobScores(job, out)
