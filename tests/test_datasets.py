"""Offline real-data loaders: stable ids, deterministic content, labels where the data has them."""

from __future__ import annotations

import pytest

from prh_bench.context import load_samples
from prh_bench.manager import load_plugins
from prh_bench.plugins.datasets.photos import crop_boxes
from prh_bench.registry import Registry


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry.load(load_plugins())


def test_pocket_photos_are_280_deterministic_crops(registry: Registry) -> None:
    a = load_samples(registry, registry.get("pocket-photos"), None)
    b = load_samples(registry, registry.get("pocket-photos"), None)
    assert len(a) == 280 and len(set(a.ids)) == 280
    assert a.ids[:3] == ["skimage:astronaut/s1-r0c0", "skimage:astronaut/s0.7-r0c0", "skimage:astronaut/s0.7-r0c1"]
    assert a.digest == b.digest
    assert {s.image.size for s in a.samples} == {(256, 256)} and {s.image.mode for s in a.samples} == {"RGB"}


def test_crop_boxes_cover_corners_and_centre() -> None:
    boxes = dict(crop_boxes(400, 300, [1.0, 0.5], [1, 2]))
    assert boxes["s1-r0c0"] == (50, 0, 350, 300)  # centred square of the short side
    assert boxes["s0.5-r0c0"] == (0, 0, 150, 150) and boxes["s0.5-r1c1"] == (250, 150, 400, 300)


def test_digits_have_labels(registry: Registry) -> None:
    s = load_samples(registry, registry.get("digits"), None)
    assert len(s) == 1797
    assert sorted({x.label for x in s.samples}) == list(range(10))
    assert s.samples[0].id == "digits/0000" and s.samples[0].label == 0


def test_glove_words_are_real_words(registry: Registry) -> None:
    s = load_samples(registry, registry.get("glove-words"), None)
    assert len(s) == 300
    assert all(x.text.isalpha() and len(x.text) >= 3 for x in s.samples)
    assert s.head(5).ids == s.ids[:5]
