"""Metrics that compare the spaces two representations span or map one onto the other: SVCCA (Raghu et al.
2017), cross-validated linear regression, orthogonal Procrustes, permutation and soft matching of units
(Kapoor, Srivastava & Khosla; Williams et al. 2021; Khosla & Williams 2023).

The fitted metrics (procrustes, permutation, soft_matching, linear_regression) are cross-validated by default,
as Kapoor et al. report them: the map is fitted on the training folds and scored on the held-out fold, and the
folds (a seeded shuffle cut in `folds` parts) are the same for every pair. Fitted and scored on the same
samples, a map scores well above zero on unrelated features, the more the wider they are (procrustes 0.18 /
0.37 / 0.69 for independent Gaussians of width 16 / 64 / 256 at N = 320); `fit: in_sample` keeps that
number under its own name."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Self

from ..errors import BadInput
from ..lazy import np, torch
from ..params import int_in, number_in, one_of
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


class SVCCA(RowMetric):
    """Mean of the canonical correlations between the top `dims` singular directions of each representation
    (units standardised first). Exact SVD and exact CCA (the singular values of U_A^T U_B); the paper's code uses
    a randomised SVD and an iterative CCA, which agree up to their approximation error."""

    name = "svcca"
    defaults = {"dims": 10}
    rules = {"dims": int_in(1)}
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

    def pair_scores(self, sx: Sequence[Rows | FoldBases], sy: Sequence[Rows | FoldBases], **params: Any) -> torch.Tensor:
        out = torch.empty(len(sx), len(sy), dtype=torch.float64)
        for a, x in enumerate(sx):
            for b, y in enumerate(sy):
                if isinstance(x, FoldBases):
                    assert isinstance(y, FoldBases)  # one fit for every layer of a run
                    out[a, b] = sum((_held_out_procrustes(fx, fy) for fx, fy in zip(x.pieces, y.pieces)), 0.0) / len(x.folds)
                else:
                    out[a, b] = torch.linalg.svdvals(x.x.T @ y.x).sum()
        return out


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
        for (xtr, xte), (ytr, yte) in zip(x.pieces, y.pieces):
            total += float((self.plan((xtr.T @ ytr).numpy()) * (xte.T @ yte).numpy()).sum())
        return total / len(x.folds)

    def pair_scores(self, sx: Sequence[Rows | UnitFolds], sy: Sequence[Rows | UnitFolds], **params: Any) -> torch.Tensor:
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
    rules = {"folds": int_in(2), "seed": int_in(0),
             "alpha": (lambda v: v == "gcv" or number_in(0)[0](v), "'gcv' or a number >= 0")}
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
                    alpha = params["alpha"] if params["alpha"] != "gcv" else ridge_gcv(p.s, (z**2).sum(1), total, len(yc))
                    pred = (p.a * (p.s / (p.s**2 + alpha))) @ z
                    sse[a] += float(((rte - pred) ** 2).sum())
            out[:, b] = 1 - sse / sst
        return out

    def permute(self, summary: Regression, perm: torch.Tensor) -> Regression:
        return summary.permuted(perm)
