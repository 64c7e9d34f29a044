"""Peak memory of a run's pair stage as the zoo grows: 10 vs 40 synthetic models, side by side.

    python benchmarks/bench_memory.py            # cka and mutual_knn, 10 and 40 models (~7 min on 2 CPU cores)
    python benchmarks/bench_memory.py --quick    # 4 and 16 models

Each model has 13 layers of width 768 on N=1024 samples (40 MiB of float32 features), stored in a throwaway
feature cache as a run stores them. The pair stage (scoring.run_tiles, what `prh-bench run` does)
runs in a fresh process per configuration, and the benchmark prints its peak resident memory (max RSS, minus
the process's RSS before scoring) and time:

- budgeted: summaries held in groups that fit --budget GiB (default 2), features read one model at a time;
- one group: the budget set so high that all models form one group (what an unbounded pair stage holds).

CKA's per-layer summary is its centred kernel's upper block triangle in float64 (5 MiB here, 65 MiB per model,
which the pair stage multiplies in place), so it shows the bound; mutual k-NN's summary is N x k indices (1 MiB per model), so 40 models fit in one
group either way. Smaller groups cost time: each group's summaries are recomputed for every earlier group.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import torch
from fresh_process import in_fresh_process
from measured import recorded

from prh_bench.align import get_metric
from prh_bench.features import FeatureCache, Features
from prh_bench.manifest import Prepare
from prh_bench.pair_cache import PairCache
from prh_bench.score_job import Member, ScoreJob
from prh_bench.scoring import JobScores, run_tiles

N, LAYERS, WIDTH = 1024, 13, 768


def fill_cache(root: Path, n_models: int) -> None:
    latent = torch.randn(N, 64, generator=torch.Generator().manual_seed(0))
    cache = FeatureCache(root)
    for i in range(n_models):
        g = torch.Generator().manual_seed(i + 1)
        layers = [
            torch.relu(latent @ torch.randn(64, WIDTH, generator=g) + torch.randn(N, WIDTH, generator=g))
            for _ in range(LAYERS)
        ]
        cache.save(f"m{i:02d}", f"{i:064d}", Features([f"l{j}" for j in range(LAYERS)], layers), {})


def scoring_run(root: str, store: str, metric: str, n_models: int, budget: float) -> tuple:
    """Groups, seconds, peak and base max RSS (MiB) and a checksum of the scores: run it in a fresh process."""
    cache = FeatureCache(Path(root))
    members = tuple(Member(f"m{i:02d}", f"{i:064d}", cache.info(f"m{i:02d}", f"{i:064d}")) for i in range(n_models))
    m = get_metric(metric)
    params = m.params(**({"k": 10} if metric == "mutual_knn" else {}))
    job = ScoreJob(m, params, 1, Prepare(), None, members, int(budget * 2**30))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    done = JobScores(job, run_tiles(job, PairCache(Path(store)), lambda mem: cache.load(mem.id, mem.key), job.tiles()))
    seconds = time.perf_counter() - t0
    checksum = float(sum(done.pair(a.id, b.id).sum() for a, b in job.pairs()))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return len(job.groups), seconds, (peak - base) / 1024, base / 1024, checksum


def measure(root: Path, metric: str, n_models: int, budget: float) -> tuple:
    with tempfile.TemporaryDirectory() as store:
        return in_fresh_process(scoring_run, str(root), store, metric, n_models, budget)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="4 and 16 models")
    ap.add_argument("--budget", type=float, default=2.0, help="GiB of summaries the budgeted runs may hold")
    ap.add_argument("--record", action="store_true", help="also write the figures to docs/measured/")
    args = ap.parse_args()
    with recorded("bench_memory", args.record):
        report(args)


def report(args: argparse.Namespace) -> None:
    small, large = (4, 16) if args.quick else (10, 40)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; models of {LAYERS} layers x {WIDTH}, N={N}; "
        f"features {N * WIDTH * LAYERS * 4 / 2**20:.0f} MiB per model\n"
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        fill_cache(root, large)
        print(
            f"{'metric':11s} {'models':>6s} {'mode':10s} {'groups':>6s} {'seconds':>8s} {'peak MiB':>9s} "
            f"{'(base MiB)':>10s}  same scores"
        )
        for metric in ("cka", "mutual_knn"):
            for n in (small, large):
                rows = {
                    mode: measure(root, metric, n, budget)
                    for mode, budget in (("budgeted", args.budget), ("one group", 1e6))
                }
                same = (
                    rows["budgeted"][4] == rows["one group"][4]
                    or abs(rows["budgeted"][4] - rows["one group"][4]) < 1e-6
                )
                for mode, (groups, secs, peak, base, _) in rows.items():
                    print(f"{metric:11s} {n:6d} {mode:10s} {groups:6d} {secs:8.1f} {peak:9.0f} {base:10.0f}  {same}")
        print(
            f"\nbudget {args.budget} GiB: a budgeted run holds at most two groups of summaries (each at most half the"
            " budget) and one model's features."
        )


if __name__ == "__main__":
    main()
