"""Does a ranking depend on the data? For a run with several conditions (data sets, transform levels, N): how
alike each condition's model x model alignment matrix is to the first condition's and to the previous one's
(Spearman rho of their entries with a Mantel permutation test, models relabelled in rows and columns together),
and how alike the models' rankings are (Spearman rho of their alignment to the reference, or of their mean
alignment without one)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

PERMUTATIONS = 999


def entries(mat: np.ndarray) -> np.ndarray:
    """The off-diagonal entries, row by row (a symmetric matrix gives each pair twice: Spearman's rho is unchanged)."""
    return mat[~np.eye(len(mat), dtype=bool)]


def mantel(a: np.ndarray, b: np.ndarray, permutations: int = PERMUTATIONS, seed: int = 0) -> tuple[float, float]:
    """(Spearman rho of the off-diagonal entries of two model x model matrices, one-sided add-one Mantel p of rho
    this large when b's models are relabelled at random)."""
    from scipy import stats  # only runs with several conditions need it: not at every run folder's import

    off = ~np.eye(len(b), dtype=bool)
    ra, rb = stats.rankdata(entries(a)), np.full(b.shape, np.nan)
    rb[off] = stats.rankdata(b[off])  # relabelling models moves b's entries, never changes their ranks
    rho = float(np.corrcoef(ra, entries(rb))[0, 1])
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(permutations):
        p = rng.permutation(len(b))
        hits += np.corrcoef(ra, entries(rb[np.ix_(p, p)]))[0, 1] >= rho - 1e-12
    return rho, (1 + hits) / (permutations + 1)


def ranking(mat: pd.DataFrame, reference: str | None) -> pd.Series:
    """Each model's alignment to the reference (PRH orientation: row model, column reference), or its mean."""
    if reference is not None and reference in mat.index:
        return mat[reference].drop(reference)
    return mat.mean(axis=1)


def consistency(mats: dict[str, pd.DataFrame], metric: str, reference: str | None) -> pd.DataFrame:
    """Per condition after the first (the keys of `mats`, in order: model x model matrices over one model
    list), against the first and against the previous one: the models both have, the matrices' rho and Mantel
    p, and the rankings' rho."""
    from scipy import stats

    conditions = list(mats)
    rows = []
    for i, c in enumerate(conditions[1:], start=1):
        for other in dict.fromkeys([conditions[0], conditions[i - 1]]):
            a, b = mats[other], mats[c]
            keep = [m for m in a.index if a.loc[m].drop(m).notna().all() and b.loc[m].drop(m).notna().all()]
            row = {"metric": metric, "condition": c, "against": other, "models": len(keep)}
            if len(keep) >= 4:
                rho, p = mantel(a.loc[keep, keep].to_numpy(float), b.loc[keep, keep].to_numpy(float))
                ra, rb = ranking(a.loc[keep, keep], reference), ranking(b.loc[keep, keep], reference)
                row |= {
                    "matrix_spearman": rho,
                    "mantel_p": p,
                    "permutations": PERMUTATIONS,
                    "ranking_spearman": float(stats.spearmanr(ra, rb).statistic),
                }
            else:
                row |= {
                    "matrix_spearman": math.nan,
                    "mantel_p": math.nan,
                    "permutations": 0,
                    "ranking_spearman": math.nan,
                }
            rows.append(row)
    return pd.DataFrame(rows)
