"""Orthogonal Procrustes similarity (Williams et al. 2021), fitted on training folds and scored held out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..lazy import torch
from .folds import FittedMetric, FoldRows, Rows, centered, thin_svd


@dataclass(frozen=True)
class FoldBasis:
    """One fold of a layer: its training rows in their own basis (B = U S of the centred training rows X_tr =
    U S W^T), the held-out rows in the same basis (T = X_test W, centred by the training mean) and |X_test|."""

    b: torch.Tensor
    t: torch.Tensor
    test_norm: float


class FoldBases(FoldRows):
    """A layer's folds, each as its training and held-out rows in the training rows' basis."""

    @staticmethod
    def piece(train: torch.Tensor, test: torch.Tensor) -> FoldBasis:
        mu = train.mean(0, keepdim=True)
        u, s, w = thin_svd(train - mu)
        xte = test - mu
        return FoldBasis(u * s, xte @ w, float(torch.linalg.matrix_norm(xte)))


def _held_out_procrustes(fx: FoldBasis, fy: FoldBasis) -> float:
    """<X_test, Y_test Q> / (|X_test| |Y_test|) with Q = argmax <X_tr, Y_tr Q>: in the training bases,
    B_x^T B_y = P S R^T gives Q's action P R^T, and the held-out inner product is sum((T_x^T T_y) * P R^T)."""
    if fx.test_norm == 0 or fy.test_norm == 0 or not fx.b.shape[1] or not fy.b.shape[1]:
        return 0.0
    p, _, rh = torch.linalg.svd(fx.b.T @ fy.b, full_matrices=False)
    return float(((fx.t.T @ fy.t) * (p @ rh)).sum()) / (fx.test_norm * fy.test_norm)


class Procrustes(FittedMetric):
    """Orthogonal Procrustes similarity: max over orthogonal Q of <X, Y Q> / (|X| |Y|) for centred X and Y, 1 for
    a rotated (and scaled, shifted) copy; widths may differ (Q semi-orthogonal).

    fit: cross_validated (default): per fold, Q is fitted on the training samples (both centred by the
    training means) and the score is <X_test, Y_test Q> / (|X_test| |Y_test|) on the held-out samples (centred
    by the training means), averaged over folds. Where a layer is wider than the training set, Q is fixed on
    the span of the training samples and zero off it. fit: in_sample: the nuclear norm of X^T Y for X, Y
    centred and scaled to unit norm on all samples."""

    name = "procrustes"
    fold_rows = FoldBases

    def in_sample(self, feats: torch.Tensor) -> Rows:
        x = centered(feats)
        x = x / torch.linalg.matrix_norm(x)
        if x.shape[1] > x.shape[0]:  # same singular values of X^T Y from an N-wide equivalent: X V = U S
            u, s, _ = torch.linalg.svd(x, full_matrices=False)
            x = u * s
        return Rows(x)

    def summary_nbytes(self, n: int, d: int, **params: Any) -> int:
        # the rows, and per fold the training rows and the held-out rows in a basis of rank <= min(n, d)
        return 8 * n * d + (8 * params["folds"] * n * min(n, d) if params["fit"] == "cross_validated" else 0)

    def pair_scores(
        self, sx: Sequence[Rows | FoldBases], sy: Sequence[Rows | FoldBases], **params: Any
    ) -> torch.Tensor:
        out = torch.empty(len(sx), len(sy), dtype=torch.float64)
        for a, x in enumerate(sx):
            for b, y in enumerate(sy):
                if isinstance(x, FoldBases):
                    assert isinstance(y, FoldBases)  # one fit for every layer of a run
                    out[a, b] = sum(
                        (_held_out_procrustes(fx, fy) for fx, fy in zip(x.pieces, y.pieces, strict=True)), 0.0
                    ) / len(x.folds)
                else:
                    out[a, b] = torch.linalg.svdvals(x.x.T @ y.x).sum()
        return out
