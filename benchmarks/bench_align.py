"""Alignment engine vs the straightforward per-pair loop (as in the PRH paper's public code), side by side.

    python benchmarks/bench_align.py            # both cases, all metrics (a few minutes on 2 CPU cores)
    python benchmarks/bench_align.py --quick    # fewer baseline pairs, extrapolated

Case 1: N=1024, model X with 13 layers of width 768, model Y with 25 layers of width 1024: all 325 layer pairs.
Case 2: 10 models of 13 layers of width 768 (45 model pairs, 7,605 layer pairs); the baseline is timed on a
sample of layer pairs and extrapolated, since it costs the same for every pair. For a metric that is not symmetric
(cknna) the engine scores every pair both ways, and the loop's time is doubled to match.
Prints time per metric (the once-per-layer L2 normalisation apart from the engine), the speedup over the loop
(against normalisation + engine), the engine's time as a multiple of the Gram-matrix floor (38 plain x @ x.T)
and the floor's share of it, the largest score difference to the loop, the largest error of engine and loop
against the loop run in float64 (20 pairs), and peak memory (max RSS of a fresh process holding the 10 models'
features and running only the engine; the base column is before the engine). Engine and floor times are the
best of --repeat runs (the loops run once: they take minutes and their noise is small beside the ratios)."""

from __future__ import annotations

import argparse
import resource
import time

import torch
from fresh_process import in_fresh_process
from measured import recorded

from prh_bench.align import get_metric, prepare, summarize_layers
from prh_bench.align.pair_batches import score_pairs

N, K = 1024, 10
METRICS = {"mutual_knn": {"k": K}, "cka": {}, "cknna": {"k": K}}


# ---- the baseline: every pair from scratch, as the paper's code does -------------------------------------


def _normalize(x):
    return torch.nn.functional.normalize(x, p=2, dim=-1)


def _knn(x, k):
    return (x @ x.T).fill_diagonal_(-1e8).argsort(dim=1, descending=True)[:, :k]


def loop_mutual_knn(a, b, k):
    a, b = _normalize(a), _normalize(b)
    n = a.shape[0]
    ma, mb = torch.zeros(n, n), torch.zeros(n, n)
    r = torch.arange(n)[:, None]
    ma[r, _knn(a, k)] = 1.0
    mb[r, _knn(b, k)] = 1.0
    return ((ma * mb).sum(1) / k).mean().item()


def _hsic_biased(k, l):
    h = torch.eye(k.shape[0], dtype=k.dtype) - 1 / k.shape[0]
    return torch.trace(k @ h @ l @ h)


def _hsic_unbiased(k, l):
    """Song et al.'s estimator as the PRH code computes it: the last term sums the full product K~ L~ (an N^3
    matrix product per call), where the engine uses the equal colsum(K~) . rowsum(L~)."""
    m = k.shape[0]
    kt, lt = k.clone().fill_diagonal_(0), l.clone().fill_diagonal_(0)
    v = (kt * lt.T).sum() + kt.sum() * lt.sum() / ((m - 1) * (m - 2)) - 2 * torch.mm(kt, lt).sum() / (m - 2)
    return v / (m * (m - 3))


def loop_cka(a, b):
    a, b = _normalize(a), _normalize(b)
    k, l = a @ a.T, b @ b.T
    return (_hsic_biased(k, l) / torch.sqrt(_hsic_biased(k, k) * _hsic_biased(l, l))).item()


def loop_cknna(a, b, k):
    a, b = _normalize(a), _normalize(b)
    kk, ll = a @ a.T, b @ b.T
    n = a.shape[0]

    def sim(x, y):
        mx = torch.zeros(n, n).scatter_(1, x.clone().fill_diagonal_(float("-inf")).topk(k, dim=1).indices, 1)
        my = torch.zeros(n, n).scatter_(1, y.clone().fill_diagonal_(float("-inf")).topk(k, dim=1).indices, 1)
        m = mx * my
        return _hsic_unbiased(m * x, m * y)

    return (sim(kk, ll) / torch.sqrt(sim(kk, kk) * sim(ll, ll))).item()


LOOPS = {
    "mutual_knn": lambda a, b: loop_mutual_knn(a, b, K),
    "cka": loop_cka,
    "cknna": lambda a, b: loop_cknna(a, b, K),
}


# ---- data and the engine ----------------------------------------------------------------------------------


def model(seed: int, layers: int, width: int) -> list[torch.Tensor]:
    """Layers that share structure (a common latent seen through random maps, plus noise), like real nets."""
    g = torch.Generator().manual_seed(seed)
    latent = torch.randn(N, 64, generator=torch.Generator().manual_seed(0))
    return [
        torch.relu(latent @ torch.randn(64, width, generator=g) + torch.randn(N, width, generator=g))
        for _ in range(layers)
    ]


def engine_matrix(metric: str, models: list[list[torch.Tensor]]) -> tuple[float, float, dict]:
    """All model pairs with per-layer summaries computed once; returns the seconds of the preparation
    (L2 normalisation, once per layer), of the engine, and the score matrices."""
    m = get_metric(metric)
    p = m.params(**METRICS[metric])
    t0 = time.perf_counter()
    prepared = [prepare(f, clamp_quantile=None) for f in models]
    t1 = time.perf_counter()
    pairs = [(str(i), str(j)) for i in range(len(models)) for j in range(i + 1, len(models))]
    zoo = score_pairs(m, {str(i): summarize_layers(m, f, **p) for i, f in enumerate(prepared)}, pairs, p)
    t2 = time.perf_counter()
    out = {(i, j): zoo[(str(i), str(j))] for i in range(len(models)) for j in range(i + 1, len(models))}
    return t1 - t0, t2 - t1, out


def directions(metric: str) -> int:
    """Layer pairs are scored both ways when the metric is not symmetric (cknna): the loop would do so too."""
    return 1 if get_metric(metric).symmetric else 2


def gram_floor(models: list[list[torch.Tensor]], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for f in models:
            for x in f:
                x @ x.T
        best = min(best, time.perf_counter() - t0)
    return best


def best_engine_matrix(metric: str, models: list[list[torch.Tensor]], repeat: int) -> tuple[float, float, dict]:
    runs = [engine_matrix(metric, models) for _ in range(repeat)]
    return min(r[0] for r in runs), min(r[1] for r in runs), runs[0][2]


def loop_time(metric: str, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, list[float]]:
    t0 = time.perf_counter()
    scores = [LOOPS[metric](a, b) for a, b in pairs]
    return time.perf_counter() - t0, scores


def engine_run(metric: str, n_models: int, repeat: int) -> tuple[float, float, float]:
    """Seconds of preparation + engine (best of `repeat`), and max RSS (MB) before and after: run it in a
    fresh process."""
    models = [model(s, 13, 768) for s in range(n_models)]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    prep_s, eng_s, _ = best_engine_matrix(metric, models, repeat)
    return prep_s + eng_s, before / 1024, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="time the baseline on 40 pairs per metric and extrapolate")
    ap.add_argument("--case2-sample", type=int, default=30, help="baseline pairs timed for case 2")
    ap.add_argument("--repeat", type=int, default=3, help="engine and floor runs; the best is reported")
    ap.add_argument("--record", action="store_true", help="also write the figures to docs/measured/")
    args = ap.parse_args()
    with recorded("bench_align", args.record):
        report(args)


def report(args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, N={N}, k={K}\n")

    x, y = model(1, 13, 768), model(2, 25, 1024)
    floor1 = gram_floor([x, y], args.repeat)
    print(f"case 1: 13 x 768 vs 25 x 1024, 325 layer pairs; Gram floor (38 Gram matrices) {floor1:.2f} s")
    print(
        f"{'metric':12s} {'loop s':>9s} {'prep s':>7s} {'engine s':>9s} {'speedup':>8s} {'x floor':>8s} "
        f"{'Gram share':>10s} {'vs loop':>9s} {'eng err':>9s} {'loop err':>9s}"
    )
    all_pairs = [(a, b) for a in x for b in y]
    for metric in METRICS:
        idx = list(range(0, len(all_pairs), len(all_pairs) // 40))[:40] if args.quick else range(len(all_pairs))
        loop_s, loop_scores = loop_time(metric, [all_pairs[i] for i in idx])
        loop_s *= len(all_pairs) / len(idx) * directions(metric)
        prep_s, eng_s, mats = best_engine_matrix(metric, [x, y], args.repeat)
        flat = mats[(0, 1)].flatten()
        diff = max(abs(flat[i].item() - s) for i, s in zip(idx, loop_scores, strict=True))
        # Errors against the same loop run in float64 on 20 pairs: the reference for both.
        ref = {
            i: LOOPS[metric](all_pairs[i][0].double(), all_pairs[i][1].double())
            for i in list(idx)[:: max(1, len(idx) // 20)]
        }
        eng_err = max(abs(flat[i].item() - v) for i, v in ref.items())
        loop_err = max(abs(loop_scores[list(idx).index(i)] - v) for i, v in ref.items())
        print(
            f"{metric:12s} {loop_s:9.2f} {prep_s:7.3f} {eng_s:9.3f} {loop_s / (prep_s + eng_s):7.0f}x "
            f"{eng_s / floor1:7.2f}x {min(floor1 / eng_s, 1):9.0%} {diff:9.1e} {eng_err:9.1e} {loop_err:9.1e}"
        )

    print(
        f"\ncase 2: 10 models x 13 layers x 768, 45 model pairs, 7,605 layer pairs "
        f"(baseline: {args.case2_sample} pairs timed, extrapolated)"
    )
    models = [model(s, 13, 768) for s in range(10)]
    floor2 = gram_floor(models, args.repeat)
    print(f"Gram floor (130 Gram matrices) {floor2:.2f} s")
    print(
        f"{'metric':12s} {'loop s':>9s} {'engine s':>9s} {'speedup':>8s} {'x floor':>8s} {'peak MB':>8s} {'(base MB)':>9s}"
    )
    sample = [(models[i % 10][i % 13], models[(i + 3) % 10][(i * 7) % 13]) for i in range(args.case2_sample)]
    for metric in METRICS:
        loop_s, _ = loop_time(metric, sample)
        loop_s *= 7605 / len(sample) * directions(metric)
        eng_s, base_mb, peak_mb = in_fresh_process(engine_run, metric, 10, args.repeat)
        print(
            f"{metric:12s} {loop_s:9.1f} {eng_s:9.3f} {loop_s / eng_s:7.0f}x {eng_s / floor2:7.2f}x "
            f"{peak_mb:8.0f} {base_mb:9.0f}"
        )


if __name__ == "__main__":
    main()
