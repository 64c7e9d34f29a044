"""The pair stage of a run: bounded memory, resumable block by block.

Models are split, in suite order, into groups whose per-layer summaries (and the pair stage's working copies
of them) fit half the memory budget; each metric estimates both from N and the layer widths. A block is a group
against itself or against a later group, and it is the unit of work: computed in one batched call, stored in
the cache as one checksummed file keyed by everything it depends on, and never recomputed once stored. At most
two groups' summaries are held at once, features are read from the cache one model at a time, and a run killed
while scoring loses at most the block in progress.

A block's scores depend slightly on what it batches (float64 matrix products sum in a shape-dependent order,
~1e-15 apart). Blocks are fixed by the suite's models and the budget alone, so a resumed run computes exactly
the blocks an uninterrupted one would, and its results are bitwise equal.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from .align import LayerScores, prepare, summarize_layers
from .align.calibrate import calibrate_summaries
from .align.matrix import score_models
from .align.metric import Metric
from .code_digest import files_digest
from .errors import PrhBenchError
from .features import EntryInfo, Features
from .manifest import Calibration, Prepare
from .store import entry_lock, inside, read_valid, write_entry

BLOCK_FORMAT = 2
DEFAULT_BUDGET_GIB = 4.0


@functools.cache
def metric_code_digest(cls: type) -> str:
    """sha256 of the code a stored score depends on: every module of `prh_bench.align` (the preparation, the
    calibration and the helpers metrics share) and the source files that define the metric class and its
    bases (a plugin's own module). Editing any of them makes new blocks even when no manifest version is
    bumped, so no stale score is ever read back."""
    align = Path(inspect.getfile(prepare)).parent
    return files_digest([*align.glob("*.py"), *(Path(inspect.getfile(c)) for c in cls.__mro__
                                              if c.__module__ not in ("builtins", "abc") and not c.__module__.startswith("typing"))])


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

    def layers(self, m: Member) -> int:
        return len(m.info.widths) + self.prepare.concat_layers

    def summary_nbytes(self, m: Member) -> int:
        """A model's summaries and the pair stage's working memory for them, as the metric estimates."""
        widths = m.info.widths + ([sum(m.info.widths)] if self.prepare.concat_layers else [])
        metric, n = self.metric, m.info.n
        return sum(metric.summary_nbytes(n, d, **self.params) + metric.work_nbytes(n, d, **self.params) for d in widths)

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

    def pairs(self) -> list[tuple[Member, Member]]:
        """The ordered model pairs scored, in suite order whatever the groups: each unordered pair once (x before
        y), then the reverse pairs when the metric is not symmetric."""
        ms = self.members
        pairs = [(a, b) for n, a in enumerate(ms) for b in ms[n + 1 :]]
        return pairs + ([] if self.metric.symmetric else [(b, a) for a, b in pairs])

    def blocks(self) -> list[tuple[int, int]]:
        """Row by row; within row i, the other groups from the last down to i + 1, so that the group scored
        last in a row is the next row's own group and its summaries carry over."""
        g = len(self.groups)
        return [(i, j) for i in range(g) for j in [i, *range(g - 1, i, -1)]]

    def block_key(self, i: int, j: int) -> str:
        doc = {"format": BLOCK_FORMAT, "metric": self.metric.name, "params": self.params, "version": self.version,
               "code": metric_code_digest(type(self.metric)), "torch": torch.__version__,
               "prepare": self.prepare.model_dump(mode="json"),
               "calibrate": self.calibrate.model_dump(mode="json") if self.calibrate else None,
               "reference": self.reference if self.calibrate and self.calibrate.pairs == "reference" else None,
               "x": [(m.id, m.info.digest) for m in self.groups[i]], "y": [(m.id, m.info.digest) for m in self.groups[j]]}
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Block:
    """Scores of group i's layers (rows) against group j's (columns); for a metric that is not symmetric and
    i != j, also j's against i's. Permutation nulls of the block's model pairs, when the suite asks."""

    xy: torch.Tensor
    yx: torch.Tensor | None = None
    calibration: list[dict[str, Any]] = field(default_factory=list)


class BlockStore:
    """Blocks under CACHE/scores/METRIC/KEY.safetensors, written atomically with a checksum."""

    def __init__(self, root: Path):
        self.root = root / "scores"

    def path(self, job: ScoreJob, i: int, j: int) -> Path:
        return inside(self.root, job.metric.name, f"{job.block_key(i, j)}.safetensors")

    def lock(self, job: ScoreJob, i: int, j: int) -> contextlib.AbstractContextManager[None]:
        return entry_lock(self.path(job, i, j))

    def load(self, job: ScoreJob, i: int, j: int) -> Block | None:
        if (entry := read_valid(self.path(job, i, j), "score block")) is None:
            return None
        tensors, meta = entry
        return Block(tensors["xy"], tensors.get("yx"), json.loads(meta["calibration"]))

    def save(self, job: ScoreJob, i: int, j: int, block: Block) -> None:
        tensors = {"xy": block.xy} | ({"yx": block.yx} if block.yx is not None else {})
        meta = {"metric": job.metric.name, "params": json.dumps(job.params, sort_keys=True),
                "x": json.dumps([m.id for m in job.groups[i]]), "y": json.dumps([m.id for m in job.groups[j]]),
                "calibration": json.dumps(block.calibration)}
        write_entry(self.path(job, i, j), tensors, meta)


class Summaries:
    """Per-layer summaries of groups, from features read one model at a time; at most two groups are held.
    The group asked for with keep=True stays (the row of blocks being computed); of the others only the last
    one stays, since it may be the next row's group."""

    def __init__(self, job: ScoreJob, load: Callable[[Member], Features]):
        self.job, self.load = job, load
        self.row: tuple[int, dict[str, list[Any]]] | None = None
        self.last: tuple[int, dict[str, list[Any]]] | None = None

    def of(self, g: int, keep: bool = False) -> dict[str, list[Any]]:
        for held in (self.row, self.last):
            if held is not None and held[0] == g:
                if keep:
                    self.row, self.last = held, None
                return held[1]
        self.last = None  # drop it before computing another group
        if keep:
            self.row = None
        out = {}
        prep = self.job.prepare
        for m in self.job.groups[g]:
            feats = prepare(self.load(m).tensors, prep.clamp_quantile, prep.l2_normalize, prep.concat_layers,
                            prep.clamp)
            out[m.id] = summarize_layers(self.job.metric, feats, **self.job.params)
        if keep:
            self.row = (g, out)
        else:
            self.last = (g, out)
        return out


def compute_block(job: ScoreJob, i: int, j: int, summaries: Summaries) -> Block:
    metric, params = job.metric, job.params
    sx = summaries.of(i, keep=True)
    if i == j:
        xy, yx, sy = score_models(metric, sx, params).matrix, None, sx
    else:
        sy = summaries.of(j)
        flat_x, flat_y = ([s for layers in group.values() for s in layers] for group in (sx, sy))
        if metric.symmetric:
            xy, yx = metric.cross_scores(flat_x, flat_y, params), None
        else:
            xy, yx = metric.cross_scores_both(flat_x, flat_y, params)
    block = Block(xy, yx)
    if job.calibrate is not None:
        view, both = ZooResult(job, {(i, j): block}), sx | sy
        for a, b in job_pairs(job, i, j):
            if job.calibrate.pairs == "reference" and job.reference not in (a.id, b.id):
                continue
            best = LayerScores(view.block(a.id, b.id), metric.higher_is_better).best
            cal = calibrate_summaries(metric, both[a.id], both[b.id], best, params, a.info.n,
                                      job.calibrate.permutations, job.calibrate.seed,
                                      job.calibrate.alpha)
            block.calibration.append({"model_x": a.id, "model_y": b.id, "metric": metric.name, **cal.as_dict()})
    return block


def job_pairs(job: ScoreJob, i: int, j: int) -> Iterator[tuple[Member, Member]]:
    """The ordered model pairs a block scores: each unordered pair once (x before y in suite order), and the
    reverse too when the metric is not symmetric."""
    if i == j:
        pairs = [(a, b) for n, a in enumerate(job.groups[i]) for b in job.groups[i][n + 1 :]]
    else:
        pairs = [(a, b) for a in job.groups[i] for b in job.groups[j]]
    yield from pairs
    if not job.metric.symmetric:
        yield from ((b, a) for a, b in pairs)


@dataclass(frozen=True)
class ZooResult:
    """The blocks of a job: `block(a, b)` is model a's layers x model b's."""

    job: ScoreJob
    blocks: dict[tuple[int, int], Block]

    @cached_property
    def where(self) -> dict[str, tuple[int, int, int]]:
        """model -> (group, first layer row within the group, end)."""
        out = {}
        for g, members in enumerate(self.job.groups):
            row = 0
            for m in members:
                out[m.id] = (g, row, row + self.job.layers(m))
                row += self.job.layers(m)
        return out

    def block(self, a: str, b: str) -> torch.Tensor:
        (ga, a0, a1), (gb, b0, b1) = self.where[a], self.where[b]
        if ga <= gb:
            return self.blocks[(ga, gb)].xy[a0:a1, b0:b1]
        if self.job.metric.symmetric:
            return self.blocks[(gb, ga)].xy[b0:b1, a0:a1].T
        yx = self.blocks[(gb, ga)].yx
        assert yx is not None
        return yx[a0:a1, b0:b1]

    def calibration(self) -> list[dict[str, Any]]:
        """The permutation nulls of every pair, in the order of `ScoreJob.pairs`."""
        rows = {(r["model_x"], r["model_y"]): r for block in self.blocks.values() for r in block.calibration}
        return [rows[(a.id, b.id)] for a, b in self.job.pairs() if (a.id, b.id) in rows]


def run_blocks(job: ScoreJob, store: BlockStore, load: Callable[[Member], Features],
               blocks: list[tuple[int, int]], on_done: Callable[[], None] = lambda: None) -> dict[tuple[int, int], Block]:
    """The given blocks, read from the store or computed and stored, in order (rows of blocks share their
    group's summaries). A second run sharing the cache waits on a block's lock, then finds it stored."""
    summaries = Summaries(job, load)
    out = {}
    for i, j in blocks:
        if (block := store.load(job, i, j)) is None:  # a stored block needs no lock (a read-only cache works)
            with store.lock(job, i, j):
                if (block := store.load(job, i, j)) is None:
                    block = compute_block(job, i, j, summaries)
                    store.save(job, i, j, block)
        out[(i, j)] = block
        on_done()
    return out


def collect(job: ScoreJob, store: BlockStore) -> ZooResult:
    """Every block of a job from the store, once other processes have computed them."""
    blocks = {}
    for i, j in job.blocks():
        block = store.load(job, i, j)
        if block is None:
            raise PrhBenchError(f"score block {i},{j} of {job.metric.name} is missing from {store.root} after scoring "
                                "(a Ray node that does not share the cache folder?)")
        blocks[(i, j)] = block
    return ZooResult(job, blocks)
