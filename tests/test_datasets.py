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
    assert len(s.subset(5)) == 5 and set(s.subset(5).ids) < set(s.ids)


def test_vtab_splits_are_read_from_their_folders_and_the_probe_fits_train_scores_val(tmp_path) -> None:
    """The PRH paper fits each VTAB probe on the train split and scores it on val, each at most 10,000 images;
    prh-bench split one train subset 50/50. Here val's labels are the mirror of train's: a probe fitted on train
    scores 0 on val (a 50/50 split of the pooled images would score about 0.5)."""
    import numpy as np
    import torch
    from PIL import Image

    from prh_bench.errors import BadInput
    from prh_bench.features import Features
    from prh_bench.manifest import DatasetManifest
    from prh_bench.plugins.datasets.images import image_folder
    from prh_bench.plugins.tasks import LinearProbe

    for split, count in (("train", 6), ("val", 2)):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (8, 8), (i * 30, 0, 0)).save(tmp_path / split / cls / f"{i}.png")
    ds = DatasetManifest(
        kind="dataset",
        id="vt",
        version=1,
        loader="image_folder",
        modality="vision",
        options={"path": str(tmp_path), "labels": "folder", "splits": ["train", "val"], "limit": 5},
    )
    s = image_folder(ds)
    assert [x.split for x in s.samples].count("train") == 5 and [x.split for x in s.samples].count("val") == 4
    assert s.samples[0].id.startswith("train/") and s.samples[-1].id.startswith("val/dog/")
    assert {(x.id.split("/")[1], x.label) for x in s.samples} == {("cat", 0), ("dog", 1)}
    assert (
        s.digest != image_folder(ds.model_copy(update={"options": {**ds.options, "splits": ["val", "train"]}})).digest
    )
    # Features: +1 or -1 by label on train, mirrored on val.
    sign = np.array([(1 if x.label else -1) * (1 if x.split == "train" else -1) for x in s.samples], dtype=np.float32)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(np.c_[sign * 3, rng.standard_normal((len(s), 2)).astype(np.float32)])
    feats = Features(["f"], [x])
    probe = LinearProbe()
    assert probe.evaluate(feats, s, **probe.params(fit_split="train", score_split="val")) == 0.0
    with pytest.raises(BadInput, match="no samples of split 'train' or 'test'"):
        probe.evaluate(feats, s, **probe.params(fit_split="train", score_split="test"))
    with pytest.raises(BadInput, match="give both fit_split and score_split"):
        probe.evaluate(feats, s, **probe.params(fit_split="train"))
    for bad in (["train", "train"], ["../x"], "train", []):
        with pytest.raises(BadInput, match=r"field 'options.splits'"):
            image_folder(ds.model_copy(update={"options": {**ds.options, "splits": bad}}))
    with pytest.raises(BadInput, match=r"no folder .*test"):
        image_folder(ds.model_copy(update={"options": {**ds.options, "splits": ["train", "test"]}}))
