"""A real language model's bits per byte on a real corpus, as the `bits_per_byte` task measures it, at several
passage lengths: each passage is scored from its own start, so shorter passages lose context and cost more bits.
The README's conventions table quotes these figures.

    python benchmarks/corpus_bpb.py                       # SmolLM2-135M (GGUF) on scikit-learn's descriptions
    python benchmarks/corpus_bpb.py --model smollm2-135m-q4 --dataset sklearn-descriptions --caps 500 2000 8000
"""

from __future__ import annotations

import argparse
import time

import torch

from prh_bench.context import load_samples
from prh_bench.features import extract
from prh_bench.manager import load_plugins
from prh_bench.registry import Registry


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-q4")
    ap.add_argument("--dataset", default="sklearn-descriptions")
    ap.add_argument("--caps", type=int, nargs="*", default=[500, 1000, 2000], help="passage_bytes to compare")
    args = ap.parse_args()
    reg = Registry.load(load_plugins())
    m, ds = reg.get(args.model), reg.get(args.dataset)
    lm = reg.plugins.backends[m.backend].load(m, torch.device("cpu"))
    task = reg.plugins.tasks["bits_per_byte"]
    print(f"{m.id} on {ds.id}, bits per byte (all bits over all bytes), by passage length:")
    for cap in args.caps:
        samples = load_samples(reg, ds.model_copy(update={"options": {**ds.options, "passage_bytes": cap}}), None)
        t0 = time.perf_counter()
        feats = extract(lm, samples, m.batch_size, progress=False)
        nbytes = sum(len(s.text.encode("utf-8")) for s in samples.samples)
        print(
            f"  passages <= {cap:>5} bytes: {len(samples.samples):>4} passages, {nbytes} bytes, "
            f"{task.evaluate(feats, samples):.4f} bits per byte ({time.perf_counter() - t0:.0f} s)"
        )


if __name__ == "__main__":
    main()
