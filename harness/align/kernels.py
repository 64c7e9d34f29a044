"""Kernel-alignment metrics: CKA (Kornblith et al. 2019; linear or RBF kernel), unbiased CKA (with the
unbiased HSIC estimator of Song et al. 2012) and CKNNA (Huh et al. 2024, Appendix A: unbiased CKA restricted
to mutual k-nearest neighbours).

Per layer the Gram matrix is computed once, in the features' precision (float32 features give a float32
Gram, half precision is upcast to float32) and centred and normalised in float64, so every pair is an inner
product of two flattened N x N matrices: one matrix product scores all layer pairs.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import BadInput
from .knn import Neighbours, gram, knn_from_gram
from .metric import Metric


def centered_kernel(x: torch.Tensor, kind: str, sigma: float) -> torch.Tensor:
    """H K H with H = I - 11^T / n. For the linear kernel that is the Gram matrix of the column-centred
    features, which spares a pass over the N x N matrix."""
    if kind == "linear":
        return gram(x - x.mean(0, keepdim=True))
    if kind == "rbf":
        g = gram(x).double()
        sq = g.diagonal()
        k = torch.exp(-(sq[:, None] + sq[None, :] - 2 * g).clamp_min(0) / (2 * sigma**2))
        mean = k.mean(0)  # symmetric: row means = column means
        return k - mean[None, :] - mean[:, None] + mean.mean()
    raise BadInput(f"cka: kernel must be 'linear' or 'rbf', got {kind!r}")


def u_center(k: torch.Tensor) -> torch.Tensor:
    """U-centring (Szekely & Rizzo 2014): <U(K), U(L)> / (n (n - 3)) is the unbiased HSIC of Song et al. 2012."""
    n = k.shape[0]
    k = k.clone().fill_diagonal_(0)
    rows = k.sum(1)
    u = k - rows[:, None] / (n - 2) - rows[None, :] / (n - 2) + k.sum() / ((n - 1) * (n - 2))
    return u.fill_diagonal_(0)


@dataclass(frozen=True)
class FlatKernel:
    """A centred kernel, flattened, with its Frobenius norm: pair scores are inner products over norms."""

    flat: torch.Tensor  # N*N, in the features' precision (at least float32)
    norm: float  # computed in float64: float32 sums of N^2 squares drift ~1e-5
    n: int

    def permuted(self, perm: torch.Tensor) -> FlatKernel:
        m = self.flat.view(self.n, self.n)[perm][:, perm]
        return FlatKernel(m.reshape(-1), self.norm, self.n)


def _flat_kernel(m: torch.Tensor, name: str) -> FlatKernel:
    norm = float(torch.linalg.vector_norm(m, dtype=torch.float64))
    if norm == 0:
        raise BadInput(f"{name}: the centred kernel is zero (constant features); the score is undefined")
    return FlatKernel(m.reshape(-1), norm, m.shape[0])


@functools.cache
def _upper(n: int) -> torch.Tensor:
    """Flat positions of the strict upper triangle of an n x n matrix."""
    i, j = torch.triu_indices(n, n, offset=1)
    return i * n + j


def _stacked(summaries: Sequence[FlatKernel]) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernels' strict upper triangles and diagonals, stacked in float64. Kernels are symmetric, so
    <K, L> = 2 <triu K, triu L> + <diag K, diag L>: half the bytes to copy and half the matrix product."""
    n = summaries[0].n
    upper = torch.empty(len(summaries), n * (n - 1) // 2, dtype=torch.float64)
    diag = torch.empty(len(summaries), n, dtype=torch.float64)
    for row, d, s in zip(upper, diag, summaries):
        row.copy_(s.flat.index_select(0, _upper(n)))
        d.copy_(s.flat[:: n + 1])
    return upper, diag


def _norms(summaries: Sequence[FlatKernel]) -> torch.Tensor:
    return torch.tensor([s.norm for s in summaries], dtype=torch.float64)


Stack = tuple[torch.Tensor, torch.Tensor]


def _cosines(x: Stack, y: Stack, sx: Sequence[FlatKernel], sy: Sequence[FlatKernel]) -> torch.Tensor:
    """Inner products of stacked kernels, in float64 (float32 sums over N^2 terms drift ~1e-6), over their norms."""
    inner = 2 * (x[0] @ y[0].T) + x[1] @ y[1].T
    return inner / (_norms(sx)[:, None] * _norms(sy)[None, :])


def _inner(sx: Sequence[FlatKernel], sy: Sequence[FlatKernel]) -> torch.Tensor:
    x = _stacked(sx)
    y = x if len(sx) == len(sy) and all(a is b for a, b in zip(sx, sy)) else _stacked(sy)
    return _cosines(x, y, sx, sy)


class CKA(Metric):
    """CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)), HSIC(K, L) = tr(K H L H) (biased estimator);
    K = X X^T ('linear') or exp(-|x_i - x_j|^2 / (2 sigma^2)) ('rbf')."""

    name = "cka"
    defaults = {"kernel": "linear", "sigma": 1.0}
    #: bytes of one float64 stack of kernels in the pair stage (two at a time): bounds its working memory
    #: (128 kernels at N = 1024); larger stacks mean fewer, longer matrix products
    stack_bytes = 2**30

    def summarize(self, feats: torch.Tensor, **params: Any) -> FlatKernel:
        self.check(feats)
        return _flat_kernel(centered_kernel(feats, params["kernel"], params["sigma"]), self.name)

    def summary_nbytes(self, n: int, d: int, **params: Any) -> int:
        return 4 * n * n

    def work_nbytes(self, n: int, d: int, **params: Any) -> int:
        return 4 * n * n  # the float64 stack of the kernel's upper triangle in the pair stage

    def _rows(self, flat: Sequence[FlatKernel]) -> int:
        return max(1, self.stack_bytes // (4 * flat[0].flat.numel()))  # half a kernel in float64

    def pair_scores(self, sx: Sequence[FlatKernel], sy: Sequence[FlatKernel], **params: Any) -> torch.Tensor:
        return _inner(sx, sy)

    def cross_scores(self, sx: Sequence[FlatKernel], sy: Sequence[FlatKernel], params: dict[str, Any]) -> torch.Tensor:
        rows = self._rows(sx)
        out = torch.empty(len(sx), len(sy), dtype=torch.float64)
        for x0 in range(0, len(sx), rows):
            bx = sx[x0 : x0 + rows]
            x = _stacked(bx)
            for y0 in range(0, len(sy), rows):
                by = sy[y0 : y0 + rows]
                out[x0 : x0 + rows, y0 : y0 + rows] = _cosines(x, _stacked(by), bx, by)
        return out

    def zoo_scores(self, flat: Sequence[FlatKernel], spans: Sequence[tuple[int, int]], params: dict[str, Any]) -> torch.Tensor:
        """All layers against all in blocks of `stack_bytes`: one stacked matrix product per block pair, the
        upper block triangle only (the pair stage is symmetric)."""
        n, rows = len(flat), self._rows(flat)
        out = torch.empty(n, n, dtype=torch.float64)
        for x0 in range(0, n, rows):
            x1 = min(x0 + rows, n)
            x = _stacked(flat[x0:x1])
            for y0 in range(x0, n, rows):
                y1 = min(y0 + rows, n)
                scores = _cosines(x, x if y0 == x0 else _stacked(flat[y0:y1]), flat[x0:x1], flat[y0:y1])
                out[x0:x1, y0:y1] = scores
                out[y0:y1, x0:x1] = scores.T
        for a0, a1 in spans:
            out[a0:a1, a0:a1] = float("nan")
        return out

    def permute(self, summary: FlatKernel, perm: torch.Tensor) -> FlatKernel:
        return summary.permuted(perm)


class UnbiasedCKA(CKA):
    """CKA with the unbiased HSIC estimator of Song et al. 2012 (linear kernel); needs N >= 4."""

    name = "unbiased_cka"
    defaults = {}
    min_samples = 4

    def summarize(self, feats: torch.Tensor, **params: Any) -> FlatKernel:
        self.check(feats)
        return _flat_kernel(u_center(gram(feats)), self.name)


@dataclass(frozen=True)
class KnnKernel:
    """What CKNNA needs of one layer, all at its own neighbour positions (i, cols[i, s]): no N x N matrix is
    kept."""

    cols: torch.Tensor  # N x k neighbour indices
    kv: torch.Tensor  # N x k float64: K at those positions
    recip: torch.Tensor  # N x k bool: i is also among the neighbours of cols[i, s]
    self_hsic: float  # unbiased HSIC of the layer with itself under its own neighbour mask

    def permuted(self, perm: torch.Tensor) -> KnnKernel:
        inv = torch.empty_like(perm)
        inv[perm] = torch.arange(len(perm))
        return KnnKernel(inv[self.cols[perm]], self.kv[perm], self.recip[perm], self.self_hsic)


def _masked_hsic(kv: torch.Tensor, lv: torch.Tensor, recip: torch.Tensor, cols: torch.Tensor, n: int) -> torch.Tensor:
    """Unbiased HSIC(M∘K, M∘L) for masks M supported on the positions (i, cols[i, s]), flattened to P = N*k rows
    in row order, one column per layer pair (P x C).

    kv, lv: K and L at those positions, zero where M is 0; recip: M[j, i] is 1 too.
    HSIC_u(A, B) = [sum_ij A_ij B_ji + sum(A) sum(B) / ((n-1)(n-2)) - 2 1'AB1 / (n-2)] / (n(n-3)) with A = M∘K,
    B = M∘L (Song et al. 2012, as the PRH code evaluates it). M is not symmetric, so 1'AB1 = colsum(A).rowsum(B)
    differs from colsum(A).colsum(B), and the score depends on which model is A."""
    t1 = (kv * lv * recip).sum(0)
    t2 = kv.sum(0) * lv.sum(0) / ((n - 1) * (n - 2))
    col_a = torch.zeros(n, kv.shape[1], dtype=kv.dtype).index_add_(0, cols.reshape(-1), kv)
    row_b = lv.view(n, -1, lv.shape[1]).sum(1)
    t3 = 2 * (col_a * row_b).sum(0) / (n - 2)
    return (t1 + t2 - t3) / (n * (n - 3))


class _SlotTable:
    """For a set of y layers: slot[i*n + j, l] = 1 + the place of j in layer l's neighbour list of i, or 0.
    One table answers, for any position and every y layer at once, membership, reciprocity and the kernel
    value stored there, so scoring an x layer reads only its own N x k positions."""

    def __init__(self, sy: Sequence[KnnKernel]):
        n, k = sy[0].kv.shape
        self.n = n
        self.rows = torch.arange(n)[:, None]
        dtype = torch.uint8 if k < 255 else torch.int32
        self.slot = torch.zeros(n * n, len(sy), dtype=dtype)
        places = torch.arange(1, k + 1, dtype=dtype).expand(n, k).reshape(-1)
        for layer, y in enumerate(sy):
            self.slot[(self.rows * n + y.cols).view(-1), layer] = places
        self.lv = torch.stack([y.kv for y in sy], dim=-1).view(n * k, len(sy))  # (i, place) x Ly
        self.self_hsic = torch.tensor([y.self_hsic for y in sy], dtype=torch.float64)
        self.base = (self.rows * k).expand(n, k).reshape(-1, 1)

    def scores(self, x: KnnKernel) -> torch.Tensor:
        """x against every layer of the table."""
        n = self.n
        s_at = self.slot.index_select(0, (self.rows * n + x.cols).view(-1)).long()  # N*k x Ly
        s_back = self.slot.index_select(0, (x.cols * n + self.rows).view(-1))
        hit = s_at > 0
        lv_at = self.lv.gather(0, self.base + (s_at - 1).clamp_min(0)) * hit
        recip = x.recip.view(-1, 1) & (s_back > 0) & hit
        num = _masked_hsic(x.kv.view(-1, 1) * hit, lv_at, recip, x.cols, n)
        return num / torch.sqrt(x.self_hsic * self.self_hsic)


class CKNNA(Metric):
    """CKNNA(K, L) = HSIC_u(M∘K, M∘L) / sqrt(HSIC_u(M_K∘K, M_K∘K) HSIC_u(M_L∘L, M_L∘L)), where M_K[i, j] = 1 when
    j is among the k nearest neighbours of i in K (self excluded) and M = M_K ∘ M_L (Huh et al. 2024,
    Appendix A; unbiased HSIC of Song et al. 2012). Needs N >= 4 and k >= 2. Not symmetric: the estimator's
    last term reads the masked kernels' column sums on one side and row sums on the other."""

    name = "cknna"
    defaults = {"k": 10}
    min_samples = 4
    symmetric = False

    def summarize(self, feats: torch.Tensor, **params: Any) -> KnnKernel:
        self.check(feats)
        if params["k"] < 2:
            raise BadInput(f"cknna: k must be at least 2, got {params['k']}")
        g = gram(feats)
        nb = Neighbours(knn_from_gram(g, params["k"]))
        n = g.shape[0]
        rows = torch.arange(n)[:, None]
        kv = g[rows, nb.idx].double()
        recip = nb.member[nb.idx, rows]
        self_hsic = float(_masked_hsic(kv.view(-1, 1), kv.view(-1, 1), recip.view(-1, 1), nb.idx, n))
        if self_hsic <= 0:
            raise BadInput("cknna: a layer's neighbourhood kernel has no positive self-similarity; score undefined")
        return KnnKernel(nb.idx, kv, recip, self_hsic)

    def summary_nbytes(self, n: int, d: int, **params: Any) -> int:
        return 17 * n * params["k"]  # int64 columns, float64 kernel values, bool reciprocity

    def pair_scores(self, sx: Sequence[KnnKernel], sy: Sequence[KnnKernel], **params: Any) -> torch.Tensor:
        table = _SlotTable(sy)
        return torch.stack([table.scores(x) for x in sx])

    def permute(self, summary: KnnKernel, perm: torch.Tensor) -> KnnKernel:
        return summary.permuted(perm)
