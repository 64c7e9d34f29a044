"""A leaderboard's figures: its clustered heatmap, alignment against each downstream score, and the models
embedded in 2-D by their alignment."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .figures import classical_mds, matrix_figure, pyplot, save
from .leaderboard import Leaderboard


def cluster_order(mat: pd.DataFrame) -> list[str]:
    """Models ordered by average-linkage clustering of 1 - alignment (leaves of the dendrogram)."""
    from scipy.cluster.hierarchy import leaves_list, linkage
    from scipy.spatial.distance import squareform

    if len(mat) < 3:
        return list(mat.index)
    d = (1 - mat.to_numpy(dtype=float)).clip(0)
    np.fill_diagonal(d, 0)
    d = (d + d.T) / 2
    return [mat.index[i] for i in leaves_list(linkage(squareform(np.nan_to_num(d, nan=1.0)), "average"))]


def leaderboard_heatmap(lb: Leaderboard, stem: Path) -> list[Path]:
    order = cluster_order(lb.matrix)
    title = f"{lb.suite.id}: {lb.metric}, max over layer pairs; rows and columns ordered by average-linkage clustering"
    return save(matrix_figure(lb.matrix.loc[order, order], title, lb.metric), stem)


def _fit_with_band(ax, x: np.ndarray, y: np.ndarray, color: str, label: str) -> None:
    """A least-squares line over x's range and its bootstrap 95% band, cut to what the metric can score."""
    grid = np.linspace(x.min(), x.max(), 50)
    rng = np.random.default_rng(0)
    fits = []
    for _ in range(1000):
        i = rng.integers(0, len(x), len(x))
        if np.unique(x[i]).size > 1:
            fits.append(np.polyval(np.polyfit(x[i], y[i], 1), grid))
    ax.plot(grid, np.polyval(np.polyfit(x, y, 1), grid), color=color, label=label)
    lo, hi = np.percentile(fits, [2.5, 97.5], axis=0)
    floor, ceiling = min(0.0, float(y.min())), 1.0  # 1 at most; below 0 only if scores are
    ax.fill_between(grid, lo.clip(floor, ceiling), hi.clip(floor, ceiling), color=color, alpha=0.15)


def scatter_figure(lb: Leaderboard, score: str, stem: Path) -> list[Path]:
    """Alignment to the reference vs a downstream score, marker area by parameter count, coloured by kind
    (trained, random control, parameter-free). A least-squares fit with a bootstrap 95% band per kind whose score varies over
    three or more models, Pearson r of each kind and of all printed: one line across two clusters would draw
    a trend that is only their gap."""
    plt = pyplot()
    measure = "alignment_to_reference" if lb.reference else "mean_alignment"
    t = lb.table[[measure, score, "model", "params", "kind"]].dropna(subset=[measure, score])
    fig, ax = plt.subplots(figsize=(5.5, 4))
    params = t.params.fillna(t.params.median() if t.params.notna().any() else 1e8)
    sizes = 20 + 180 * (np.log10(params) - 6).clip(0) / 5
    colors = {"trained": "C0", "random": "C3", "parameter-free": "C2"}
    for kind, color in colors.items():
        at = (t.kind == kind).to_numpy()
        if at.any():
            ax.scatter(t[score][at], t[measure][at], s=sizes[at], alpha=0.7, color=color, label=f"{kind} models")
    for _, r in t.iterrows():
        ax.annotate(r.model, (r[score], r[measure]), fontsize=6, xytext=(3, 3), textcoords="offset points")
    lines = []
    for kind, part in [("all", t), *((k, t[t.kind == k]) for k in colors)]:
        x, y = part[score].to_numpy(float), part[measure].to_numpy(float)
        if len(part) >= 3 and np.unique(x).size > 1 and np.unique(y).size > 1:
            r = float(np.corrcoef(x, y)[0, 1])
            lines.append(f"{kind}: r = {r:.2f} (n = {len(part)})")
            if kind != "all":
                _fit_with_band(ax, x, y, colors[kind], f"fit, {kind} (bootstrap 95% band)")
    if lines:
        ax.text(0.02, 0.98, "Pearson " + "; ".join(lines), transform=ax.transAxes, fontsize=7, va="top")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_xlabel(score)
    ax.set_ylabel(f"{lb.metric} to {lb.reference}" if lb.reference else f"mean {lb.metric}")
    ax.set_title(f"{lb.suite.id}: alignment vs {score} (marker area ~ log parameters)", fontsize=9)
    return save(fig, stem)


def embedding_figure(lb: Leaderboard, stem: Path) -> list[Path]:
    """Models in 2-D by classical MDS of the distance -log(alignment) (like the paper's Figure 2)."""
    plt = pyplot()
    a = lb.matrix.to_numpy(dtype=float)
    d = -np.log(np.clip(np.nan_to_num(a, nan=1.0), 1e-6, 1.0))
    d = (d + d.T) / 2
    np.fill_diagonal(d, 0)
    xy, _ = classical_mds(d)
    fitted = np.sqrt(((xy[:, None, :] - xy[None, :, :]) ** 2).sum(-1))
    stress = float(np.sqrt(((d - fitted) ** 2).sum() / max((d**2).sum(), 1e-300)))  # Kruskal's stress-1
    fig, (ax, key) = plt.subplots(1, 2, figsize=(8.5, 4.5), gridspec_kw={"width_ratios": [3, 2]})
    random = lb.table.set_index("model").kind.reindex(lb.matrix.index).eq("random")
    ax.scatter(xy[:, 0], xy[:, 1], c=np.where(random, "C3", "C0"), s=60, alpha=0.6)
    # Numbers at the points and the names in a key beside: names of models that sit together never overlap.
    for k, (x, y) in enumerate(xy, start=1):
        ax.annotate(str(k), (x, y), fontsize=7, ha="center", va="center")
    key.axis("off")
    for k, name in enumerate(lb.matrix.index, start=1):
        key.text(
            0,
            1 - k / (len(xy) + 1),
            f"{k}  {name}",
            fontsize=7,
            va="center",
            color="C3" if random.iloc[k - 1] else "C0",
            transform=key.transAxes,
        )
    ax.set_title(
        f"{lb.suite.id}: classical MDS of -log({lb.metric}), stress-1 {stress:.2f}; red = random weights", fontsize=8
    )
    ax.set_xticks([]), ax.set_yticks([])
    return save(fig, stem)
