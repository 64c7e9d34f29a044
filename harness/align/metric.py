"""The metric interface: per-layer summaries computed once, then a batched layer x layer pair stage."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import torch


class Metric(ABC):
    """An alignment metric between two models' per-layer features on the same samples."""

    name: str
    defaults: dict[str, Any] = {}
    higher_is_better: bool = True
    #: score(x, y) == score(y, x): the runner scores each unordered model pair once
    symmetric: bool = True

    def params(self, **overrides: Any) -> dict[str, Any]:
        unknown = set(overrides) - set(self.defaults)
        if unknown:
            raise TypeError(f"{self.name}: unknown parameter(s) {sorted(unknown)}; known: {sorted(self.defaults)}")
        return {**self.defaults, **overrides}

    @abstractmethod
    def summarize(self, feats: torch.Tensor, **params: Any) -> Any:
        """Per-layer work (e.g. nearest-neighbour sets) on one N x D tensor; reused across all pairs."""

    @abstractmethod
    def pair_scores(self, sx: Sequence[Any], sy: Sequence[Any], **params: Any) -> torch.Tensor:
        """Scores of every (x layer, y layer) pair from their summaries: an Lx x Ly float64 tensor."""
