"""Metrics that compare the spaces two representations span or map one onto the other: SVCCA (Raghu et al.
2017), cross-validated linear regression, orthogonal Procrustes, permutation and soft matching of units
(Kapoor, Srivastava & Khosla; Williams et al. 2021; Khosla & Williams 2023)."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import BadInput
from .metric import Metric


def centered(x: torch.Tensor) -> torch.Tensor:
    x = x.double()
    return x - x.mean(0, keepdim=True)


def zscored(x: torch.Tensor) -> torch.Tensor:
    """Centred units scaled to unit norm over samples; constant units (dead ReLUs) become zero columns."""
    x = centered(x)
    norm = torch.linalg.vector_norm(x, dim=0, keepdim=True)
    return torch.where(norm > 0, x / norm.clamp_min(1e-300), torch.zeros_like(x))


@dataclass(frozen=True)
class Rows:
    """Per-layer sample x feature matrix (already transformed as the metric needs)."""

    x: torch.Tensor

    def permuted(self, perm: torch.Tensor) -> Rows:
        return Rows(self.x[perm])


class RowMetric(Metric):
    def permute(self, summary: Rows, perm: torch.Tensor) -> Rows:
        return summary.permuted(perm)


class SVCCA(RowMetric):
    """Mean of the canonical correlations between the top `dims` singular directions of each representation
    (units standardised first). Exact SVD and exact CCA (the singular values of U_A^T U_B); the paper's code uses
    a randomised SVD and an iterative CCA, which agree up to their approximation error."""

    name = "svcca"
    defaults = {"dims": 10}
    min_samples = 3

    def summarize(self, feats: torch.Tensor, **params: Any) -> Rows:
        self.check(feats)
        z = centered(feats)
        std = z.std(0, keepdim=True)
        z = torch.where(std > 0, z / std.clamp_min(1e-300), torch.zeros_like(z))
        u, s, _ = torch.linalg.svd(z, full_matrices=False)
        d = params["dims"]
        if not 1 <= d <= int((s > s[0] * 1e-10).sum()):
            raise BadInput(f"svcca: dims={d} exceeds the rank of a layer ({int((s > s[0] * 1e-10).sum())})")
        return Rows(u[:, :d])

    def summary_nbytes(self, n: int, d: int, **params: Any) -> int:
        return 4 * n * params["dims"]

    def pair_scores(self, sx: Sequence[Rows], sy: Sequence[Rows], **params: Any) -> torch.Tensor:
        ux, uy = torch.stack([s.x for s in sx]), torch.stack([s.x for s in sy])
        cross = torch.einsum("and,bne->abde", ux, uy)
        return torch.linalg.svdvals(cross).clamp(max=1.0).mean(-1)


class Procrustes(RowMetric):
    """max over orthogonal Q of <X, Y Q> for centred X, Y scaled to unit Frobenius norm, i.e. the nuclear norm
    of X^T Y; 1 for a rotated (and scaled, shifted) copy. Widths may differ (Q semi-orthogonal)."""

    name = "procrustes"
    defaults = {}

    def summarize(self, feats: torch.Tensor, **params: Any) -> Rows:
        self.check(feats)
        x = centered(feats)
        x = x / torch.linalg.matrix_norm(x)
        if x.shape[1] > x.shape[0]:  # same singular values of X^T Y from an N-wide equivalent: X V = U S
            u, s, _ = torch.linalg.svd(x, full_matrices=False)
            x = u * s
        return Rows(x)

    def pair_scores(self, sx: Sequence[Rows], sy: Sequence[Rows], **params: Any) -> torch.Tensor:
        out = torch.empty(len(sx), len(sy), dtype=torch.float64)
        for a, x in enumerate(sx):
            for b, y in enumerate(sy):
                out[a, b] = torch.linalg.svdvals(x.x.T @ y.x).sum()
        return out


class UnitMatching(RowMetric):
    """Matching of units by their Pearson correlation over samples; subclasses say how units are matched."""

    defaults = {}

    def summarize(self, feats: torch.Tensor, **params: Any) -> Rows:
        self.check(feats)
        return Rows(zscored(feats))

    @abstractmethod
    def match(self, corr: np.ndarray) -> float:
        """The score of one Dx x Dy unit-correlation matrix."""

    def pair_scores(self, sx: Sequence[Rows], sy: Sequence[Rows], **params: Any) -> torch.Tensor:
        return torch.tensor([[self.match((x.x.T @ y.x).numpy()) for y in sy] for x in sx], dtype=torch.float64)


class Permutation(UnitMatching):
    """Hard one-to-one matching of units: the mean Pearson correlation (over samples) of matched unit pairs,
    maximised over one-to-one assignments (Hungarian algorithm); min(Dx, Dy) pairs are matched. 1 for a copy
    with permuted units."""

    name = "permutation"

    def match(self, corr: np.ndarray) -> float:
        from scipy.optimize import linear_sum_assignment

        rows, cols = linear_sum_assignment(corr, maximize=True)
        return float(corr[rows, cols].mean())


class SoftMatching(UnitMatching):
    """Soft matching of units (Khosla & Williams 2023): max over transport plans T with uniform marginals
    (rows sum to 1/Dx, columns to 1/Dy) of sum_ij T_ij corr(x_i, y_j); equals `permutation` when Dx = Dy."""

    name = "soft_matching"

    def match(self, corr: np.ndarray) -> float:
        import ot

        wx, wy = np.full(corr.shape[0], 1 / corr.shape[0]), np.full(corr.shape[1], 1 / corr.shape[1])
        return float((ot.emd(wx, wy, -corr, numItermax=10_000_000) * corr).sum())


@dataclass(frozen=True)
class Regression:
    """A layer as predictor (the per-fold operators mapping centred training targets to test predictions)
    and as target (its centred rows)."""

    hats: tuple[torch.Tensor, ...]
    folds: tuple[torch.Tensor, ...]
    y: torch.Tensor

    def permuted(self, perm: torch.Tensor) -> Regression:
        return Regression(self.hats, self.folds, self.y[perm])


class LinearRegression(Metric):
    """Cross-validated linear predictability of Y from X (with intercept): R^2 = 1 - SSE / SST pooled over
    output units and `folds` folds (SST around each test fold's mean). Ridge `alpha` (0: least squares, minimum
    norm). Invariant to invertible affine maps of X when N > Dx and alpha = 0. Not symmetric."""

    name = "linear_regression"
    defaults = {"folds": 5, "alpha": 0.0, "seed": 0}
    symmetric = False

    def summarize(self, feats: torch.Tensor, **params: Any) -> Regression:
        self.check(feats)
        x = feats.double()
        n, nf = x.shape[0], params["folds"]
        if not 2 <= nf <= n // 2:
            raise BadInput(f"linear_regression: folds must be in [2, N/2], got {nf} for N={n}")
        order = torch.randperm(n, generator=torch.Generator().manual_seed(params["seed"]))
        folds = tuple(order.tensor_split(nf))
        hats = []
        for test in folds:
            train = torch.ones(n, dtype=torch.bool)
            train[test] = False
            xtr, xte = x[train], x[test]
            mu = xtr.mean(0, keepdim=True)
            xtr, xte = xtr - mu, xte - mu
            if params["alpha"] > 0:
                ridge = xtr @ xtr.T + params["alpha"] * torch.eye(len(xtr), dtype=x.dtype)
                hats.append(torch.linalg.solve(ridge, xtr @ xte.T).T)  # X_te X_tr^T (X_tr X_tr^T + a I)^-1
            else:
                hats.append(xte @ torch.linalg.pinv(xtr))
        return Regression(tuple(hats), folds, x)

    def summary_nbytes(self, n: int, d: int, **params: Any) -> int:
        return 8 * n * (n + d)  # per fold a test x train operator (n^2 (1 - 1/folds) in all), and the rows

    def pair_scores(self, sx: Sequence[Regression], sy: Sequence[Regression], **params: Any) -> torch.Tensor:
        out = torch.empty(len(sx), len(sy), dtype=torch.float64)
        n = sx[0].y.shape[0]
        for b, ys in enumerate(sy):
            y = ys.y
            for a, xs in enumerate(sx):
                sse = sst = 0.0
                for hat, test in zip(xs.hats, xs.folds):
                    train = torch.ones(n, dtype=torch.bool)
                    train[test] = False
                    ytr, yte = y[train], y[test]
                    mu = ytr.mean(0, keepdim=True)
                    pred = hat @ (ytr - mu) + mu
                    sse += float(((yte - pred) ** 2).sum())
                    sst += float(((yte - yte.mean(0, keepdim=True)) ** 2).sum())
                out[a, b] = 1 - sse / sst
        return out

    def permute(self, summary: Regression, perm: torch.Tensor) -> Regression:
        return summary.permuted(perm)
