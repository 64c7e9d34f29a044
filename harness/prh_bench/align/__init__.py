"""Alignment metrics between per-layer features, computed between every layer pair.

result = score_layers("mutual_knn", prepare(feats_x), prepare(feats_y), k=10)
result.matrix      # Lx x Ly scores
result.best        # max over layer pairs
result.best_index  # (i, j) of that pair
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import BadInput
from ..lazy import torch
from .calibrate import Calibrated, calibrate_summaries
from .kernels import CKA, CKNNA, UnbiasedCKA
from .knn import LCSKNN, CycleKNN, EditDistanceKNN, MutualKNN
from .metric import Metric
from .prepare import Layers, as_tensors, prepare
from .procrustes import Procrustes
from .regression import LinearRegression
from .rsa import RSA
from .svcca import SVCCA
from .unit_matching import Permutation, SoftMatching

_BUILTIN: dict[str, Metric] = {
    m.name: m
    for m in (
        MutualKNN(),
        CycleKNN(),
        LCSKNN(),
        EditDistanceKNN(),
        CKA(),
        UnbiasedCKA(),
        CKNNA(),
        SVCCA(),
        LinearRegression(),
        Procrustes(),
        Permutation(),
        SoftMatching(),
        RSA(),
    )
}
METRICS: tuple[str, ...] = tuple(_BUILTIN)


@dataclass(frozen=True)
class LayerScores:
    matrix: torch.Tensor
    higher_is_better: bool = True
    calibration: Calibrated | None = None

    @property
    def best_index(self) -> tuple[int, int]:
        flat = self.matrix.argmax() if self.higher_is_better else self.matrix.argmin()
        i, j = divmod(int(flat), self.matrix.shape[1])
        return i, j

    @property
    def best(self) -> float:
        return float(self.matrix[self.best_index])


def get_metric(metric: str | Metric) -> Metric:
    if isinstance(metric, Metric):
        return metric
    try:
        return _BUILTIN[metric]
    except KeyError:
        raise BadInput(f"unknown metric '{metric}'; built-in metrics: {', '.join(METRICS)}") from None


def _layers(feats: Layers) -> list[torch.Tensor]:
    if (ndim := getattr(feats, "ndim", None)) is not None and ndim not in (2, 3):
        shape = tuple(getattr(feats, "shape", ()))
        raise BadInput(f"expected L x N x D features or a list of N x D tensors, got shape {shape}")
    layers = as_tensors(feats)
    if not layers:
        raise BadInput("no layers given")
    if len({x.shape[0] for x in layers}) != 1:
        raise BadInput(f"all layers of a model must have the same N, got {sorted({x.shape[0] for x in layers})}")
    return layers


def summarize_layers(metric: Metric, feats: Layers, **params: Any) -> list[Any]:
    """Per-layer summaries, computed once per model and reusable across every pair it enters."""
    return metric.summarize_model(_layers(feats), **params)


def score_layers(
    metric: str | Metric,
    feats_x: Layers,
    feats_y: Layers,
    *,
    permutations: int = 0,
    permutation_seed: int = 0,
    calibration_alpha: float = 0.05,
    **params: Any,
) -> LayerScores:
    """Score every (x layer, y layer) pair of two models' features as given (apply `prepare` first): tensors or
    numpy arrays, L x N x D or a list of N x D.

    With permutations=R > 0, the result also carries a permutation null of the best score (R shuffles of
    Y's sample order), its p-value and the calibrated score at level `calibration_alpha`."""
    m = get_metric(metric)
    p = m.params(**params)
    fx, fy = _layers(feats_x), _layers(feats_y)
    if fx[0].shape[0] != fy[0].shape[0]:
        raise BadInput(f"the two models have different sample counts ({fx[0].shape[0]} vs {fy[0].shape[0]})")
    m.check_n(fx[0].shape[0], **p)
    sx, sy = summarize_layers(m, fx, **p), summarize_layers(m, fy, **p)
    scores = LayerScores(m.pair_scores(sx, sy, **p), m.higher_is_better)
    if permutations > 0:
        cal = calibrate_summaries(
            m, sx, sy, scores.best, p, fx[0].shape[0], permutations, permutation_seed, calibration_alpha
        )
        scores = LayerScores(scores.matrix, m.higher_is_better, cal)
    return scores


__all__ = [
    "METRICS",
    "Calibrated",
    "LayerScores",
    "Metric",
    "get_metric",
    "prepare",
    "score_layers",
    "summarize_layers",
]
