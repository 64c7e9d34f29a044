"""What an approximate neighbour search (`search: ivf`) cost a job's scores, for the run record: each layer's
recall on the rows its summary searched exactly, and each pair's score at its best layer pair on those rows,
from the approximate lists and from the exact ones. An approximate score is not comparable with an exact one;
this says by how much it moved."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .align.knn import KNNMetric
from .features import Features
from .scoring import JobScores, Member, Summaries, SummaryStore


def approximate_search(scores: JobScores, root: Path, load: Callable[[Member], Features],
                       names: dict[str, list[str]], condition: str) -> dict[str, list[dict[str, Any]]]:
    """{"recall": one row per model and layer, "pairs": one row per model pair} of a job whose metric searched
    approximately; both empty otherwise. Summaries are read from the summary store under `root` (computed
    there if gone), tile by tile as the scoring read them: at most two groups' at a time."""
    job = scores.job
    if not isinstance(job.metric, KNNMetric) or job.params.get("search", "exact") == "exact":
        return {"recall": [], "pairs": []}
    summaries = Summaries(job, load, SummaryStore(root))
    head = {"condition": condition, "metric": job.metric.name}
    recall, pairs = [], []
    for i, j in job.tiles():
        ids = {m.id for m in job.groups[i] + job.groups[j]}
        held = summaries.of(i, ids, keep=True) | summaries.of(j, ids)
        if i == j:
            recall += [head | {"model": m.id, "layer": names[m.id][n], "rows": len(s.probe.rows),
                               "recall": s.probe.recall(s.idx)}
                       for m in job.groups[i] for n, s in enumerate(held[m.id]) if s.probe is not None]
        for a, b in job.tile_pairs(i, j):
            matrix = scores.pair(a.id, b.id)
            x, y = divmod(int(matrix.argmax()), matrix.shape[1])
            if (probe := job.metric.probe_scores(held[a.id][x], held[b.id][y], **job.params)) is not None:
                pairs.append(head | {"model_x": a.id, "model_y": b.id, "layer_x": names[a.id][x],
                                     "layer_y": names[b.id][y], "score": float(matrix[x, y]),
                                     "rows": len(held[a.id][x].probe.rows), "rows_approximate": probe[0],
                                     "rows_exact": probe[1]})
    return {"recall": recall, "pairs": pairs}
