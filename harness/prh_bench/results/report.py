"""Writes a run folder: the long score table with its JSON sidecar, and per metric the model x model
alignment matrix (CSV + heatmap PNG) and a Markdown table ranking models by mean alignment to the others."""

from __future__ import annotations

import json
import platform
import re
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import __version__
from ..align.metric import Metric
from ..features import library_versions
from ..lazy import torch
from ..manifest import ModelManifest
from ..runner import SuiteRun
from .consistency import consistency
from .merge import write_records
from .pairs import job_records
from .run_folder import (
    RESULTS_DIR,
    ConditionEntry,
    ModelEntry,
    ModelRun,
    RunRecord,
    slug,
    write_run_record,
    write_table,
)

#: a sweep with more conditions than this gets its summary only, not a matrix per condition
MAX_MATRICES = 5
LIBRARIES = ("torch", "torchvision", "timm", "transformers", "open_clip_torch", "numpy", "pandas", "safetensors")


_MD_SPECIAL = re.compile(r"([\\`*\[\]<>|#])")


def md_text(value: object) -> str:
    """Text safe inside Markdown (a table cell or a list item): no markup, no HTML, no broken table."""
    return _MD_SPECIAL.sub(r"\\\1", " ".join(str(value).split()))


def md_table(table: pd.DataFrame, floatfmt: str = ".4f") -> str:
    """A Markdown table whose text cells cannot inject markup (model ids, errors, citations come from users)."""
    # Every column that is not numeric: pandas 3 gives text the dtype `str`, not object (the regression that let
    # '<img onerror=...>' through), and a column of mixed values is object.
    text = {c: table[c].map(lambda v: md_text(v) if isinstance(v, str) else v)
            for c in table.columns if not pd.api.types.is_numeric_dtype(table[c])}
    shown = table.assign(**text).rename(columns=md_text)
    shown = shown.astype(object).where(shown.notna(), None)  # an empty cell, not 'nan' (the reference's own row)
    return shown.to_markdown(index=False, floatfmt=floatfmt, missingval="")


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


def chance_level(metric: Metric | None, name: str, params: dict[str, Any], n: int,
                 calibration: pd.DataFrame | None = None) -> tuple[float, str]:
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
    pair = best[((best.model_x == mid) & (best.model_y == partner))
                | ((best.model_x == partner) & (best.model_y == mid))].iloc[0]
    own, their = (pair.layer_x, pair.layer_y) if pair.model_x == mid else (pair.layer_y, pair.layer_x)
    return Partner(partner, float(others.max()), f"{own} / {their}", float(others.mean()))


def ranking(mat: pd.DataFrame, best: pd.DataFrame, models: dict[str, ModelManifest], reference: str | None) -> pd.DataFrame:
    rows = []
    for mid in mat.index:
        if (partner := best_partner(mat, best, mid)) is None:
            continue
        row = {"model": mid, "weights": models[mid].weights_label, "mean_alignment": partner.mean_alignment,
               "most_aligned_with": partner.model, "score": partner.score, "layer_pair": partner.layer_pair}
        if reference is not None and reference in mat.columns:
            row[f"to_{reference}"] = mat.loc[mid, reference]
        rows.append(row)
    table = pd.DataFrame(rows).sort_values("mean_alignment", ascending=False, kind="stable")
    table.insert(0, "rank", range(1, len(table) + 1))
    return table


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
    ax.set_xticks(range(n), mat.columns, rotation=60 if n <= 40 else 90, ha="right" if n <= 40 else "center",
                  fontsize=font)
    ax.set_yticks(range(n), mat.index, fontsize=font)
    if n <= NUMBERED_CELLS:
        middle = np.nanmean(values)
        for i in range(n):
            for j in range(n):
                if np.isfinite(values[i, j]):
                    ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=max(4, 7 - n // 6),
                            color="white" if values[i, j] < middle else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, label=colorbar)
    ax.set_title(title, fontsize=8 if n > NUMBERED_CELLS else 10)
    fig.tight_layout()
    return fig


def heatmap(mat: pd.DataFrame, title: str, path: Path) -> None:
    fig = matrix_figure(mat, title)
    fig.savefig(path, dpi=120)
    pyplot().close(fig)


def write_matrix(run: SuiteRun, best: pd.DataFrame, metric: str, label: str, stem: str, run_dir: Path,
                 files: dict[str, str]) -> None:
    """Matrix CSV, heatmap PNG and ranking Markdown of one metric under one condition."""
    sub = best[(best.metric == metric) & (best.condition == label)]
    order = [m for m in run.models if m in set(sub.model_x) | set(sub.model_y)]
    mat = alignment_matrix(sub, metric, order)
    csv, png, md = (run_dir / f"{kind}_{stem}.{ext}" for kind, ext in
                    (("alignment", "csv"), ("heatmap", "png"), ("ranking", "md")))
    mat.to_csv(csv, float_format="%.6f")
    params = sub.params.iloc[0]
    heatmap(mat, f"{run.suite.id}: {metric} {params}, max over layer pairs, {label}, N={run.n_samples[label]}", png)
    table = ranking(mat, sub, run.models, run.suite.reference)
    chance, how = chance_level(run.metric(metric), metric, json.loads(params), run.n_samples[label],
                               run.calibration[run.calibration.condition == label] if not run.calibration.empty else None)
    failed = "".join(f"\n- **failed**: {md_text(o.model)}: {md_text(o.error)}" for o in run.failures if o.condition == label)
    md.write_text(
        f"# {run.suite.id}: models ranked by mean {metric} alignment\n\n"
        f"Dataset `{label}` ({run.n_samples[label]} samples), metric `{metric}` {params}, "
        f"score = max over layer pairs. Chance level: {chance:.4f} ({how}).\n\n"
        + md_table(table) + "\n" + failed + "\n",
        encoding="utf-8",
    )
    files.update({f"matrix_{stem}": str(csv), f"heatmap_{stem}": str(png), f"ranking_{stem}": str(md)})


def write_sweep(run: SuiteRun, best: pd.DataFrame, metric: str, run_dir: Path, files: dict[str, str]) -> None:
    """Mean and spread over model pairs of the best score, per condition, with the chance level at its N, as
    CSV and a line plot: against the transform level, or against N on a log axis (with the chance level and the
    reference's pairs drawn) when the sweep varies the number of samples."""
    plt = pyplot()
    rows = []
    for cond in run.conditions:
        sub = best[(best.metric == metric) & (best.condition == cond.label)]
        n = run.n_samples[cond.label]
        cal = run.calibration[run.calibration.condition == cond.label] if not run.calibration.empty else None
        chance = chance_level(run.metric(metric), metric, json.loads(sub.params.iloc[0]), n, cal)[0] if len(sub) \
            else float("nan")
        rows.append({"condition": cond.label, "dataset": cond.dataset.id, "level": cond.level, "k": cond.k, "n_samples": n,
                     "pairs": len(sub), "mean": sub.score.mean(), "std": sub.score.std(ddof=1) if len(sub) > 1 else 0.0,
                     "chance": chance})
    table = pd.DataFrame(rows)
    csv, png = run_dir / f"sweep_{metric}.csv", run_dir / f"sweep_{metric}.png"
    table.to_csv(csv, index=False, float_format="%.6g")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    by_n = any(c.samples is not None for c in run.conditions)
    for (ds, level, k), part in table.groupby(["dataset", table.level.fillna(-1), table.k.fillna(-1)], sort=False):
        name = " ".join([ds] + ([f"{run.conditions[0].transform}={level:g}"] if level != -1 else [])
                        + ([f"k={k:g}"] if k != -1 else []))
        if by_n:
            ax.errorbar(part.n_samples, part["mean"], yerr=part["std"], marker="o", capsize=3, label=f"{name}: mean")
            ax.plot(part.n_samples, part.chance, "--", color="grey", label=f"{name}: chance")
        else:
            x = part.level if part.level.notna().all() else range(len(part))
            ax.errorbar(list(x), part["mean"], yerr=part["std"], marker="o", capsize=3, label=name)
    if by_n:
        ref = run.suite.reference
        # One line per model paired with the reference, under the first k of a sweep of k.
        first = table[table.k.isna() | (table.k == table.k.iloc[0])]
        pairs = best[(best.metric == metric) & ((best.model_x == ref) | (best.model_y == ref))] if ref else best[:0]
        for (x, y), part in pairs.groupby(["model_x", "model_y"], sort=False):
            at = part.set_index("condition").score.reindex(first.condition)
            ax.plot(first.n_samples, at.to_numpy(), lw=0.8, alpha=0.7, label=f"{y if x == ref else x} vs {ref}")
        ax.set_xscale("log")
        # Plain tick labels: log axes label with mathtext, which is off (ids are never TeX).
        ax.set_xticks(table.n_samples.unique(), [f"{n:,}" for n in table.n_samples.unique()], rotation=30, ha="right")
        ax.xaxis.set_minor_formatter(plt.NullFormatter())
        ax.set_xlabel("N (samples)")
    elif table.level.isna().all():
        ax.set_xticks(range(len(table)), table.condition, rotation=20, ha="right")
    else:
        ax.set_xlabel(run.conditions[0].transform or "level")
    ax.set_ylabel(f"{metric}, best over layer pairs")
    ax.legend(fontsize=7)
    ax.set_title(f"{run.suite.id}: {metric}", fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
    files.update({f"sweep_{metric}": str(csv), f"sweep_plot_{metric}": str(png)})


def write_run(run: SuiteRun, run_dir: Path) -> dict[str, Any]:
    """Write every output of a run; return {'files': {...}, 'best': [...]} for the CLI's --json."""
    run_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    for name, table in (("scores", run.scores), ("calibration", run.calibration), ("model_scores", run.model_scores),
                        ("probes", run.probes), ("sample_terms", run.sample_terms)):
        if name == "scores" or not table.empty:
            files[name] = str(write_table(table, run_dir, name))
    records = [r for job in run.scored for r in job_records(job.scores, job.condition, job.n, run.models, job.layer_names)]
    if records:
        write_records(run_dir / RESULTS_DIR, records)
        files["results"] = str(run_dir / RESULTS_DIR)
    best = best_pairs(run.scores)
    metrics = list(dict.fromkeys(best.metric)) if not best.empty else []
    several = len(run.conditions) > 1
    for metric in metrics:
        if several:
            write_sweep(run, best, metric, run_dir, files)
            mats = {c.label: alignment_matrix(best[(best.metric == metric) & (best.condition == c.label)], metric,
                                              list(run.models)) for c in run.conditions}
            table = consistency(mats, metric, run.suite.reference)
            table.to_csv(path := run_dir / f"consistency_{metric}.csv", index=False)
            files[f"consistency_{metric}"] = str(path)
        if len(run.conditions) <= MAX_MATRICES:
            for cond in run.conditions:
                stem = metric + (f"_{slug(cond.label)}" if several else "")
                write_matrix(run, best, metric, cond.label, stem, run_dir, files)
    record = RunRecord(
        harness={"prh_bench": __version__, "python": sys.version.split()[0], "platform": platform.platform(),
                 "torch_threads": torch.get_num_threads()},  # CPU scores depend on it in the last bits
        libraries=library_versions(LIBRARIES),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"), max_samples=run.max_samples,
        suite=run.suite.model_dump(mode="json"),
        conditions=[ConditionEntry(label=c.label, dataset=c.dataset.model_dump(mode="json"), transform=c.transform,
                                   level=c.level, n_samples=run.n_samples[c.label]) for c in run.conditions],
        models={mid: ModelEntry(manifest_id=m.manifest_id, manifest_version=m.version, revision=m.revision,
                                weights=m.weights_label,
                                runs=[ModelRun(condition=o.condition, status=o.status, cache_key=o.key, layers=o.layers,
                                               widths=o.widths or [], seconds=round(o.seconds, 3), error=o.error)
                                      for o in run.outcomes if o.model == mid])
                for mid, m in run.models.items()},
        metrics={u.name: {"version": run.metric_versions[u.name]} for u in run.suite.metrics},
        device=run.device,
        pair_work=run.pair_work,
        approximate_search=run.approximate_search,
        seconds={k: round(v, 3) for k, v in run.seconds.items()},
    )
    files["sidecar"] = str(write_run_record(run_dir, record))
    cols = ["condition", "metric", "model_x", "model_y", "layer_x", "layer_y", "score"]
    return {"files": files, "best": best[cols].to_dict("records") if not best.empty else []}
