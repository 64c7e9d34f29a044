"""Samples with stable ids, and the content digest that keys the feature cache."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property

from PIL import Image


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

    def head(self, n: int | None) -> SampleSet:
        return self if n is None or n >= len(self) else SampleSet(self.samples[:n])

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
