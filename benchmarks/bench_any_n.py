"""Alignment at any N: mutual k-NN through the engine against faiss's exact flat search, and its growth with N.

    python benchmarks/bench_any_n.py                      # N = 100,000 against faiss, then N = 1k .. 64k
    python benchmarks/bench_any_n.py --n 32000 --sizes 1000 4000 16000   # smaller
    python benchmarks/bench_any_n.py --n 0 --sizes --approx 100000 1000000 [--nprobe 8]   # approximate (faiss IVF)

Two models of 2 layers x 256 (latent-structured random features, prepared as a run prepares them: L2-normalised
rows), mutual_knn with k = 10 through `score_layers` (the engine's API: summaries by blocked exact search, then
the pair stage), against faiss.IndexFlatIP searching the k + 1 nearest of every row of the same 4 prepared
layers (exact, what the engine's summaries compute). Each measurement runs in a fresh process (benchmarks/
fresh_process.py) and reports its seconds and peak resident memory, sampled while it works: the process's, and
how much of it the work added (the features, made before, are not). Needs faiss-cpu (pip install faiss-cpu, or
the project's [faiss] extra).

The growth table and log-log plot (prh-runs/bench_any_n.png) time the engine alone at each N; the slope of
log(the work's memory) against log(N) is fitted over the sizes where it is above 64 MiB (below, allocator noise).
"""

from __future__ import annotations

import argparse
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from fresh_process import in_fresh_process

N_DEFAULT, WIDTH, LAYERS, K = 100_000, 256, 2, 10


def layers(n: int) -> list[list[torch.Tensor]]:
    """Two models' prepared layers: shared latent structure plus noise, so their neighbours partly agree."""
    from prh_bench.align import prepare

    g = torch.Generator().manual_seed(0)
    latent = torch.randn(n, 32, generator=g)
    return [
        prepare(
            [
                torch.relu(latent @ torch.randn(32, WIDTH, generator=g) + torch.randn(n, WIDTH, generator=g))
                for _ in range(LAYERS)
            ]
        )
        for _ in range(2)
    ]


def measured(work: Callable[[], Any]) -> dict:
    """Seconds of `work`, and its peak resident memory sampled every 5 ms: in all (MiB) and above what the
    process held when it started (the features, torch, faiss). The high-water mark of the process (ru_maxrss)
    would count making the features too."""
    import psutil

    proc, peak, done = psutil.Process(), [0], threading.Event()
    base = proc.memory_info().rss

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    t0 = time.perf_counter()
    result = work()
    seconds = time.perf_counter() - t0
    done.set()
    sampler.join()
    peak[0] = max(peak[0], proc.memory_info().rss)
    return {"seconds": seconds, "peak_MiB": peak[0] / 2**20, "work_MiB": (peak[0] - base) / 2**20, "result": result}


def engine(n: int) -> dict:
    from prh_bench.align import score_layers

    x, y = layers(n)
    out = measured(lambda: score_layers("mutual_knn", x, y, k=K).best)
    return {**out, "best": out.pop("result")}


def approximate(n: int, nprobe: int) -> dict:
    """mutual_knn with `search: ivf` through the engine (summaries, then the pair stage, as `score_layers` does),
    each layer's recall on the 1,000 rows its summary searched exactly, and the best layer pair's score on
    those rows from the approximate and from the exact lists (what a run record reports)."""
    from prh_bench.align import get_metric, summarize_layers

    x, y = layers(n)
    m = get_metric("mutual_knn")
    p = m.params(k=K, search="ivf", nprobe=nprobe)
    held: dict = {}

    def work() -> float:
        held["x"], held["y"] = summarize_layers(m, x, **p), summarize_layers(m, y, **p)
        held["scores"] = m.pair_scores(held["x"], held["y"], **p)
        return float(held["scores"].max())

    out = measured(work)
    out["recall"] = sum(s.probe.recall(s.idx) for s in held["x"] + held["y"]) / (2 * LAYERS)
    i, j = divmod(int(held["scores"].argmax()), LAYERS)
    out["probe_approx"], out["probe_exact"] = m.probe_scores(held["x"][i], held["y"][j], **p)
    return {**out, "best": out.pop("result")}


def faiss_flat(n: int) -> dict:
    import faiss

    x, y = layers(n)

    def search() -> None:
        for layer in x + y:
            index = faiss.IndexFlatIP(layer.shape[1])
            index.add(layer.numpy())
            index.search(layer.numpy(), K + 1)

    out = measured(search)
    out.pop("result")
    return out


def growth_plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6))
    ns = [r["n"] for r in rows]
    ax.loglog(ns, [r["seconds"] for r in rows], "o-", label="seconds")
    ax.loglog(ns, [max(r["work_MiB"], 1e-3) for r in rows], "s-", label="peak MiB of the work")
    ax.set_xlabel("N (samples)")
    ax.set_title(f"mutual_knn k={K}, 2 models x {LAYERS} x {WIDTH}, exact")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=N_DEFAULT, help="N of the comparison with faiss (0: skip it)")
    ap.add_argument("--sizes", type=int, nargs="*", default=[1000, 4000, 16000, 64000], help="N of the growth table")
    ap.add_argument(
        "--approx", type=int, nargs="*", default=[], help="N of runs with search: ivf (e.g. 100000 1000000)"
    )
    ap.add_argument("--nprobe", type=int, default=32, help="cells scanned per query by search: ivf")
    args = ap.parse_args()
    print(f"threads: {torch.get_num_threads()}, torch {torch.__version__}")
    if args.n:
        ours, flat = in_fresh_process(engine, args.n), in_fresh_process(faiss_flat, args.n)
        print(
            f"\nN = {args.n:,}: mutual_knn (k = {K}) through the engine vs faiss IndexFlatIP (k + 1) on the same layers"
        )
        print("| | seconds | peak MiB of the process | of which the work |\n|---|---|---|---|")
        for name, r in (("engine (summaries + pair stage)", ours), ("faiss exact search alone", flat)):
            print(f"| {name} | {r['seconds']:.1f} | {r['peak_MiB']:.0f} | {r['work_MiB']:.0f} |")
        print(f"| engine / faiss | {ours['seconds'] / flat['seconds']:.2f}x | | |  (score {ours['best']:.4f})")
    if args.approx:
        print(
            f"\nsearch: ivf (faiss IndexIVFFlat, 4 sqrt(N) cells, nprobe {args.nprobe}), mutual_knn k = {K}, 2 models x {LAYERS} x {WIDTH}\n"
            "| N | seconds | peak MiB of the process | of which the work | mean recall | score | on 1,000 rows: "
            "approximate | exact |\n|---|---|---|---|---|---|---|---|"
        )
        for n in args.approx:
            r = in_fresh_process(approximate, n, args.nprobe)
            print(
                f"| {n:,} | {r['seconds']:.1f} | {r['peak_MiB']:.0f} | {r['work_MiB']:.0f} | {r['recall']:.4f} | "
                f"{r['best']:.4f} | {r['probe_approx']:.4f} | {r['probe_exact']:.4f} |"
            )
    if args.sizes:
        rows = [{"n": n, **in_fresh_process(engine, n)} for n in args.sizes]
        print(
            f"\ngrowth: mutual_knn, 2 models x {LAYERS} x {WIDTH}, exact\n"
            "| N | seconds | peak MiB of the process | of which the work | score |\n|---|---|---|---|---|"
        )
        for r in rows:
            print(f"| {r['n']:,} | {r['seconds']:.2f} | {r['peak_MiB']:.0f} | {r['work_MiB']:.0f} | {r['best']:.4f} |")
        big = [r for r in rows if r["work_MiB"] > 64]
        if len(big) >= 2:
            slope = (math.log(big[-1]["work_MiB"]) - math.log(big[0]["work_MiB"])) / math.log(
                big[-1]["n"] / big[0]["n"]
            )
            print(f"slope of the work's memory against N (log-log, N >= {big[0]['n']:,}): {slope:.2f}")
        t_slope = (math.log(rows[-1]["seconds"]) - math.log(rows[-2]["seconds"])) / math.log(
            rows[-1]["n"] / rows[-2]["n"]
        )
        print(f"time slope over the last two sizes: {t_slope:.2f} (exact search is N^2 D work)")
        out = Path("prh-runs") / "bench_any_n.png"
        growth_plot(rows, out)
        print(f"plot: {out}")


if __name__ == "__main__":
    main()
