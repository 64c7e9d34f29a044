"""Nearest-neighbour metrics of Huh et al. 2024 (Appendix A and the public code): mutual_knn, cycle_knn,
lcs_knn and edit_distance_knn.

N_A(i) is the ordered list of the k nearest neighbours of sample i in representation A, by inner product,
i itself excluded. Ties are broken by a stable descending sort: among equal similarities the lower sample
index ranks first, so every score is deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import BadInput
from .metric import Metric


def gram(x: torch.Tensor) -> torch.Tensor:
    """X X^T in float32, or float64 when the features are float64 (half precision is upcast)."""
    x = x if x.dtype in (torch.float32, torch.float64) else x.float()
    return x @ x.T


def knn_from_gram(g: torch.Tensor, k: int) -> torch.Tensor:
    """N x k indices of each row's k largest similarities, self excluded, ties to the lower index."""
    n = g.shape[0]
    if not 1 <= k < n:
        raise BadInput(f"k must be in [1, N-1] = [1, {n - 1}], got k={k}")
    sim = g.clone().fill_diagonal_(-torch.inf)
    return torch.sort(sim, dim=1, descending=True, stable=True).indices[:, :k]


def knn_indices(x: torch.Tensor, k: int) -> torch.Tensor:
    """N x k indices of each row's k nearest rows by inner product, self excluded, ties to the lower index."""
    return knn_from_gram(gram(x), k)


@dataclass(frozen=True)
class Neighbours:
    idx: torch.Tensor  # N x k, ordered nearest first

    @property
    def member(self) -> torch.Tensor:
        """N x N boolean: member[i, j] is j in N(i)."""
        n = self.idx.shape[0]
        return torch.zeros(n, n, dtype=torch.bool, device=self.idx.device).scatter_(1, self.idx, True)

    def permuted(self, perm: torch.Tensor) -> Neighbours:
        inv = torch.empty_like(perm)
        inv[perm] = torch.arange(len(perm), device=perm.device)
        return Neighbours(inv[self.idx[perm]])


def stack_idx(summaries: Sequence[Neighbours]) -> torch.Tensor:
    return torch.stack([s.idx for s in summaries])


class KNNMetric(Metric):
    defaults = {"k": 10}
    min_samples = 2

    def summarize(self, feats: torch.Tensor, **params: Any) -> Neighbours:
        self.check(feats)
        return Neighbours(knn_indices(feats, params["k"]))

    def permute(self, summary: Neighbours, perm: torch.Tensor) -> Neighbours:
        return summary.permuted(perm)


class MutualKNN(KNNMetric):
    """m(A, B) = mean_i |N_A(i) ∩ N_B(i)| / k; chance for independent features is k/(N-1)."""

    name = "mutual_knn"

    def pair_scores(self, sx: Sequence[Neighbours], sy: Sequence[Neighbours], **params: Any) -> torch.Tensor:
        k = params["k"]
        ix, iy = stack_idx(sx), stack_idx(sy)  # Lx x N x k, Ly x N x k
        n = ix.shape[1]
        # x's neighbour membership as N x N masks; y's neighbour lists index into them, so all Lx x Ly overlaps
        # come from one gather instead of a loop over layer pairs.
        member = torch.stack([s.member for s in sx])
        hits = member[:, torch.arange(n, device=ix.device)[:, None], iy]  # Lx x Ly x N x k
        return hits.sum(dim=(2, 3)).double() / (n * k)


class CycleKNN(KNNMetric):
    """m(A, B) = fraction of samples i that some B-neighbour j of i has among its A-neighbours: i -> B -> A -> i.
    Not symmetric."""

    name = "cycle_knn"
    symmetric = False

    def pair_scores(self, sx: Sequence[Neighbours], sy: Sequence[Neighbours], **params: Any) -> torch.Tensor:
        iy = stack_idx(sy)
        n = iy.shape[1]
        member = torch.stack([s.member for s in sx])  # member[l, j, i]: i in N_A(j)
        back = member[:, iy, torch.arange(n, device=iy.device)[:, None]]  # Lx x Ly x N x k
        return back.any(dim=3).double().mean(dim=2)


def _sequence_dp(ix: torch.Tensor, iy: torch.Tensor, kind: str) -> torch.Tensor:
    """LCS length or Levenshtein distance between every x list and every y list of the same sample:
    ix Lx x N x k, iy Ly x N x k -> Lx x Ly x N, by the classic dynamic programme, vectorised over lists."""
    lx, n, k = ix.shape
    ly = iy.shape[0]
    eq = ix[:, None, :, :, None] == iy[None, :, :, None, :]  # Lx x Ly x N x k x k
    shape = (lx, ly, n)
    if kind == "lcs":
        prev = [torch.zeros(shape, dtype=torch.int32) for _ in range(k + 1)]
    else:
        prev = [torch.full(shape, b, dtype=torch.int32) for b in range(k + 1)]
    for a in range(k):
        cur = [torch.zeros(shape, dtype=torch.int32) if kind == "lcs" else torch.full(shape, a + 1, dtype=torch.int32)]
        for b in range(k):
            match = eq[..., a, b]
            if kind == "lcs":
                cur.append(torch.where(match, prev[b] + 1, torch.maximum(prev[b + 1], cur[b])))
            else:
                sub = prev[b] + (~match).int()
                cur.append(torch.minimum(sub, torch.minimum(prev[b + 1], cur[b]) + 1))
        prev = cur
    return prev[k]


class LCSKNN(KNNMetric):
    """m(A, B) = mean_i LCS(N_A(i), N_B(i)) / k, the longest common subsequence of the two ordered neighbour
    lists (the public code reports the un-normalised mean length: multiply by k to compare)."""

    name = "lcs_knn"

    def pair_scores(self, sx: Sequence[Neighbours], sy: Sequence[Neighbours], **params: Any) -> torch.Tensor:
        return _sequence_dp(stack_idx(sx), stack_idx(sy), "lcs").double().mean(dim=2) / params["k"]


class EditDistanceKNN(KNNMetric):
    """m(A, B) = 1 - mean_i Levenshtein(N_A(i), N_B(i)) / k over the two ordered neighbour lists."""

    name = "edit_distance_knn"

    def pair_scores(self, sx: Sequence[Neighbours], sy: Sequence[Neighbours], **params: Any) -> torch.Tensor:
        return 1 - _sequence_dp(stack_idx(sx), stack_idx(sy), "edit").double().mean(dim=2) / params["k"]
