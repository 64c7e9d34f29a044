"""How much the PRH code's extraction settings move features, on a tiny random Llama (RoPE, like every paper LLM
but BLOOMZ) and 12 captions: prh-bench's `padding: batch` (per batch, on the right) against `padding: paper`
(every text on the left to the longest of all, as the paper's code), in bfloat16 and float32, and bfloat16 against
float32. The README's conventions table quotes these figures.

    python benchmarks/paper_padding.py      # seconds, CPU
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parents[1]))
from prh_bench.manager import load_plugins
from prh_bench.registry import Registry
from prh_bench.samples import Sample, SampleSet
from tests.test_zoo import CAPTIONS, model, paper_llm_features, run_extract, tiny_llama


def main() -> None:
    reg = Registry.load(load_plugins())
    folder = tiny_llama(Path(tempfile.mkdtemp()) / "llama")
    samples = SampleSet(tuple(Sample(id=f"t{i}", text=t) for i, t in enumerate(CAPTIONS)))
    m = model(
        backend="transformers-causal-lm",
        source=str(folder),
        modality="text",
        weights="pretrained",
        layers={"pool": "mean"},
        dtype="bfloat16",
        preprocess={"padding": "paper"},
    )
    runs = {
        (dtype, padding): run_extract(
            reg, m.model_copy(update={"dtype": dtype, "preprocess": {"padding": padding}}), samples
        )
        for dtype in ("bfloat16", "float32")
        for padding in ("paper", "batch")
    }
    reference = paper_llm_features(folder, CAPTIONS, torch.bfloat16)
    same = all(torch.equal(t, reference[:, i].float()) for i, t in enumerate(runs["bfloat16", "paper"].tensors))
    print(f"bfloat16, padding paper vs the paper code's features: {'bitwise equal' if same else 'DIFFERENT'}")
    for i, (a, b) in enumerate(zip(runs["bfloat16", "batch"].tensors, runs["bfloat16", "paper"].tensors, strict=True)):
        d = (a - b).abs()
        print(
            f"bfloat16, layer {i}: batch vs paper padding differ in {(d > 0).float().mean():.0%} of elements, "
            f"by at most {d.max():.2g}"
        )
    fp32 = [
        (a - b).abs().max().item()
        for a, b in zip(runs["float32", "batch"].tensors, runs["float32", "paper"].tensors, strict=True)
    ]
    bits = (
        runs["float32", "batch"].sample_scores["bits_per_byte"]
        - runs["float32", "paper"].sample_scores["bits_per_byte"]
    )
    print(
        f"float32: batch vs paper padding, features at most {max(fp32):.2g} apart, bits per byte {bits.abs().max():.2g}"
    )
    rel = max(
        ((a - b).abs().max() / a.abs().max()).item()
        for a, b in zip(runs["float32", "paper"].tensors, runs["bfloat16", "paper"].tensors, strict=True)
    )
    print(f"bfloat16 vs float32 (padding paper): at most {rel:.2g} of the largest value")


if __name__ == "__main__":
    main()
