"""Nearest-neighbour metrics of Huh et al. 2024 (Appendix A and the public code): mutual_knn, cycle_knn,
lcs_knn and edit_distance_knn.

N_A(i) is the ordered list of the k nearest neighbours of sample i in representation A, by inner product,
i itself excluded. Ties are broken by a stable descending sort: among equal similarities the lower sample
index ranks first, so every score is deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from ..errors import BadInput
from ..lazy import torch
from ..params import int_in
from .metric import Metric


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """Half-precision features (bf16/fp16 from GPU extraction) upcast to float32; others as they are."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def gram(x: torch.Tensor, blocks: int = 4) -> torch.Tensor:
    """X X^T in float32, or float64 when the features are float64 (half precision is upcast).

    Only the upper block triangle is multiplied (one product per block row, from its diagonal block on) and
    mirrored: about a third less work than x @ x.T, and exactly symmetric."""
    x = at_least_float32(x)
    n = x.shape[0]
    if n < 256:
        return x @ x.T
    e = [n * i // blocks for i in range(blocks + 1)]
    g = torch.empty(n, n, dtype=x.dtype, device=x.device)
    for i in range(blocks):
        torch.mm(x[e[i] : e[i + 1]], x[e[i] :].T, out=g[e[i] : e[i + 1], e[i] :])
        diag = g[e[i] : e[i + 1], e[i] : e[i + 1]]  # a BLAS product need not be symmetric within its block
        diag.copy_(torch.triu(diag) + torch.triu(diag, 1).T)
        for j in range(i):
            g[e[i] : e[i + 1], e[j] : e[j + 1]] = g[e[j] : e[j + 1], e[i] : e[i + 1]].T
    return g


def knn_from_gram(g: torch.Tensor, k: int, ordered: bool = True) -> torch.Tensor:
    """N x k indices of each row's k largest similarities, self excluded, ties to the lower index; nearest
    first when `ordered` (metrics that read only the sets skip that sort). Overwrites the diagonal of g with
    -inf (callers never read it again). topk does the work; rows where ties straddle the k-th place (rare with
    real features) fall back to a stable full sort, so the tie rule holds exactly."""
    n = g.shape[0]
    if not 1 <= k < n:
        raise BadInput(f"k must be in [1, N-1] = [1, {n - 1}], got k={k}")
    sim = g.fill_diagonal_(-torch.inf)
    vals, idx = sim.topk(min(k + 1, n), dim=1)
    # A tie straddles the k-th place when the (k+1)-th similarity equals the k-th.
    straddle = vals[:, k] == vals[:, k - 1] if k < n - 1 else torch.zeros(n, dtype=torch.bool)
    vals, idx = vals[:, :k], idx[:, :k]
    if ordered:
        # Order the chosen k by (similarity desc, index asc): sort by index, then stable sort by value.
        idx, order = idx.sort(dim=1)
        vals = vals.gather(1, order)
        idx = idx.gather(1, vals.sort(dim=1, descending=True, stable=True).indices)
    if straddle.any():
        rows = straddle.nonzero().flatten()
        idx[rows] = torch.sort(sim[rows], dim=1, descending=True, stable=True).indices[:, :k]
    return idx.contiguous()


def knn_indices(x: torch.Tensor, k: int, ordered: bool = True) -> torch.Tensor:
    """N x k indices of each row's k nearest rows by inner product, self excluded, ties to the lower index."""
    return knn_from_gram(gram(x), k, ordered)


@dataclass(frozen=True)
class Neighbours:
    idx: torch.Tensor  # N x k; nearest first for metrics that read the order (KNNMetric.ordered)

    @cached_property
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


def shared_counts(sx: Sequence[Neighbours], sy: Sequence[Neighbours]) -> torch.Tensor:
    """Lx x Ly: sum over samples of |N_x(i) ∩ N_y(i)| for every layer pair. x's neighbour sets are N x N
    membership masks; y's neighbour positions (i, j) index into all of them in one index_select."""
    n, k = sy[0].idx.shape
    rows = torch.arange(n, device=sy[0].idx.device)[:, None] * n
    # Membership of all x layers interleaved (N*N x Lx): one memory read answers for every x layer.
    member = torch.zeros(n * n, len(sx), dtype=torch.bool, device=rows.device)
    for layer, s in enumerate(sx):
        member[(rows + s.idx).view(-1), layer] = True
    at = torch.stack([rows + s.idx for s in sy]).view(-1)  # Ly*N*k flat positions
    hits = member.index_select(0, at).view(len(sy), n * k, len(sx))
    return hits.sum(1, dtype=torch.int32).T


class KNNMetric(Metric):
    defaults = {"k": 10}
    rules = {"k": int_in(1)}
    min_samples = 2
    #: the score reads the order of the neighbour lists, not only the sets
    ordered = False

    def summarize(self, feats: torch.Tensor, **params: Any) -> Neighbours:
        self.check(feats)
        return Neighbours(knn_indices(feats, params["k"], self.ordered))

    def check_n(self, n: int, **params: Any) -> None:
        super().check_n(n, **params)
        if not params["k"] <= n - 1:
            raise BadInput(f"{self.name}: k must be in [1, N-1] = [1, {n - 1}], got k={params['k']}")

    def summary_nbytes(self, n: int, d: int, **params: Any) -> int:
        return 8 * n * params["k"]

    def permute(self, summary: Neighbours, perm: torch.Tensor) -> Neighbours:
        return summary.permuted(perm)

    def summaries_to_tensors(self, summaries: Sequence[Neighbours]) -> dict[str, torch.Tensor]:
        return {"idx": stack_idx(summaries)}  # L x N x k: 80 KB per layer at N = 1000, k = 10

    def summaries_from_tensors(self, tensors: dict[str, torch.Tensor]) -> list[Neighbours]:
        return [Neighbours(idx) for idx in tensors["idx"]]


class MutualKNN(KNNMetric):
    """m(A, B) = mean_i |N_A(i) ∩ N_B(i)| / k; chance for independent features is k/(N-1)."""

    name = "mutual_knn"

    def pair_scores(self, sx: Sequence[Neighbours], sy: Sequence[Neighbours], **params: Any) -> torch.Tensor:
        n = sx[0].idx.shape[0]
        return shared_counts(sx, sy).double() / (n * params["k"])


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
    ordered = True

    def pair_scores(self, sx: Sequence[Neighbours], sy: Sequence[Neighbours], **params: Any) -> torch.Tensor:
        return _sequence_dp(stack_idx(sx), stack_idx(sy), "lcs").double().mean(dim=2) / params["k"]


class EditDistanceKNN(KNNMetric):
    """m(A, B) = 1 - mean_i Levenshtein(N_A(i), N_B(i)) / k over the two ordered neighbour lists."""

    name = "edit_distance_knn"
    ordered = True

    def pair_scores(self, sx: Sequence[Neighbours], sy: Sequence[Neighbours], **params: Any) -> torch.Tensor:
        return 1 - _sequence_dp(stack_idx(sx), stack_idx(sy), "edit").double().mean(dim=2) / params["k"]
