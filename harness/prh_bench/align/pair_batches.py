"""Many model pairs at once: summaries once per layer, then the pair stage batched around the model that
enters the most of the remaining pairs, so a whole zoo costs one call per model and a new model one call."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from ..lazy import torch
from .metric import Metric


def score_pairs(
    metric: Metric, summaries: Mapping[str, list[Any]], pairs: Sequence[tuple[str, str]], params: dict[str, Any]
) -> dict[tuple[str, str], torch.Tensor]:
    """Layer x layer scores of the given model pairs, in both orders: (a, b) -> a's layers x b's.

    Repeatedly, the model in most of the remaining pairs (the first in `summaries` order on a tie) meets all
    its remaining partners in one `cross_scores` call (`cross_scores_both` when the metric is not symmetric).
    Over all pairs of a zoo that is each model against the later ones; for a model added to a scored zoo it
    is one call. Count metrics give the same bits whatever the batch; float64 kernels agree within 1e-12."""
    order = {m: i for i, m in enumerate(summaries)}
    todo = {frozenset(p): p for p in pairs}
    if any(len(k) != 2 for k in todo):
        raise ValueError("a pair of a model with itself has no alignment score")
    out: dict[tuple[str, str], torch.Tensor] = {}
    while todo:
        counts = Counter(m for key in todo for m in key)
        hub = min(counts, key=lambda m: (-counts[m], order[m]))
        partners = sorted((next(iter(key - {hub})) for key in todo if hub in key), key=order.__getitem__)
        flat = [s for p in partners for s in summaries[p]]
        if metric.symmetric:
            xy, yx = metric.cross_scores(summaries[hub], flat, **params), None
        else:
            xy, yx = metric.cross_scores_both(summaries[hub], flat, **params)
        start = 0
        for p in partners:
            end = start + len(summaries[p])
            out[(hub, p)] = xy[:, start:end]
            out[(p, hub)] = xy[:, start:end].T if yx is None else yx[start:end]
            start = end
            del todo[frozenset((hub, p))]
    return out
