"""Matching units by their correlation over samples: a permutation (one-to-one) or soft matching (an optimal
transport plan; Khosla & Williams 2023), fitted on training folds and scored held out."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

from ..lazy import np, torch
from .folds import FittedMetric, FoldRows, Rows, zscored


class UnitFolds(FoldRows):
    """A layer's folds, each as its units z-scored on the training samples (to fit a matching) and on the
    held-out samples (to score it)."""

    @staticmethod
    def piece(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return zscored(train), zscored(test)


class UnitMatching(FittedMetric):
    """Matching of units by their Pearson correlation over samples; subclasses say how units are matched.

    fit: cross_validated (default): per fold, the matching is fitted on the training samples' correlations
    and scored with the held-out samples' correlations, averaged over folds; fit: in_sample: fitted and
    scored on all samples."""

    fold_rows = UnitFolds

    def in_sample(self, feats: torch.Tensor) -> Rows:
        return Rows(zscored(feats))

    def summary_nbytes(self, n: int, d: int, **params: Any) -> int:
        # the rows, and per fold the z-scored training and held-out rows
        return 8 * n * d * (1 + (params["folds"] if params["fit"] == "cross_validated" else 0))

    @abstractmethod
    def plan(self, corr: np.ndarray) -> np.ndarray:
        """The matching fitted on one Dx x Dy unit-correlation matrix, as weights over unit pairs."""

    def score(self, x: Rows | UnitFolds, y: Rows | UnitFolds) -> float:
        if isinstance(x, Rows):
            corr = (x.x.T @ y.x).numpy()
            return float((self.plan(corr) * corr).sum())
        assert isinstance(x, UnitFolds) and isinstance(y, UnitFolds)
        total = 0.0
        for (xtr, xte), (ytr, yte) in zip(x.pieces, y.pieces, strict=True):
            total += float((self.plan((xtr.T @ ytr).numpy()) * (xte.T @ yte).numpy()).sum())
        return total / len(x.folds)

    def pair_scores(
        self, sx: Sequence[Rows | UnitFolds], sy: Sequence[Rows | UnitFolds], **params: Any
    ) -> torch.Tensor:
        return torch.tensor([[self.score(x, y) for y in sy] for x in sx], dtype=torch.float64)


class Permutation(UnitMatching):
    """Hard one-to-one matching of units: the mean Pearson correlation (over samples) of matched unit pairs,
    maximised over one-to-one assignments (Hungarian algorithm); min(Dx, Dy) pairs are matched. 1 for a copy
    with permuted units."""

    name = "permutation"

    def plan(self, corr: np.ndarray) -> np.ndarray:
        from scipy.optimize import linear_sum_assignment

        rows, cols = linear_sum_assignment(corr, maximize=True)
        out = np.zeros_like(corr)
        out[rows, cols] = 1 / len(rows)
        return out


class SoftMatching(UnitMatching):
    """Soft matching of units (Khosla & Williams 2023): max over transport plans T with uniform marginals
    (rows sum to 1/Dx, columns to 1/Dy) of sum_ij T_ij corr(x_i, y_j); equals `permutation` when Dx = Dy."""

    name = "soft_matching"

    def plan(self, corr: np.ndarray) -> np.ndarray:
        import ot

        wx, wy = np.full(corr.shape[0], 1 / corr.shape[0]), np.full(corr.shape[1], 1 / corr.shape[1])
        return ot.emd(wx, wy, -corr, numItermax=10_000_000)
