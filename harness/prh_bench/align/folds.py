"""What the fitted metrics share: centred and z-scored units, the cross-validation folds (a seeded shuffle cut in
`folds` parts, the same for every pair of a run) and a layer's rows kept per fold.

The fitted metrics (procrustes, permutation, soft_matching, linear_regression) are cross-validated by default,
as Kapoor et al. report them: the map is fitted on the training folds and scored on the held-out fold. Fitted
and scored on the same samples, a map scores well above zero on unrelated features, the more the wider they are
(procrustes 0.18 / 0.37 / 0.69 for independent Gaussians of width 16 / 64 / 256 at N = 320); `fit: in_sample`
keeps that number under its own name."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Self

from ..errors import BadInput
from ..lazy import torch
from ..params import int_in, one_of
from .metric import Metric


def centered(x: torch.Tensor) -> torch.Tensor:
    x = x.double()
    return x - x.mean(0, keepdim=True)


def zscored(x: torch.Tensor) -> torch.Tensor:
    """Centred units scaled to unit norm over samples; constant units (dead ReLUs) become zero columns."""
    x = centered(x)
    norm = torch.linalg.vector_norm(x, dim=0, keepdim=True)
    return torch.where(norm > 0, x / norm.clamp_min(1e-300), torch.zeros_like(x))


FITS = ("cross_validated", "in_sample")


def cv_folds(n: int, folds: int, seed: int, name: str) -> tuple[torch.Tensor, ...]:
    """Test indices of `folds` folds: a shuffle seeded by `seed` cut in near-equal parts; the same for every
    layer and model of a run, so held-out scores of all pairs use the same splits."""
    if not 2 <= folds <= n // 2:
        raise BadInput(f"{name}: folds must be in [2, N/2], got {folds} for N={n}")
    return tuple(torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tensor_split(folds))


def train_mask(n: int, test: torch.Tensor) -> torch.Tensor:
    train = torch.ones(n, dtype=torch.bool)
    train[test] = False
    return train


def thin_svd(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """U, s, V of x with the directions of numerically zero singular values dropped (relative 1e-10)."""
    u, s, vh = torch.linalg.svd(x, full_matrices=False)
    r = int((s > s[0] * 1e-10).sum()) if len(s) and s[0] > 0 else 0
    return u[:, :r], s[:r], vh[:r].T


@dataclass(frozen=True)
class Rows:
    """Per-layer sample x feature matrix (already transformed as the metric needs)."""

    x: torch.Tensor

    def permuted(self, perm: torch.Tensor) -> Rows:
        return Rows(self.x[perm])


class RowMetric(Metric):
    def permute(self, summary: Rows, perm: torch.Tensor) -> Rows:
        return summary.permuted(perm)


@dataclass
class FoldRows(ABC):
    """A layer's rows, its folds, and one piece per fold made from the fold's training and held-out rows
    (`piece`, by subclass). `of` computes the pieces in summarize, where the pair stage's memory is budgeted; a
    permuted copy (a null's side) computes them only when first read."""

    x: torch.Tensor
    folds: tuple[torch.Tensor, ...]
    _pieces: list[Any] | None = None

    @classmethod
    def of(cls, feats: torch.Tensor, folds: tuple[torch.Tensor, ...]) -> Self:
        rows = cls(feats.double(), folds)
        rows.pieces  # noqa: B018
        return rows

    @property
    def pieces(self) -> list[Any]:
        if self._pieces is None:
            self._pieces = [self.piece(self.x[train_mask(len(self.x), test)], self.x[test]) for test in self.folds]
        return self._pieces

    @staticmethod
    @abstractmethod
    def piece(train: torch.Tensor, test: torch.Tensor) -> Any:
        """What the metric keeps of one fold."""

    def permuted(self, perm: torch.Tensor) -> Self:
        return type(self)(self.x[perm], self.folds)


class FittedMetric(RowMetric):
    """A metric that fits a map between two layers. fit: cross_validated (default): fitted on the training
    folds and scored on the held-out fold, averaged over folds (`fold_rows` keeps a layer's folds); fit:
    in_sample: fitted and scored on all samples (`in_sample` keeps the layer)."""

    defaults = {"fit": "cross_validated", "folds": 5, "seed": 0}
    rules = {"fit": one_of(*FITS), "folds": int_in(2), "seed": int_in(0)}
    fold_rows: type[FoldRows]

    def check_n(self, n: int, **params: Any) -> None:
        super().check_n(n, **params)
        if params["fit"] == "cross_validated":
            cv_folds(n, params["folds"], params["seed"], self.name)

    def summarize(self, feats: torch.Tensor, **params: Any) -> Rows | FoldRows:
        self.check(feats)
        if params["fit"] == "cross_validated":
            return self.fold_rows.of(feats, cv_folds(feats.shape[0], params["folds"], params["seed"], self.name))
        return self.in_sample(feats)

    @abstractmethod
    def in_sample(self, feats: torch.Tensor) -> Rows:
        """A layer's summary for fitting and scoring on all samples."""
