"""Extraction's resident memory and time with glibc's default malloc and with the fixed 4 MB mmap threshold that
`extract` sets (heap.py), side by side: each in a fresh process, DINOv2-S (needs requirements-zoo-vision.txt) or
a random DINOv2-S architecture on the Twemoji icons.

    python benchmarks/bench_heap.py --n 640 [--model dinov2-s-random]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CHILD = """
import json, resource, sys, time, torch
from prh_bench import heap
from prh_bench.context import load_samples
from prh_bench.features import extract
from prh_bench.manager import load_plugins
from prh_bench.registry import Registry
if sys.argv[3] == "default":
    heap.map_large_blocks = lambda: False  # leave glibc's dynamic threshold alone
import prh_bench.features as f
f.map_large_blocks = heap.map_large_blocks
reg = Registry.load(load_plugins())
samples = load_samples(reg, reg.get("twemoji-names"), int(sys.argv[1]))
m = reg.get(sys.argv[2])
ext = reg.plugins.backends[m.backend].load(m, torch.device("cpu"))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
extract(ext, samples, 32, progress=False)
print(json.dumps({"seconds": time.perf_counter() - t0,
                  "growth_mib": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=640)
    ap.add_argument("--model", default="dinov2-s")
    args = ap.parse_args()
    env = {**os.environ, "PRH_BENCH_PLUGINS": ""}
    env.pop("MALLOC_MMAP_THRESHOLD_", None)
    rows = {}
    for mode in ("default", "mapped"):
        out = subprocess.run([sys.executable, "-c", CHILD, str(args.n), args.model, mode], env=env, check=True,
                             capture_output=True, text=True).stdout
        rows[mode] = json.loads(out.strip().splitlines()[-1])
        print(f"{mode:>8}: {rows[mode]['seconds']:.1f} s, peak memory grew by {rows[mode]['growth_mib']:.0f} MiB")
    print(f"mapped / default: time {rows['mapped']['seconds'] / rows['default']['seconds']:.2f}x, "
          f"memory growth {rows['mapped']['growth_mib'] / max(rows['default']['growth_mib'], 1):.2f}x")


if __name__ == "__main__":
    main()
