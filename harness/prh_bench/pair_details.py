"""What a job's neighbour lists say beyond its scores, read back from the summary cache after scoring:

- with an approximate search (`search: ivf`), what it cost: each layer's recall on the rows its summary searched
  exactly, and each pair's score at its best layer pair on those rows, from the approximate and the exact lists
  (an approximate score is not comparable with an exact one; this says by how much it moved);
- for a metric that is a mean over samples (mutual, LCS and edit-distance k-NN), each sample's term of every
  model's score with the reference at their best layer pair: the leaderboard resamples them for its intervals
  and paired tests (results/uncertainty.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from .align import LayerScores
from .align.knn import KNNMetric
from .features import Features
from .pair_cache import SummaryCache
from .score_job import Member
from .scoring import JobScores, Summaries


@dataclass
class PairDetails:
    recall: list[dict[str, Any]] = field(default_factory=list)  # per model and layer, with search: ivf
    approximate: list[dict[str, Any]] = field(default_factory=list)  # per pair, with search: ivf
    #: per sample (rows) and model (columns): its term of the score with the reference
    terms: pd.DataFrame = field(default_factory=pd.DataFrame)


def pair_details(
    scores: JobScores,
    root: Path,
    load: Callable[[Member], Features],
    names: dict[str, list[str]],
    condition: str,
    sample_ids: list[str],
    groups: list[str | None],
) -> PairDetails:
    """The details of one job (empty unless its metric is of the k-NN family). Summaries are read from the
    summary cache under `root` (computed there if gone), tile by tile as the scoring read them: at most two
    groups' at a time."""
    job, out = scores.job, PairDetails()
    if not isinstance(job.metric, KNNMetric):
        return out
    approximate = job.params.get("search", "exact") != "exact"
    ref = job.reference if job.metric.row_mean and job.reference in {m.id for m in job.members} else None
    if not approximate and ref is None:
        return out
    summaries = Summaries(job, load, SummaryCache(root))
    head = {"condition": condition, "metric": job.metric.name}
    terms: dict[str, list[float]] = {}
    for i, j in job.tiles():
        pairs = [(a, b) for a, b in job.tile_pairs(i, j) if approximate or ref in (a.id, b.id)]
        ids = {m.id for p in pairs for m in p} | ({m.id for m in job.groups[i]} if approximate and i == j else set())
        if not ids:
            continue
        held = summaries.of(i, ids, keep=True) | summaries.of(j, ids)
        if approximate and i == j:
            out.recall += [
                head
                | {"model": m.id, "layer": names[m.id][n], "rows": len(s.probe.rows), "recall": s.probe.recall(s.idx)}
                for m in job.groups[i]
                for n, s in enumerate(held[m.id])
                if s.probe is not None
            ]
        for a, b in pairs:
            matrix = scores.pair(a.id, b.id)
            x, y = LayerScores(matrix, job.metric.higher_is_better).best_index
            sx, sy = held[a.id][x], held[b.id][y]
            if ref in (a.id, b.id):
                terms[b.id if a.id == ref else a.id] = job.metric.sample_terms(sx.idx, sy.idx, **job.params).tolist()
            if approximate and (probe := job.metric.probe_scores(sx, sy, **job.params)) is not None:
                out.approximate.append(
                    head
                    | {
                        "model_x": a.id,
                        "model_y": b.id,
                        "layer_x": names[a.id][x],
                        "layer_y": names[b.id][y],
                        "score": float(matrix[x, y]),
                        "rows": len(sx.probe.rows),
                        "rows_approximate": probe[0],
                        "rows_exact": probe[1],
                    }
                )
    if terms:
        order = [m.id for m in job.members if m.id in terms]
        out.terms = pd.DataFrame(
            {"condition": condition, "metric": job.metric.name, "sample": sample_ids, "group": groups}
            | {m: terms[m] for m in order}
        )
    return out
