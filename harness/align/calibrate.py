"""Permutation nulls for alignment scores (after the calibrated-similarity line of work, 2026): how large would
the best layer-pair score be if the two models' samples were unrelated?

The null shuffles the sample order of model Y, the same permutation for all its layers, so the max over
layer pairs is calibrated as a whole (the correction for taking a max over many pairs). Summaries are
permuted, not recomputed: no features are touched again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .metric import Metric


@dataclass(frozen=True)
class Calibrated:
    observed: float  # the best score over layer pairs
    null: torch.Tensor  # R best scores under permutations
    p_value: float  # (1 + #{null >= observed}) / (R + 1)
    calibrated: float  # (observed - mean null) / (maximum - mean null): 0 at chance, 1 at identity

    def as_dict(self) -> dict[str, float]:
        return {"observed": self.observed, "p_value": self.p_value, "calibrated": self.calibrated,
                "null_mean": float(self.null.mean()), "null_std": float(self.null.std()),
                "null_q95": float(self.null.quantile(0.95)), "permutations": len(self.null)}


def calibrate_summaries(
    metric: Metric, sx: Sequence[Any], sy: Sequence[Any], observed: float, params: dict[str, Any], n: int,
    permutations: int, seed: int = 0,
) -> Calibrated:
    """The null of the best score over layer pairs, from summaries of N = n samples."""
    g = torch.Generator().manual_seed(seed)
    sign = 1.0 if metric.higher_is_better else -1.0
    null = torch.empty(permutations, dtype=torch.float64)
    for r in range(permutations):
        perm = torch.randperm(n, generator=g)
        scores = metric.pair_scores(sx, [metric.permute(s, perm) for s in sy], **params)
        null[r] = (scores * sign).max() * sign
    exceed = int(((null * sign) >= observed * sign).sum())
    mean = float(null.mean())
    span = metric.maximum - mean
    return Calibrated(observed, null, (1 + exceed) / (permutations + 1),
                      (observed - mean) / span if span != 0 else float("nan"))

