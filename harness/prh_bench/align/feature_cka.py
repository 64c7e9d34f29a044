"""Linear CKA and unbiased linear CKA in feature space, for N where the N x N kernels would not fit.

For K = X X^T with column-centred X (n samples), HSIC needs no kernel:
  <HKH, HLH> = ||X^T Y||_F^2                                    (biased HSIC, unnormalised)
and, U-centring being blind to centring the features, with d_i = |x_i|^2, e_i = |y_i|^2 (so that K~1 = -d):
  <U(K), U(L)> = ||X^T Y||_F^2 - n/(n-2) d.e + sum(d) sum(e) / ((n-1)(n-2))   (= n(n-3) HSIC_u)
A pair costs N Dx Dy multiply-adds and a layer O(N D) memory, against O(N^2) for each in the kernel route.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import BadInput
from ..lazy import torch
from .search import at_least_float32

#: bytes of one block of cross-covariances X^T [Y_1 Y_2 ...] held at a time
CROSS_BYTES = 2**27


@dataclass(frozen=True)
class CentredFeatures:
    """A layer's column-centred features in float64, with what its HSIC needs: row norms and its own norm."""

    x: torch.Tensor  # N x D float64
    sq: torch.Tensor  # N: |x_i|^2
    norm: float  # sqrt(<C(K), C(K)>) for the layer's own kernel C(K) (centred or U-centred)
    unbiased: bool

    def permuted(self, perm: torch.Tensor) -> CentredFeatures:
        return CentredFeatures(self.x[perm], self.sq[perm], self.norm, self.unbiased)


def _diag_terms(n: int, dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """The U-centring terms of <U(K), U(L)> beyond ||X^T Y||^2, for rows of d (x layers) and e (y layers)."""
    return -n / (n - 2) * (dx @ dy.T) + dx.sum(1)[:, None] * dy.sum(1)[None, :] / ((n - 1) * (n - 2))


def centred_features(feats: torch.Tensor, unbiased: bool, name: str) -> CentredFeatures:
    x = at_least_float32(feats).double()
    x = x - x.mean(0, keepdim=True)
    sq = (x * x).sum(1)
    inner = float(torch.linalg.matrix_norm(x.T @ x) ** 2)
    if unbiased:
        inner += float(_diag_terms(x.shape[0], sq[None], sq[None]))
    if not inner > 0:
        raise BadInput(f"{name}: the centred kernel is zero (constant features); the score is undefined")
    return CentredFeatures(x, sq, inner**0.5, unbiased)


def feature_cosines(sx: Sequence[CentredFeatures], sy: Sequence[CentredFeatures], eps: float) -> torch.Tensor:
    """Lx x Ly: <C(K), C(L)> / (|C(K)| |C(L)| + eps) for every layer pair, y layers side by side in blocks of
    at most CROSS_BYTES of cross-covariances."""
    n = sx[0].x.shape[0]
    out = torch.empty(len(sx), len(sy), dtype=torch.float64, device=sx[0].x.device)
    for i, a in enumerate(sx):
        j = 0
        while j < len(sy):
            end, width = j, 0
            while end < len(sy) and (end == j or 8 * a.x.shape[1] * (width + sy[end].x.shape[1]) <= CROSS_BYTES):
                width += sy[end].x.shape[1]
                end += 1
            cross = a.x.T @ torch.cat([b.x for b in sy[j:end]], dim=1)
            cols = torch.tensor([b.x.shape[1] for b in sy[j:end]], device=cross.device)
            squares = torch.zeros(end - j, dtype=torch.float64, device=cross.device).index_add_(
                0, torch.repeat_interleave(torch.arange(end - j, device=cross.device), cols), (cross * cross).sum(0)
            )
            out[i, j:end] = squares
            j = end
    if sx[0].unbiased:
        out += _diag_terms(n, torch.stack([a.sq for a in sx]), torch.stack([b.sq for b in sy]))
    norms_x = torch.tensor([a.norm for a in sx], dtype=torch.float64, device=out.device)
    norms_y = torch.tensor([b.norm for b in sy], dtype=torch.float64, device=out.device)
    return out / (norms_x[:, None] * norms_y[None, :] + eps)
