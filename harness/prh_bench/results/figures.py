"""The figures of a run and of a model pair, and the helpers every figure uses: matplotlib on the Agg backend
(files only), labels as text (never TeX), readable from 3 to 100 models. A leaderboard's own figures are
leaderboard_figures.py's."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (files only, no display): every figure of a run or leaderboard."""
    import matplotlib

    matplotlib.use("Agg")
    # Labels are model ids and metric names, never TeX: '$' in an id is text (mathtext raised on it).
    matplotlib.rcParams["text.parse_math"] = False
    import matplotlib.pyplot as plt

    return plt


#: models beyond which a heatmap's cells carry no numbers (they would not fit) and its labels shrink
NUMBERED_CELLS = 24


def matrix_figure(mat: pd.DataFrame, title: str, colorbar: str = "") -> Any:
    """A model x model heatmap that stays readable from 3 to 100 models: cell numbers up to NUMBERED_CELLS
    models, labels shrinking with the count, and at most about 24 inches a side (a 78-model zoo)."""
    plt = pyplot()
    values = mat.to_numpy(dtype=float)
    n = len(mat)
    side = min(24.0, 2.5 + 0.45 * n)
    fig, ax = plt.subplots(figsize=(side, side * 0.9))
    im = ax.imshow(values, cmap="viridis")
    font = 7 if n <= 40 else max(3.5, 7 * 40 / n)
    ax.set_xticks(
        range(n), mat.columns, rotation=60 if n <= 40 else 90, ha="right" if n <= 40 else "center", fontsize=font
    )
    ax.set_yticks(range(n), mat.index, fontsize=font)
    if n <= NUMBERED_CELLS:
        middle = np.nanmean(values)
        for i in range(n):
            for j in range(n):
                if np.isfinite(values[i, j]):
                    ax.text(
                        j,
                        i,
                        f"{values[i, j]:.2f}",
                        ha="center",
                        va="center",
                        fontsize=max(4, 7 - n // 6),
                        color="white" if values[i, j] < middle else "black",
                    )
    fig.colorbar(im, ax=ax, fraction=0.046, label=colorbar)
    ax.set_title(title, fontsize=8 if n > NUMBERED_CELLS else 10)
    fig.tight_layout()
    return fig


def heatmap(mat: pd.DataFrame, title: str, path: Path) -> None:
    """A run's matrix heatmap, as one PNG."""
    fig = matrix_figure(mat, title)
    fig.savefig(path, dpi=120)
    pyplot().close(fig)


def save(fig: Any, stem: Path) -> list[Path]:
    """The figure as STEM.png and STEM.svg, closed."""
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    for p in paths:
        fig.savefig(p, dpi=130, bbox_inches="tight")
    pyplot().close(fig)
    return paths


def classical_mds(d: np.ndarray, dims: int = 2) -> tuple[np.ndarray, float]:
    """Torgerson's classical MDS of a distance matrix into `dims` dimensions (the top eigenvectors of the
    double-centred squared distances), and the share of the positive spectrum they keep (1: the distances are
    exactly `dims`-D). Deterministic, unlike the iterative SMACOF of scikit-learn (whose API is changing)."""
    n = len(d)
    j = np.eye(n) - 1 / n
    b = -0.5 * j @ (d**2) @ j
    w, v = np.linalg.eigh(b)
    top = np.argsort(w)[::-1][:dims]
    kept = np.clip(w[top], 0, None)
    return v[:, top] * np.sqrt(kept), float(kept.sum() / np.clip(w, 0, None).sum())


def sweep_figure(
    table: pd.DataFrame,
    best: pd.DataFrame,
    metric: str,
    title: str,
    reference: str | None,
    transform: str | None,
    by_n: bool,
) -> Any:
    """A sweep's mean and spread of the best score over model pairs per condition (`table`, one row each): against
    the transform level, or against N on a log axis, with the chance level and the reference's pairs drawn, when
    the sweep varies the number of samples."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for (ds, level, k), part in table.groupby(["dataset", table.level.fillna(-1), table.k.fillna(-1)], sort=False):
        name = " ".join([ds] + ([f"{transform}={level:g}"] if level != -1 else []) + ([f"k={k:g}"] if k != -1 else []))
        if by_n:
            ax.errorbar(part.n_samples, part["mean"], yerr=part["std"], marker="o", capsize=3, label=f"{name}: mean")
            ax.plot(part.n_samples, part.chance, "--", color="grey", label=f"{name}: chance")
        else:
            x = part.level if part.level.notna().all() else range(len(part))
            ax.errorbar(list(x), part["mean"], yerr=part["std"], marker="o", capsize=3, label=name)
    if by_n:
        # One line per model paired with the reference, under the first k of a sweep of k.
        first = table[table.k.isna() | (table.k == table.k.iloc[0])]
        pairs = (
            best[(best.metric == metric) & ((best.model_x == reference) | (best.model_y == reference))]
            if reference
            else best[:0]
        )
        for (x, y), part in pairs.groupby(["model_x", "model_y"], sort=False):
            at = part.set_index("condition").score.reindex(first.condition)
            ax.plot(
                first.n_samples, at.to_numpy(), lw=0.8, alpha=0.7, label=f"{y if x == reference else x} vs {reference}"
            )
        ax.set_xscale("log")
        # Plain tick labels: log axes label with mathtext, which is off (ids are never TeX).
        ax.set_xticks(table.n_samples.unique(), [f"{n:,}" for n in table.n_samples.unique()], rotation=30, ha="right")
        ax.xaxis.set_minor_formatter(plt.NullFormatter())
        ax.set_xlabel("N (samples)")
    elif table.level.isna().all():
        ax.set_xticks(range(len(table)), table.condition, rotation=20, ha="right")
    else:
        ax.set_xlabel(transform or "level")
    ax.set_ylabel(f"{metric}, best over layer pairs")
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def layer_pair_figure(grid: pd.DataFrame, depth: pd.DataFrame, title: str, metric: str) -> Figure:
    """One model pair: its layer x layer scores (`grid`, x's layers as rows) beside the best score of each of x's
    layers by relative depth (`depth`). Made without pyplot: a notebook shows it, no backend is switched."""
    from matplotlib.figure import Figure

    x, y = grid.index.name, grid.columns.name
    fig = Figure(figsize=(11, 4.5), layout="tight")
    left, right = fig.subplots(1, 2)
    image = left.imshow(grid.to_numpy(float), aspect="auto", cmap="viridis")
    fig.colorbar(image, ax=left)
    left.set_yticks(range(len(grid)), grid.index, fontsize=6)
    left.set_xticks(range(len(grid.columns)), grid.columns, fontsize=6, rotation=90)
    left.set_ylabel(x)
    left.set_xlabel(y)
    right.plot(depth.depth, depth.best_score, marker="o")
    right.set_xlabel(f"relative depth in {x}")
    right.set_ylabel(f"best {metric} over {y}'s layers")
    fig.suptitle(title)
    return fig
