"""Cross-validated linear regression (ridge, its penalty by generalised cross-validation): how much of one
layer a linear map of the other predicts on held-out samples."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..lazy import torch
from ..params import int_in, number_in
from .folds import FoldRows, cv_folds, thin_svd, train_mask
from .metric import Metric

#: ridge penalties tried by generalised cross-validation, relative to the mean eigenvalue of X_tr^T X_tr
GCV_GRID = tuple(10.0 ** (e / 2) for e in range(-12, 7))


@dataclass(frozen=True)
class FoldPredictor:
    """One fold of a layer as predictor: the centred training rows X_tr = U S V^T (numerical rank r) and the
    held-out rows in the same basis, A = (X_test - training mean) V."""

    u: torch.Tensor
    s: torch.Tensor
    a: torch.Tensor


class Regression(FoldRows):
    """A layer's rows (`x`, as target) and its folds as predictor (a permuted copy, a null's target, computes
    these only if it is ever used as predictor)."""

    @staticmethod
    def piece(train: torch.Tensor, test: torch.Tensor) -> FoldPredictor:
        mu = train.mean(0, keepdim=True)
        u, s, v = thin_svd(train - mu)
        return FoldPredictor(u, s, (test - mu) @ v)


def ridge_gcv(s: torch.Tensor, z2: torch.Tensor, total: float, n: int) -> float:
    """The ridge penalty of GCV_GRID (scaled by the mean eigenvalue s^2) that minimises generalised
    cross-validation (Golub, Heath & Wahba 1979) of a fit with intercept on n training rows:
    GCV(a) = n |Y_c - H Y_c|^2 / (n - 1 - tr H_c)^2, where H_c = U diag(g) U^T, g = s^2 / (s^2 + a), so that
    |Y_c - H Y_c|^2 = total - sum_k (2 g_k - g_k^2) z2_k with z2 = the squared row norms of U^T Y_c and total =
    |Y_c|^2. Ties go to the larger penalty."""
    if not len(s):
        return 0.0
    lam = s**2
    alphas = lam.mean() * torch.tensor(GCV_GRID, dtype=lam.dtype)
    g = lam[None, :] / (lam[None, :] + alphas[:, None])  # grid x r
    sse = (total - ((2 * g - g**2) * z2[None, :]).sum(1)).clamp_min(0)
    dof = n - 1 - g.sum(1)
    gcv = torch.where(dof > 1e-9 * n, n * sse / dof.clamp_min(1e-300) ** 2, torch.full_like(sse, float("inf")))
    best = gcv.min()
    return float(alphas[int((gcv <= best * (1 + 1e-12)).nonzero().max())])


class LinearRegression(Metric):
    """Cross-validated linear predictability of Y from X (with intercept): R^2 = 1 - SSE / SST pooled over
    output units and `folds` folds (SST around each test fold's mean). Ridge penalty `alpha`: 'gcv' (default)
    chooses it per layer pair and fold by generalised cross-validation on the training rows over a log grid
    (1e-6 to 1e3 times the mean eigenvalue of X_tr^T X_tr, half-decade steps); a number fixes it (0: least
    squares, minimum norm, which explodes near the interpolation threshold N_train ~ width). Invariant to
    invertible affine maps of X when N > Dx and alpha = 0. Not symmetric."""

    name = "linear_regression"
    defaults = {"folds": 5, "alpha": "gcv", "seed": 0}
    rules = {
        "folds": int_in(2),
        "seed": int_in(0),
        "alpha": (lambda v: v == "gcv" or number_in(0)[0](v), "'gcv' or a number >= 0"),
    }
    symmetric = False

    def check_n(self, n: int, **params: Any) -> None:
        super().check_n(n, **params)
        cv_folds(n, params["folds"], params["seed"], self.name)

    def summarize(self, feats: torch.Tensor, **params: Any) -> Regression:
        self.check(feats)
        return Regression.of(feats, cv_folds(feats.shape[0], params["folds"], params["seed"], self.name))

    def summary_nbytes(self, n: int, d: int, **params: Any) -> int:
        # the rows, and per fold U (n_train x r) and A (n_test x r), r <= min(n, d)
        return 8 * n * d + 8 * params["folds"] * n * min(n, d)

    def pair_scores(self, sx: Sequence[Regression], sy: Sequence[Regression], **params: Any) -> torch.Tensor:
        out = torch.empty(len(sx), len(sy), dtype=torch.float64)
        for b, ys in enumerate(sy):
            y, sse = ys.x, torch.zeros(len(sx), dtype=torch.float64)
            sst = 0.0
            for f, test in enumerate(ys.folds):
                train = train_mask(len(y), test)
                mu = y[train].mean(0, keepdim=True)
                yc, rte = y[train] - mu, y[test] - mu
                total = float((yc**2).sum())
                sst += float(((y[test] - y[test].mean(0, keepdim=True)) ** 2).sum())
                for a, xs in enumerate(sx):
                    p = xs.pieces[f]
                    z = p.u.T @ yc
                    alpha = (
                        params["alpha"] if params["alpha"] != "gcv" else ridge_gcv(p.s, (z**2).sum(1), total, len(yc))
                    )
                    pred = (p.a * (p.s / (p.s**2 + alpha))) @ z
                    sse[a] += float(((rte - pred) ** 2).sum())
            out[:, b] = 1 - sse / sst
        return out

    def permute(self, summary: Regression, perm: torch.Tensor) -> Regression:
        return summary.permuted(perm)
