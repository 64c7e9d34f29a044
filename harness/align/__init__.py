"""Alignment metrics between per-layer features, computed between every layer pair.

    result = score_layers("mutual_knn", prepare(feats_x), prepare(feats_y), k=10)
    result.matrix      # Lx x Ly scores
    result.best        # max over layer pairs
    result.best_index  # (i, j) of that pair
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import BadInput
from .knn import MutualKNN
from .metric import Metric
from .prepare import prepare

_BUILTIN: dict[str, Metric] = {m.name: m for m in (MutualKNN(),)}
METRICS: tuple[str, ...] = tuple(_BUILTIN)


@dataclass(frozen=True)
class LayerScores:
    matrix: torch.Tensor
    higher_is_better: bool = True

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


def _layers(feats: Sequence[torch.Tensor] | torch.Tensor) -> list[torch.Tensor]:
    if isinstance(feats, torch.Tensor):
        if feats.ndim == 2:
            return [feats]
        if feats.ndim != 3:
            raise BadInput(f"expected L x N x D features or a list of N x D tensors, got shape {tuple(feats.shape)}")
    return list(feats)


def summarize_layers(metric: Metric, feats: Sequence[torch.Tensor] | torch.Tensor, **params: Any) -> list[Any]:
    """Per-layer summaries, computed once per model and reusable across every pair it enters."""
    return [metric.summarize(x, **params) for x in _layers(feats)]


def score_layers(
    metric: str | Metric,
    feats_x: Sequence[torch.Tensor] | torch.Tensor,
    feats_y: Sequence[torch.Tensor] | torch.Tensor,
    **params: Any,
) -> LayerScores:
    """Score every (x layer, y layer) pair of two models' features as given (apply `prepare` first)."""
    m = get_metric(metric)
    p = m.params(**params)
    fx, fy = _layers(feats_x), _layers(feats_y)
    if fx[0].shape[0] != fy[0].shape[0]:
        raise BadInput(f"the two models have different sample counts ({fx[0].shape[0]} vs {fy[0].shape[0]})")
    sx, sy = summarize_layers(m, fx, **p), summarize_layers(m, fy, **p)
    return LayerScores(m.pair_scores(sx, sy, **p), m.higher_is_better)


__all__ = ["METRICS", "LayerScores", "Metric", "get_metric", "prepare", "score_layers", "summarize_layers"]
