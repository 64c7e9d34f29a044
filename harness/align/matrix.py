"""A whole zoo at once: summaries once per layer, then the pair stage over the layers of all models, batched
across models where the metric allows it, in bounded memory."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..lazy import torch
from .metric import Metric


@dataclass(frozen=True)
class ZooScores:
    """Every layer of every model against every layer of the others: `block(a, b)` is model a's layers x
    model b's. Blocks of a model with itself are not computed (NaN)."""

    matrix: torch.Tensor  # L x L over all layers of all models, in model order
    offsets: dict[str, tuple[int, int]]  # model -> (first layer, end) in the matrix

    def block(self, a: str, b: str) -> torch.Tensor:
        (a0, a1), (b0, b1) = self.offsets[a], self.offsets[b]
        return self.matrix[a0:a1, b0:b1]


def score_models(metric: Metric, summaries: Mapping[str, list[Any]], params: dict[str, Any]) -> ZooScores:
    flat: list[Any] = []
    offsets: dict[str, tuple[int, int]] = {}
    for model, layers in summaries.items():
        offsets[model] = (len(flat), len(flat) + len(layers))
        flat.extend(layers)
    return ZooScores(metric.zoo_scores(flat, list(offsets.values()), params), offsets)
