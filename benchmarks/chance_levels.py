"""Chance levels: every metric on independent Gaussian features (prepared as the suites prepare them), the
mean and spread over seeds; and the fitted metrics in-sample against cross-validated at several widths.

    python benchmarks/chance_levels.py [--n 280] [--width 64] [--seeds 5]

The numbers go into the README's conventions table: a score is only meaningful against these.
"""

from __future__ import annotations

import argparse

import torch
from measured import recorded
from tabulate import tabulate

from prh_bench.align import METRICS, prepare, score_layers

PARAMS = {
    "mutual_knn": {"k": 10},
    "cycle_knn": {"k": 10},
    "lcs_knn": {"k": 10},
    "edit_distance_knn": {"k": 10},
    "cknna": {"k": 10},
    "svcca": {"dims": 10},
}
FITTED = ("procrustes", "permutation", "soft_matching")


def gaussians(n: int, d: int, seed: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return prepare([torch.randn(n, d, generator=g)]), prepare([torch.randn(n, d, generator=g)])


def score(name: str, n: int, d: int, seeds: int, **params: object) -> tuple[float, float]:
    values = torch.tensor([score_layers(name, *gaussians(n, d, s), **params).best for s in range(seeds)])
    return float(values.mean()), float(values.std()) if seeds > 1 else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=280, help="samples (pocket: 280)")
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--fitted-n", type=int, default=320, help="samples for the in-sample vs cross-validated table")
    ap.add_argument("--record", action="store_true", help="also write the figures to docs/measured/")
    args = ap.parse_args()
    with recorded("chance_levels", args.record):
        report(args)


def report(args: argparse.Namespace) -> None:
    rows = []
    for name in METRICS:
        mean, sd = score(name, args.n, args.width, args.seeds, **PARAMS.get(name, {}))
        rows.append({"metric": name, "params": PARAMS.get(name, {}) or "defaults", "chance (mean)": mean, "sd": sd})
    print(f"Independent Gaussians, N={args.n}, width {args.width}, clamp 0.95 + L2 normalisation, {args.seeds} seeds")
    print(tabulate(rows, headers="keys", floatfmt=".4f"))
    print(f"\nmutual_knn's analytic chance k/(N-1) = {10 / (args.n - 1):.4f}")
    rows = []
    for d in (16, 64, 256):
        row: dict[str, object] = {"width": d}
        for name in FITTED:
            row[f"{name} in-sample"] = score(name, args.fitted_n, d, args.seeds, fit="in_sample")[0]
            row[f"{name} cv"] = score(name, args.fitted_n, d, args.seeds)[0]
        row["linear_regression alpha=0"] = score("linear_regression", args.fitted_n, d, args.seeds, alpha=0.0)[0]
        row["linear_regression gcv"] = score("linear_regression", args.fitted_n, d, args.seeds)[0]
        rows.append(row)
    print(
        f"\nFitted metrics on independent Gaussians, N={args.fitted_n} (5 folds: 256 training rows), {args.seeds} seeds"
    )
    print(tabulate(rows, headers="keys", floatfmt=".3f"))
    eps_rows = []
    for name, params in (("cka", {}), ("unbiased_cka", {}), ("cknna", {"k": 10})):
        for n in (args.n, 512):
            x, y = gaussians(n, args.width, 0)
            related = prepare(
                [torch.tanh(x[0] @ torch.randn(args.width, args.width, generator=torch.Generator().manual_seed(1)))]
            )
            for label, other in (("independent", y), ("related", related)):
                exact = score_layers(name, x, other, **params).best
                paper = score_layers(name, x, other, eps=1e-6, **params).best
                eps_rows.append(
                    {
                        "metric": name,
                        "N": n,
                        "pair": label,
                        "exact": exact,
                        "eps=1e-6": paper,
                        "difference": exact - paper,
                    }
                )
    print(f"\nThe PRH code's epsilon (1e-6 added to the denominator) against the exact ratio, width {args.width}")
    print(tabulate(eps_rows, headers="keys", floatfmt=".6f"))


if __name__ == "__main__":
    main()
