"""Extraction's peak memory does not grow with the number of samples: the growth of a fresh process's peak
resident memory over one extraction, and its time, at two N, for a ViT (DINOv2-S) and a CNN (EfficientNet-Lite2)
on the Twemoji icons (both need requirements-zoo-vision.txt). Before `extract` copied each batch into
preallocated tensors, DINOv2-S's growth rose with N (by 2.7 GB at N = 640).

    python benchmarks/bench_extract_memory.py [--sizes 160 640] [--models dinov2-s efficientnet-lite2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from measured import recorded

CHILD = """
import json, resource, sys, time, torch
from prh_bench.context import load_samples
from prh_bench.features import extract
from prh_bench.manager import load_plugins
from prh_bench.registry import Registry
reg = Registry.load(load_plugins())
samples = load_samples(reg, reg.get("twemoji-names"), int(sys.argv[1]))
m = reg.get(sys.argv[2])
ext = reg.plugins.backends[m.backend].load(m, torch.device("cpu"))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
extract(ext, samples, m.batch_size, progress=False)
print(json.dumps({"seconds": time.perf_counter() - t0,
                  "growth_mib": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs=2, default=[160, 640])
    ap.add_argument("--models", nargs="*", default=["dinov2-s", "efficientnet-lite2"])
    ap.add_argument("--record", action="store_true", help="also write the figures to docs/measured/")
    args = ap.parse_args()
    with recorded("bench_extract_memory", args.record):
        report(args)


def report(args: argparse.Namespace) -> None:
    env = {**os.environ, "PRH_BENCH_PLUGINS": ""}
    for model in args.models:
        rows = []
        for n in args.sizes:
            out = subprocess.run(
                [sys.executable, "-c", CHILD, str(n), model], env=env, check=True, capture_output=True, text=True
            ).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(
                f"{model}, N = {n}: {rows[-1]['seconds']:.1f} s, peak memory grew by {rows[-1]['growth_mib']:.0f} MiB"
            )
        print(
            f"{model}: N x{args.sizes[1] / args.sizes[0]:.0f} -> time x{rows[1]['seconds'] / rows[0]['seconds']:.2f}, "
            f"memory growth x{rows[1]['growth_mib'] / max(rows[0]['growth_mib'], 1):.2f}"
        )


if __name__ == "__main__":
    main()
