"""Scoring on a shared node: torch thread settings measured side by side, alone and beside busy processes.

    python benchmarks/bench_threads.py            # about 2-4 minutes on 2 CPU cores
    python benchmarks/bench_threads.py --quick    # one repeat
    python benchmarks/bench_threads.py --pocket   # also the pocket suite's own scoring stage (+ about 10 minutes)

The workload is a pair stage: every layer pair of every model pair scored with mutual k-NN (k = 10) and linear
CKA, at pocket's size (8 models of 6 layers of width 256, N = 280) and at a larger N (4 models of 4 layers of
width 768, N = 2048), each setting in a fresh process. Each setting
runs alone, then beside as many busy processes (pure-Python loops) as the machine has CPUs, as on a shared node.
Settings: torch's default (one thread per CPU; OpenMP's idle threads spin a while before they sleep),
prh-bench's default (the same threads with OMP_WAIT_POLICY=PASSIVE: an idle thread sleeps at once instead of
taking a CPU another process needs), and one thread (`--threads 1`). With --pocket, also the pocket suite's own
scoring stage (pairs and permutation nulls) from a warm feature cache and an empty pair store: on 2 cores
(2026-12-02, `--quick --pocket`) it took 15.1 / 18.8 / 16.1 s alone and 102 / 23.5 / 20.2 s beside two busy
processes (torch default / PASSIVE / one thread). Prints seconds (best of --repeat) and each as a multiple of
torch's default alone."""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

SYNTHETIC = """
import sys, time, torch
from prh_bench.align import score_layers
n, width, count, layers = map(int, sys.argv[1:])
torch.manual_seed(0)
models = [[torch.randn(n, width) for _ in range(layers)] for _ in range(count)]
start = time.perf_counter()
for i in range(count):
    for j in range(i + 1, count):
        score_layers("mutual_knn", models[i], models[j], k=10)
        score_layers("cka", models[i], models[j])
print(time.perf_counter() - start)
"""
#: the pocket suite's own scoring stage (pairs and nulls), its features read from the cache given
POCKET = """
import sys
from pathlib import Path
from prh_bench.features import FeatureCache
from prh_bench.manager import load_plugins
from prh_bench.registry import Registry
from prh_bench.runner import run_suite
print(run_suite(Registry.load(load_plugins()), "pocket", FeatureCache(Path(sys.argv[1])), progress=False).seconds["scoring"])
"""
#: (N, width, models, layers): pocket's size, and a larger N where one op is worth several threads
SIZES = {"N=280, 8 models x 6 layers of 256": (280, 256, 8, 6), "N=2048, 4 models x 4 layers of 768": (2048, 768, 4, 4)}

SETTINGS = {
    "torch default": {},
    "prh-bench default (OMP_WAIT_POLICY=PASSIVE)": {"OMP_WAIT_POLICY": "PASSIVE"},
    "--threads 1": {"OMP_NUM_THREADS": "1"},
}


def python(code: str, args: list[str], env: dict[str, str]) -> float:
    """The seconds a fresh process reports, under `env` (torch reads OpenMP settings once, at import)."""
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    done = subprocess.run(
        [sys.executable, "-c", code, *args], env=base | env, check=True, capture_output=True, text=True
    )
    return float(done.stdout.split()[-1])


def synthetic(size: tuple[int, ...]) -> Callable[[dict[str, str]], float]:
    return lambda env: python(SYNTHETIC, [str(x) for x in size], env)


def pocket(work: Path) -> Callable[[dict[str, str]], float]:
    """Pocket's scoring from an empty pair store and a warm feature cache (filled once here: minutes)."""
    warm = work / "warm"
    python(POCKET, [str(warm)], {})
    runs = iter(range(10**6))

    def measure(env: dict[str, str]) -> float:
        fresh = work / f"run{next(runs)}"
        shutil.copytree(warm / "features", fresh / "features")
        return python(POCKET, [str(fresh)], env)

    return measure


def busy() -> None:
    while True:
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--pocket", action="store_true", help="also pocket's own scoring stage (about 10 more minutes)")
    args = ap.parse_args()
    repeat = 1 if args.quick else args.repeat
    cpus = len(os.sched_getaffinity(0))
    work = Path(tempfile.mkdtemp(prefix="bench-threads-"))
    cases = {name: synthetic(size) for name, size in SIZES.items()}
    if args.pocket:
        cases["pocket's scoring stage (once each)"] = pocket(work)
    rows = []
    for load in ("alone", f"beside {cpus} busy processes"):
        hogs = [multiprocessing.Process(target=busy, daemon=True) for _ in range(cpus if load != "alone" else 0)]
        for h in hogs:
            h.start()
        time.sleep(0.5)
        try:
            rows += [
                (case, load, name, min(measure(env) for _ in range(1 if case.startswith("pocket") else repeat)))
                for case, measure in cases.items()
                for name, env in SETTINGS.items()
            ]
        finally:
            for h in hogs:
                h.terminate()
    shutil.rmtree(work, ignore_errors=True)
    print(f"{cpus} CPUs; every layer pair of every model pair, mutual_knn (k=10) and linear cka; best of {repeat}")
    print(f"{'case':<36} {'load':<26} {'setting':<46} {'seconds':>8} {'x torch default alone':>22}")
    for case, load, name, s in sorted(rows, key=lambda r: list(cases).index(r[0])):
        ref = next(r[3] for r in rows if r[0] == case)
        print(f"{case:<36} {load:<26} {name:<46} {s:8.2f} {s / ref:22.2f}")


if __name__ == "__main__":
    main()
