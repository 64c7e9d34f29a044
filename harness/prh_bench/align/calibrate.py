"""Permutation nulls for alignment scores (after the calibrated-similarity line of work, 2026): how large would
the best layer-pair score be if the two models' samples were unrelated?

The calibrated score is calibrated-similarity's ("Aristotelian") definition, `calibrated_score`; the older
(observed - mean null) / (maximum - mean null) is kept as `null_normalized` under its own name.

The null shuffles the sample order of model Y, the same permutation for all its layers, so the max over
layer pairs is calibrated as a whole (the correction for taking a max over many pairs). Summaries are
permuted, not recomputed: no features are touched again. Where samples come in groups that any model tells
apart (crops of one photograph are each other's neighbours in a random network too), a free shuffle makes a
null that nothing fails to beat; shuffling within groups keeps that shared structure in the null, which then
asks what a model shares beyond telling the groups apart.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..lazy import torch
from .metric import Metric


@dataclass(frozen=True)
class Calibrated:
    observed: float  # the best score over layer pairs
    null: torch.Tensor  # R best scores under permutations
    p_value: float  # (1 + #{null >= observed}) / (R + 1)
    tau: float  # the ceil((1 - alpha)(R + 1))-th smallest of {observed} and the null
    calibrated: float  # clamp((observed - tau) / (maximum - tau), 0, 1): the calibrated score
    null_normalized: float  # (observed - mean null) / (maximum - mean null), unclamped: 0 at chance
    alpha: float

    def as_dict(self) -> dict[str, float]:
        return {
            "observed": self.observed,
            "p_value": self.p_value,
            "calibrated": self.calibrated,
            "tau": self.tau,
            "alpha": self.alpha,
            "null_normalized": self.null_normalized,
            "null_mean": float(self.null.mean()),
            "null_std": float(self.null.std()),
            "null_q95": float(self.null.quantile(0.95)),
            "permutations": len(self.null),
        }


def calibrated_score(
    observed: float, null: torch.Tensor, alpha: float = 0.05, maximum: float = 1.0, higher_is_better: bool = True
) -> tuple[float, float]:
    """(tau, calibrated score) of the calibrated-similarity definition: tau is the ceil((1 - alpha)(R + 1))-th
    order statistic of the R null scores together with the observed one (the null's 1 - alpha critical value,
    counting the observation as one draw), and the score clamp((observed - tau) / (maximum - tau), 0, 1): 0 for
    anything a shuffle reaches at level alpha, 1 at the maximum. For a lower-is-better metric the order and
    the direction flip."""
    sign = 1.0 if higher_is_better else -1.0
    values = torch.cat([torch.tensor([observed], dtype=torch.float64), null.double()]) * sign
    rank = math.ceil(round((1 - alpha) * len(values), 9))  # len(values) = R + 1; rounded: 0.95 * 20 is 19
    tau = float(values.sort().values[rank - 1]) * sign
    span = maximum - tau
    if span * sign <= 0:
        return tau, 0.0
    return tau, min(1.0, max(0.0, (observed - tau) / span))


def within_groups(codes: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """A random permutation that sends each sample to a sample of its own group: the samples of each group in
    index order (a stable sort by code) are mapped to the same samples in random order (a sort by code plus a
    uniform draw in [0, 1))."""
    ordered = codes.argsort(stable=True)
    perm = torch.empty(len(codes), dtype=torch.long)
    perm[ordered] = (codes + torch.rand(len(codes), generator=g, dtype=torch.float64)).argsort()
    return perm


def calibrate_summaries(
    metric: Metric,
    sx: Sequence[Any],
    sy: Sequence[Any],
    observed: float,
    params: dict[str, Any],
    n: int,
    permutations: int,
    seed: int = 0,
    alpha: float = 0.05,
    groups: Sequence[int] | None = None,
) -> Calibrated:
    """The null of the best score over layer pairs, from summaries of N = n samples; with `groups` (each
    sample's group code) every shuffle moves samples only within their group."""
    g = torch.Generator().manual_seed(seed)
    sign = 1.0 if metric.higher_is_better else -1.0
    null = torch.empty(permutations, dtype=torch.float64)
    codes = None if groups is None else torch.as_tensor(groups, dtype=torch.float64)
    for r in range(permutations):
        perm = torch.randperm(n, generator=g) if codes is None else within_groups(codes, g)
        scores = metric.pair_scores(sx, [metric.permute(s, perm) for s in sy], **params)
        null[r] = (scores * sign).max() * sign
    exceed = int(((null * sign) >= observed * sign).sum())
    mean = float(null.mean())
    span = metric.maximum - mean
    tau, calibrated = calibrated_score(observed, null, alpha, metric.maximum, metric.higher_is_better)
    return Calibrated(
        observed,
        null,
        (1 + exceed) / (permutations + 1),
        tau,
        calibrated,
        (observed - mean) / span if span != 0 else float("nan"),
        alpha,
    )
