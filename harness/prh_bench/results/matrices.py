"""From the long score table to what readers rank: the best layer pair of each model pair, the model x model
alignment matrix, each model's best partner, and the chance level a score is read against."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from ..align.metric import Metric


def params_key(params: Mapping[str, Any]) -> str:
    """A metric's parameters as the canonical text that files and baselines key scores by."""
    return json.dumps(dict(params), sort_keys=True)


def params_keys(column: Iterable[Mapping[str, Any]]) -> list[str]:
    """`params_key` of every row of a parameter column, each shared dict written once (a long table's rows of
    one metric share one)."""
    done: dict[int, str] = {}
    return [done[id(p)] if id(p) in done else done.setdefault(id(p), params_key(p)) for p in column]


def best_pairs(scores: pd.DataFrame) -> pd.DataFrame:
    """Per condition, model pair and metric: the best layer pair (max over layer pairs) and its score."""
    if scores.empty:
        return scores
    scores = scores.reset_index(drop=True)
    idx = scores.groupby(["condition", "metric", "model_x", "model_y"], sort=False)["score"].idxmax()
    return scores.loc[idx].reset_index(drop=True)


def alignment_matrix(best: pd.DataFrame, metric: str, order: list[str]) -> pd.DataFrame:
    """Square model x model matrix of best scores in the PRH pipeline's orientation: entry [a, b] is
    metric(features of b, features of a), as measure_alignment.py fills alignment_scores[x, y] with
    compute_score(y_feats, x_feats). The long table's rows are metric(model_x, model_y), so row (x, y) lands at
    [y, x]; a symmetric metric, scored once per pair, fills both triangles. The diagonal is empty."""
    sub = best[best.metric == metric]
    mat = pd.DataFrame(index=order, columns=order, dtype=float)
    for r in sub.itertuples():
        mat.loc[r.model_y, r.model_x] = r.score
        if pd.isna(mat.loc[r.model_x, r.model_y]):
            mat.loc[r.model_x, r.model_y] = r.score
    return mat


def chance_level(
    metric: Metric | None, name: str, params: dict[str, Any], n: int, calibration: pd.DataFrame | None = None
) -> tuple[float, str]:
    """The score of unrelated representations and where the number comes from: the metric's closed form where it
    has one (Metric.chance_level: k/(N-1) for mutual_knn), else the mean of the run's permutation nulls when the
    suite asked for them. `metric` is None when no installed plugin provides `name`."""
    if metric is not None and (closed := metric.chance_level(n, **params)) is not None:
        return closed
    if calibration is not None and not calibration.empty and "null_mean" in calibration:
        nulls = calibration[calibration.metric == name].null_mean
        if len(nulls):
            return float(nulls.mean()), f"mean of the permutation nulls' means over {len(nulls)} model pairs"
    return float("nan"), "unknown (the suite asks for no permutation nulls)"


@dataclass(frozen=True)
class Partner:
    """A model's most aligned other model in a matrix, with the layer pair (its layer / theirs) that scored it."""

    model: str
    score: float
    layer_pair: str
    mean_alignment: float  # over all other models


def best_partner(mat: pd.DataFrame, best: pd.DataFrame, mid: str) -> Partner | None:
    others = mat.loc[mid].drop(mid).dropna()
    if others.empty:
        return None
    partner = others.idxmax()
    pair = best[
        ((best.model_x == mid) & (best.model_y == partner)) | ((best.model_x == partner) & (best.model_y == mid))
    ].iloc[0]
    own, their = (pair.layer_x, pair.layer_y) if pair.model_x == mid else (pair.layer_y, pair.layer_x)
    return Partner(partner, float(others.max()), f"{own} / {their}", float(others.mean()))
