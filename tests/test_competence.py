"""Language competence as the PRH paper measures it: a causal LM's bits per byte on a text corpus (an
OpenWebText sample) cut into passages, read through the real loader and backend from a local copy in the hub's
layout, checked against a plain computation, and correlated lower-is-better on a leaderboard."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from prh_bench.errors import BadInput
from prh_bench.features import extract
from prh_bench.manager import load_plugins
from prh_bench.manifest import DatasetManifest, ModelManifest
from prh_bench.registry import Registry
from prh_bench.samples import Sample, SampleSet

from .conftest import caption_pairs, cli, tiny_llama, write_yaml

pytestmark = pytest.mark.slow  # runs models end to end, or kills, races or spawns processes

#: three web-like documents: a long one that needs several passages, one with multi-byte characters, a short one
DOCUMENTS = [
    " ".join(f"The committee met on day {i} to discuss the budget, the roads and the new library." for i in range(40)),
    "Café society in Zürich: naïve façades, crème brûlée — and a 🙂 or two. " * 12,
    "Short note.",
]


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry.load(load_plugins())


def owt_copy(root: Path, docs: list[str] = DOCUMENTS) -> Path:
    """A local copy in the layout the registered manifest reads: plain_text/train-00000-of-00080.parquet with a
    `text` column (and a second shard the manifest must not read)."""
    (root / "plain_text").mkdir(parents=True)
    pd.DataFrame({"text": docs}).to_parquet(root / "plain_text" / "train-00000-of-00080.parquet")
    pd.DataFrame({"text": ["another shard"]}).to_parquet(root / "plain_text" / "train-00001-of-00080.parquet")
    return root


def local_owt(registry: Registry, root: Path) -> DatasetManifest:
    """The registered openwebtext-sample manifest with only its path moved to a local copy."""
    m = registry.get("openwebtext-sample")
    return m.model_copy(update={"options": {**m.options, "path": str(root)}})


def test_passages_cut_at_whitespace_within_the_byte_cap_and_join_back() -> None:
    from prh_bench.plugins.datasets.text import passages

    assert passages("ab cd ef", 5) == ["ab ", "cd ef"]
    assert passages("abcdefgh", 4) == ["abcd", "efgh"]  # no whitespace in reach: cut between characters
    assert passages("", 64) == []
    for text in DOCUMENTS:
        for cap in (4, 5, 13, 64, 2000):
            parts = passages(text, cap)
            assert "".join(parts) == text
            assert all(0 < len(p.encode("utf-8")) <= cap for p in parts)
    # a 4-byte emoji is never split: each passage decodes on its own
    assert passages("🙂🙂🙂", 5) == ["🙂", "🙂", "🙂"]
    with pytest.raises(ValueError, match="max_bytes must be >= 4"):
        passages("x", 3)


def test_openwebtext_manifest_reads_one_shard_of_a_local_copy_as_passages(registry: Registry, tmp_path: Path) -> None:
    pytest.importorskip("datasets")
    from prh_bench.plugins.datasets.images import hf_dataset

    s = hf_dataset(local_owt(registry, owt_copy(tmp_path / "owt")))
    by_doc: dict[str, list[str]] = {}
    for sample in s.samples:
        row, _part = sample.id.split("#")
        by_doc.setdefault(row, []).append(sample.text)
        assert sample.image is None and len(sample.text.encode("utf-8")) <= 2000
    assert ["".join(by_doc[f"train/{i}"]) for i in range(3)] == DOCUMENTS  # every byte once; shard 1 unread
    assert len(by_doc["train/0"]) == math.ceil(len(DOCUMENTS[0]) / 2000) and len(by_doc["train/2"]) == 1


@pytest.mark.parametrize("cap, why", [(10, "expected an integer >= 64"), ("2000", "expected an integer >= 64")])
def test_bad_passage_bytes_is_refused(registry: Registry, tmp_path: Path, cap: object, why: str) -> None:
    pytest.importorskip("datasets")
    from prh_bench.plugins.datasets.images import hf_dataset

    m = local_owt(registry, owt_copy(tmp_path / "owt"))
    with pytest.raises(BadInput, match=f"dataset 'openwebtext-sample': field 'options.passage_bytes': {why}"):
        hf_dataset(m.model_copy(update={"options": {**m.options, "passage_bytes": cap}}))


def causal_lm(folder: Path, **preprocess: object) -> ModelManifest:
    return ModelManifest.model_validate(
        {
            "kind": "model",
            "id": "tiny-llama",
            "version": 1,
            "backend": "transformers-causal-lm",
            "source": str(folder),
            "modality": "text",
            "weights": "pretrained",
            "dtype": "float32",
            "layers": {"pool": "mean"},
            "preprocess": preprocess,
        }
    )


def plain_bits(folder: Path, ids: list[int]) -> float:
    """The cross-entropy in bits of every token after the first given the ones before it, the text alone."""
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = lm(torch.tensor([ids])).logits[0, :-1]
    return torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:]), reduction="sum").item() / math.log(2)


def test_bits_per_byte_on_the_corpus_equals_all_bits_over_all_bytes(registry: Registry, tmp_path: Path) -> None:
    """The task's value is the corpus's bits over its bytes (passages weighted by their bytes), equal to a plain
    one-text-at-a-time computation, with per-batch padding and with the paper's left padding alike."""
    pytest.importorskip("datasets")
    from transformers import AutoTokenizer

    from prh_bench.plugins.datasets.images import hf_dataset

    folder = tiny_llama(tmp_path / "llama")
    m = local_owt(registry, owt_copy(tmp_path / "owt"))
    samples = hf_dataset(m.model_copy(update={"options": {**m.options, "passage_bytes": 200}}))
    tok = AutoTokenizer.from_pretrained(folder)
    bits = sum(plain_bits(folder, tok(s.text)["input_ids"]) for s in samples.samples)
    expected = bits / sum(len(s.text.encode("utf-8")) for s in samples.samples)
    task = registry.plugins.tasks["bits_per_byte"]
    assert not task.higher_is_better
    for padding in ("batch", "paper"):
        lm = causal_lm(folder, padding=padding)
        feats = extract(registry.plugins.backends[lm.backend].load(lm, torch.device("cpu")), samples, 4, progress=False)
        assert task.evaluate(feats, samples) == pytest.approx(expected, rel=1e-5), padding
    # a mean of per-passage ratios would differ: the weighting is by bytes
    ratios = feats.sample_scores["bits_per_byte"].double().mean().item()
    assert abs(ratios - expected) > 1e-3


def test_a_text_cut_at_max_length_divides_its_bits_by_the_bytes_it_kept(registry: Registry, tmp_path: Path) -> None:
    folder = tiny_llama(tmp_path / "llama")
    text = "the quick brown fox jumps over the lazy dog and runs far away"
    lm = causal_lm(folder, max_length=8)
    feats = extract(
        registry.plugins.backends[lm.backend].load(lm, torch.device("cpu")),
        SampleSet((Sample(id="t", text=text), Sample(id="s", text="a dog"))),
        2,
        progress=False,
    )
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    kept = tok(text, truncation=True, max_length=8)["input_ids"]  # [CLS] + 6 words + [SEP]
    spelled = " ".join(text.split()[:6])  # the words those 6 tokens spell
    got = feats.sample_scores["bits_per_byte"]
    assert got[0].item() == pytest.approx(plain_bits(folder, kept) / len(spelled.encode()), rel=1e-5)
    assert got[1].item() == pytest.approx(plain_bits(folder, tok("a dog")["input_ids"]) / 5, rel=1e-5)
    assert feats.sample_scores["bytes_scored"].tolist() == [len(spelled.encode()), 5]


def test_the_task_refuses_features_without_bits_per_byte(registry: Registry) -> None:
    from prh_bench.features import Features

    feats = Features(["l0"], [torch.zeros(2, 3)])
    samples = SampleSet((Sample(id="a", text="x"), Sample(id="b", text="y")))
    with pytest.raises(
        BadInput, match=r"no per-sample bits per byte and bytes scored .* only causal language models compute them"
    ):
        registry.plugins.tasks["bits_per_byte"].evaluate(feats, samples)


def test_a_suite_correlates_alignment_with_corpus_bits_per_byte_lower_is_better(tmp_path: Path) -> None:
    """Three random tiny Llamas (different seeds) and a random ViT on image-caption pairs, with the corpus probe:
    only the language models are run on the corpus, their bits per byte appear on the leaderboard, the
    correlation says lower is better, and it does not enter the tasks-solved count."""
    pytest.importorskip("datasets")
    folder = tiny_llama(tmp_path / "llama")
    caption_pairs(tmp_path, 10)
    owt = owt_copy(tmp_path / "owt")
    reg = tmp_path / "reg"
    write_yaml(
        reg / "pairs.yaml",
        f"kind: dataset\nid: pairs\nversion: 1\nloader: image_captions\n"
        f"modality: vision-text\noptions: {{path: {tmp_path / 'pairs.jsonl'}}}\n",
    )
    write_yaml(
        reg / "owt.yaml",
        f"kind: dataset\nid: local-owt\nversion: 1\nloader: hf_dataset\nmodality: text\n"
        f"options: {{path: {owt}, data_files: plain_text/train-00000-of-00080.parquet, "
        "text_column: text, passage_bytes: 300}\n",
    )
    for seed in (1, 2, 3):
        write_yaml(
            reg / f"lm{seed}.yaml",
            f"kind: model\nid: llama-{seed}\nversion: 1\nbackend: transformers-causal-lm\n"
            f"source: {folder}\nmodality: text\nweights: {{random: {seed}}}\n"
            "layers: {pool: mean}\n",
        )
    write_yaml(
        reg / "suite.yaml",
        "kind: suite\nid: corpus-competence\nversion: 1\ndataset: pairs\n"
        "models: [llama-1, llama-2, llama-3, vit-tiny-random]\nmetrics: [{name: mutual_knn, k: 3}]\n"
        "reference: vit-tiny-random\nprobes: [{dataset: local-owt, task: bits_per_byte}]\n",
    )
    result = cli("--registry", reg, "run", "--suite", "corpus-competence", "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    probes = pd.read_csv(tmp_path / "run" / "probes.csv")
    assert sorted(probes.model) == ["llama-1", "llama-2", "llama-3"]  # the ViT reads no text; no bits per byte
    assert (probes.task == "bits_per_byte").all() and probes.score.between(1, 30).all()
    assert probes.score.nunique() == 3
    result = cli(
        "--registry",
        reg,
        "leaderboard",
        "--suite",
        "corpus-competence",
        "--run",
        tmp_path / "run",
        "--out",
        tmp_path / "lb",
    )
    assert result.exit_code == 0, result.output
    table = pd.read_csv(next((tmp_path / "lb").rglob("leaderboard.csv")))
    assert "tasks_solved" not in table
    col = table.set_index("model")["bits_per_byte:local-owt"]
    assert (
        col.drop("vit-tiny-random").round(6).tolist()
        == probes.set_index("model").score.loc[col.drop("vit-tiny-random").index].round(6).tolist()
    )
    corr = pd.read_csv(next((tmp_path / "lb").rglob("correlations.csv")))
    row = corr[corr.score == "bits_per_byte:local-owt"]
    assert len(row) and (row.score_direction == "lower is better").all()
