"""Kernel-alignment metrics: CKA (Kornblith et al. 2019; linear or RBF kernel), unbiased CKA (with the
unbiased HSIC estimator of Song et al. 2012) and CKNNA (Huh et al. 2024, Appendix A: unbiased CKA restricted
to mutual k-nearest neighbours).

Per layer the Gram matrix is computed once, in the features' precision (float32 features give a float32
Gram, half precision is upcast to float32) and centred and normalised in float64, so every pair is an inner
product of two flattened N x N matrices: one matrix product scores all layer pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import BadInput
from .knn import Neighbours, gram, knn_from_gram
from .metric import Metric


def kernel(x: torch.Tensor, kind: str, sigma: float) -> torch.Tensor:
    g = gram(x).double()
    if kind == "linear":
        return g
    if kind == "rbf":
        sq = g.diagonal()
        d2 = (sq[:, None] + sq[None, :] - 2 * g).clamp_min(0)
        return torch.exp(-d2 / (2 * sigma**2))
    raise BadInput(f"cka: kernel must be 'linear' or 'rbf', got {kind!r}")


def center(k: torch.Tensor) -> torch.Tensor:
    """H K H with H = I - 11^T / n."""
    return k - k.mean(0, keepdim=True) - k.mean(1, keepdim=True) + k.mean()


def u_center(k: torch.Tensor) -> torch.Tensor:
    """U-centring (Szekely & Rizzo 2014): <U(K), U(L)> / (n (n - 3)) is the unbiased HSIC of Song et al. 2012."""
    n = k.shape[0]
    k = k.clone().fill_diagonal_(0)
    rows = k.sum(1)
    u = k - rows[:, None] / (n - 2) - rows[None, :] / (n - 2) + k.sum() / ((n - 1) * (n - 2))
    return u.fill_diagonal_(0)


@dataclass(frozen=True)
class FlatKernel:
    """A centred kernel, flattened and scaled to unit norm: pair scores are plain inner products."""

    unit: torch.Tensor  # N*N float64
    n: int

    def permuted(self, perm: torch.Tensor) -> FlatKernel:
        m = self.unit.view(self.n, self.n)[perm][:, perm]
        return FlatKernel(m.reshape(-1), self.n)


def _unit(m: torch.Tensor, name: str) -> FlatKernel:
    norm = torch.linalg.vector_norm(m)
    if norm == 0:
        raise BadInput(f"{name}: the centred kernel is zero (constant features); the score is undefined")
    return FlatKernel((m / norm).reshape(-1), m.shape[0])


def _inner(sx: Sequence[FlatKernel], sy: Sequence[FlatKernel]) -> torch.Tensor:
    return torch.stack([s.unit for s in sx]) @ torch.stack([s.unit for s in sy]).T


class CKA(Metric):
    """CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)), HSIC(K, L) = tr(K H L H) (biased estimator);
    K = X X^T ('linear') or exp(-|x_i - x_j|^2 / (2 sigma^2)) ('rbf')."""

    name = "cka"
    defaults = {"kernel": "linear", "sigma": 1.0}

    def summarize(self, feats: torch.Tensor, **params: Any) -> FlatKernel:
        self.check(feats)
        return _unit(center(kernel(feats, params["kernel"], params["sigma"])), self.name)

    def pair_scores(self, sx: Sequence[FlatKernel], sy: Sequence[FlatKernel], **params: Any) -> torch.Tensor:
        return _inner(sx, sy)

    def permute(self, summary: FlatKernel, perm: torch.Tensor) -> FlatKernel:
        return summary.permuted(perm)


class UnbiasedCKA(CKA):
    """CKA with the unbiased HSIC estimator of Song et al. 2012 (linear kernel); needs N >= 4."""

    name = "unbiased_cka"
    defaults = {}
    min_samples = 4

    def summarize(self, feats: torch.Tensor, **params: Any) -> FlatKernel:
        self.check(feats)
        return _unit(u_center(gram(feats).double()), self.name)


@dataclass(frozen=True)
class KnnKernel:
    """What CKNNA needs of one layer: the Gram matrix, the neighbour lists, and derived per-layer terms."""

    k: torch.Tensor  # N x N float64 Gram
    nb: Neighbours
    member: torch.Tensor  # N x N bool
    self_hsic: float  # unbiased HSIC of the layer with itself under its own neighbour mask

    def permuted(self, perm: torch.Tensor) -> KnnKernel:
        nb = self.nb.permuted(perm)
        return KnnKernel(self.k[perm][:, perm], nb, nb.member, self.self_hsic)


def _masked_hsic(kv: torch.Tensor, lv: torch.Tensor, hit: torch.Tensor, recip: torch.Tensor, cols: torch.Tensor,
                 n: int) -> torch.Tensor:
    """Unbiased HSIC(M∘K, M∘L) for the mask M = hits at the x neighbour positions (i, cols[i, s]).

    kv, lv: K and L at those positions (... x N x k); hit: the position is in M; recip: (j, i) is in M too.
    HSIC_u(A, B) = [sum_ij A_ij B_ji + sum(A) sum(B) / ((n-1)(n-2)) - 2 colsum(A).colsum(B) / (n-2)] / (n(n-3))."""
    a, b = kv * hit, lv * hit
    t1 = (a * b * recip).sum(dim=(-2, -1))
    t2 = a.sum(dim=(-2, -1)) * b.sum(dim=(-2, -1)) / ((n - 1) * (n - 2))
    flat_cols = cols.expand_as(a).reshape(*a.shape[:-2], -1)
    ca = torch.zeros(*a.shape[:-2], n, dtype=a.dtype).scatter_add_(-1, flat_cols, a.reshape(*a.shape[:-2], -1))
    cb = torch.zeros(*b.shape[:-2], n, dtype=b.dtype).scatter_add_(-1, flat_cols, b.reshape(*b.shape[:-2], -1))
    t3 = 2 * (ca * cb).sum(-1) / (n - 2)
    return (t1 + t2 - t3) / (n * (n - 3))


class CKNNA(Metric):
    """CKNNA(K, L) = HSIC_u(M∘K, M∘L) / sqrt(HSIC_u(M_K∘K, M_K∘K) HSIC_u(M_L∘L, M_L∘L)), where M_K[i, j] = 1 when
    j is among the k nearest neighbours of i in K (self excluded) and M = M_K ∘ M_L (Huh et al. 2024, eq. in
    Appendix A; unbiased HSIC of Song et al. 2012). Needs N >= 4 and k >= 2."""

    name = "cknna"
    defaults = {"k": 10}
    min_samples = 4

    def summarize(self, feats: torch.Tensor, **params: Any) -> KnnKernel:
        self.check(feats)
        if params["k"] < 2:
            raise BadInput(f"cknna: k must be at least 2, got {params['k']}")
        g = gram(feats)
        nb = Neighbours(knn_from_gram(g, params["k"]))
        k = g.double()
        member = nb.member
        n = k.shape[0]
        rows = torch.arange(n)[:, None]
        kv = k[rows, nb.idx]
        recip = member[nb.idx, rows]
        hit = torch.ones_like(recip)
        self_hsic = float(_masked_hsic(kv, kv, hit, recip, nb.idx, n))
        if self_hsic <= 0:
            raise BadInput("cknna: a layer's neighbourhood kernel has no positive self-similarity; score undefined")
        return KnnKernel(k, nb, member, self_hsic)

    def pair_scores(self, sx: Sequence[KnnKernel], sy: Sequence[KnnKernel], **params: Any) -> torch.Tensor:
        n = sx[0].k.shape[0]
        rows = torch.arange(n)[:, None]
        out = torch.empty(len(sx), len(sy), dtype=torch.float64)
        for a, x in enumerate(sx):
            # Everything at x's neighbour positions (i, j = idx[i, s]), for all y layers at once.
            cols = x.nb.idx
            kv = x.k[rows, cols]  # N x k
            recip_x = x.member[cols, rows]  # (j, i) in M_K
            my = torch.stack([y.member for y in sy])  # Ly x N x N
            hit = my[:, rows, cols]  # (i, j) in M_L
            recip = recip_x & my[:, cols, rows]  # (j, i) in M_K and M_L
            lv = torch.stack([y.k[rows, cols] for y in sy])
            num = _masked_hsic(kv.expand_as(lv), lv, hit.double(), recip.double(), cols, n)
            denom = torch.sqrt(torch.tensor([x.self_hsic * y.self_hsic for y in sy], dtype=torch.float64))
            out[a] = num / denom
        return out

    def permute(self, summary: KnnKernel, perm: torch.Tensor) -> KnnKernel:
        return summary.permuted(perm)
