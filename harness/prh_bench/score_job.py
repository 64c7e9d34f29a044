"""A scoring job: one metric under one condition over the models that have features, and its plan: models in
groups whose summaries fit the memory budget, tiles of groups, and the keys of every stored pair score, null and
summary (what they depend on: the metric, its parameters and version, the code that computes them, torch's
version, the preparation and the two models' feature checksums)."""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from .align import prepare
from .align.metric import Metric
from .code_digest import files_digest
from .errors import BadInput
from .features import EntryInfo
from .manifest import Calibration, Prepare

PAIR_FORMAT = 1  # of a stored pair's key document (ScoreJob.scoring)
DEFAULT_BUDGET_GIB = 4.0
Pair = tuple[str, str]


@functools.cache
def metric_code_digest(cls: type) -> str:
    """sha256 of the code a stored score depends on: every module of `prh_bench.align` (the preparation, the
    calibration and the helpers metrics share) and the source files that define the metric class and its
    bases (a plugin's own module). Editing any of them makes new entries even when no manifest version is
    bumped, so no stale score is ever read back."""
    align = Path(inspect.getfile(prepare)).parent
    return files_digest(
        [
            *align.glob("*.py"),
            *(
                Path(inspect.getfile(c))
                for c in cls.__mro__
                if c.__module__ not in ("builtins", "abc") and not c.__module__.startswith("typing")
            ),
        ]
    )


def doc_sha256(doc: object) -> str:
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
            raise BadInput(
                "calibrate.exchange: within_groups, but the data set's samples carry no groups (only "
                "loaders that know them, like photo_crops, set Sample.group); use auto or free"
            )
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
        raise BadInput(
            f"{self.metric.name}: the summaries of two models at N={n} take "
            f"{need / 2**30:.2f} GiB, over the memory budget of {self.budget / 2**30:g} GiB (--memory-budget); "
            f"at most N={lo} samples fit (--max-samples), or use a metric that needs no N x N matrix "
            "(the kNN family, linear CKA)"
        )

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
        return {
            "format": PAIR_FORMAT,
            "metric": self.metric.name,
            "params": self.params,
            "version": self.version,
            "code": metric_code_digest(type(self.metric)),
            "torch": torch.__version__,
            "prepare": self.prepare.model_dump(mode="json"),
        }

    @cached_property
    def scoring_id(self) -> str:
        return doc_sha256(self.scoring)

    def pair_key(self, a: Member, b: Member) -> str:
        """The same for (a, b) and (b, a): entries hold the pair with the smaller feature checksum first."""
        return doc_sha256([self.scoring_id, *sorted((a.info.digest, b.info.digest))])

    def summary_key(self, m: Member) -> str:
        return doc_sha256([self.scoring_id, "summaries", m.info.digest])

    def null_key(self, a: Member, b: Member) -> str:
        assert self.calibrate is not None
        # A free null keeps the key it had before shuffles could be grouped; a grouped one is keyed by its groups.
        grouped = [doc_sha256(self.sample_groups)] if self.exchange == "within_groups" else []
        return doc_sha256(
            [
                self.scoring_id,
                self.calibrate.model_dump(mode="json", exclude={"exchange"}),
                a.info.digest,
                b.info.digest,
                *grouped,
            ]
        )
