"""Mutual k-nearest-neighbour alignment (Huh et al. 2024, Appendix A).

For each sample i, N_A(i) is the set of its k nearest neighbours (by inner product, i itself excluded) in
representation A; m_NN(A, B) = mean_i |N_A(i) ∩ N_B(i)| / k. Chance level for independent features is k/(N-1).

Ties: neighbours are ranked by a stable descending sort of similarities, so among equal similarities the
sample with the lower index comes first. The result is therefore deterministic for any input.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..errors import BadInput
from .metric import Metric


def check_features(x: torch.Tensor, what: str = "features") -> None:
    if x.ndim != 2:
        raise BadInput(f"{what}: expected an N x D tensor, got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise BadInput(f"{what}: contains NaN or infinite values")


def knn_indices(x: torch.Tensor, k: int) -> torch.Tensor:
    """N x k indices of each row's k nearest rows by inner product, self excluded, ties to the lower index."""
    n = x.shape[0]
    if not 1 <= k < n:
        raise BadInput(f"mutual_knn: k must be in [1, N-1] = [1, {n - 1}], got k={k}")
    sim = x.double() @ x.double().T
    sim.fill_diagonal_(-torch.inf)
    return torch.sort(sim, dim=1, descending=True, stable=True).indices[:, :k]


class MutualKNN(Metric):
    name = "mutual_knn"
    defaults = {"k": 10}

    def summarize(self, feats: torch.Tensor, **params: Any) -> torch.Tensor:
        check_features(feats)
        return knn_indices(feats, params["k"])

    def pair_scores(self, sx: Sequence[torch.Tensor], sy: Sequence[torch.Tensor], **params: Any) -> torch.Tensor:
        k = params["k"]
        ix, iy = torch.stack(list(sx)), torch.stack(list(sy))  # Lx x N x k, Ly x N x k
        if ix.shape[1] != iy.shape[1]:
            raise BadInput(f"mutual_knn: the two models have different sample counts ({ix.shape[1]} vs {iy.shape[1]})")
        lx, n, _ = ix.shape
        # Neighbour membership of every x layer as a boolean N x N mask; the y neighbour lists index into it,
        # so all Lx x Ly overlaps come from one gather instead of a loop over layer pairs.
        member = torch.zeros(lx, n, n, dtype=torch.bool)
        member.scatter_(2, ix, True)
        rows = torch.arange(n)[:, None]
        hits = member[:, rows, iy]  # Lx x Ly x N x k
        return hits.sum(dim=(2, 3)).double() / (n * k)
