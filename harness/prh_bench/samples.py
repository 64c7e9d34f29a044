"""Samples with stable ids, and the content digest that keys the feature cache."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from PIL import Image


def group_codes(groups: Sequence[object]) -> np.ndarray:
    """Each sample's group as 0..G-1 in order of appearance; a sample without a group (None, NaN, '') is its own."""
    codes, seen = np.empty(len(groups), dtype=np.int64), dict[tuple[str, object], int]()
    for i, g in enumerate(groups):
        alone = g is None or g == "" or (isinstance(g, float) and math.isnan(g))
        codes[i] = seen.setdefault(("sample", i) if alone else ("group", g), len(seen))
    return codes


@dataclass(frozen=True)
class Sample:
    """One item of a data set. An image-caption pair carries both; each model reads its own modality."""

    id: str
    image: Image.Image | None = None
    text: str | None = None
    label: int | None = None
    split: str | None = None  # the data set's own split (VTAB's train and val), when it has them
    #: the unit the sample is not independent of others within (the photograph a crop comes from), when the
    #: loader knows it: resampling and tests then draw whole groups. Not content: the feature key ignores it.
    group: str | None = None


@dataclass(frozen=True)
class SampleSet:
    samples: tuple[Sample, ...]

    def __post_init__(self) -> None:
        ids = [s.id for s in self.samples]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise ValueError(f"sample ids must be unique; {dup!r} repeats")

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def ids(self) -> list[str]:
        return [s.id for s in self.samples]

    @cached_property
    def group_codes(self) -> tuple[int, ...] | None:
        """Each sample's group as 0..G-1 (a sample without one is its own), or None when no two samples share a
        group (then there is no structure to respect: a shuffle within groups would move nothing)."""
        codes = group_codes([s.group for s in self.samples])
        return tuple(codes.tolist()) if len(codes) and codes.max() + 1 < len(codes) else None

    def subset(self, n: int | None, seed: int = 0) -> SampleSet:
        """n samples drawn with `seed` across the whole set, in their order: the first rows are often one
        photograph's crops or one class. Where samples carry groups, each group gives its share of n (largest
        remainders round, ties drawn), so a subset of crops spans the photographs."""
        if n is None or n >= len(self):
            return self
        rng = np.random.default_rng(seed)
        codes = group_codes([s.group for s in self.samples])
        sizes = np.bincount(codes)
        share = sizes * n / len(self)
        take = np.floor(share).astype(int)
        shuffled = rng.permutation(len(sizes))  # equal remainders (samples without groups: all) drawn at random
        take[shuffled[np.argsort(-(share - take)[shuffled], kind="stable")][: n - take.sum()]] += 1
        keep = np.concatenate(
            [rng.choice(np.flatnonzero(codes == g), size=t, replace=False) for g, t in enumerate(take) if t]
        )
        return SampleSet(tuple(self.samples[i] for i in np.sort(keep)))

    @cached_property
    def digest(self) -> str:
        """sha256 over ids and content, so edited data never reuses stale features. Every field goes in with its
        length, so no two samples hash alike by moving characters between fields (text 'x' with label 12 and
        text 'x1' with label 2 did)."""
        h = hashlib.sha256()

        def field(tag: str, data: bytes) -> None:
            h.update(f"{tag}{len(data)}:".encode())
            h.update(data)

        for s in self.samples:
            field("id", s.id.encode())
            if s.image is not None:
                field("image", f"{s.image.mode}{s.image.size}".encode())
                field("pixels", s.image.tobytes())
            if s.text is not None:
                field("text", s.text.encode())
            field("label", str(s.label).encode())
            if s.split is not None:
                field("split", s.split.encode())
        return h.hexdigest()
