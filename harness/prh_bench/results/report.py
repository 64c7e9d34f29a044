"""Writes a run folder: the run's Results (tables and run.json), its per-pair records, and per metric the model x
model alignment matrix (CSV + heatmap PNG) and a Markdown table ranking models by mean alignment to the others;
with several conditions, the sweep and how consistent the conditions' matrices are."""

from __future__ import annotations

import platform
import re
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from .. import __version__
from ..align.metric import Metric
from ..features import library_versions
from ..lazy import torch
from ..runner import SuiteRun
from .figures import heatmap, pyplot, sweep_figure
from .matrices import alignment_matrix, best_partner, chance_level, params_key
from .merge import write_records
from .pair_records import job_records
from .results import Results
from .run_folder import RESULTS_DIR, slug
from .run_record import (
    ApproximateSearch,
    ConditionEntry,
    HarnessEntry,
    MetricEntry,
    ModelEntry,
    ModelRun,
    PairWork,
    RunRecord,
)

MetricLookup = Callable[[str], Metric | None]  # a metric's plugin object by name (None: no installed plugin)
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
    text = {
        c: table[c].map(lambda v: md_text(v) if isinstance(v, str) else v)
        for c in table.columns
        if not pd.api.types.is_numeric_dtype(table[c])
    }
    shown = table.assign(**text).rename(columns=md_text)
    shown = shown.astype(object).where(shown.notna(), None)  # an empty cell, not 'nan' (the reference's own row)
    return shown.to_markdown(index=False, floatfmt=floatfmt, missingval="")


def ranking(
    mat: pd.DataFrame, best: pd.DataFrame, models: dict[str, ModelEntry], reference: str | None
) -> pd.DataFrame:
    """Models ranked by mean alignment to the others, each with its best partner (and its alignment to the
    reference)."""
    rows = []
    for mid in mat.index:
        if (partner := best_partner(mat, best, mid)) is None:
            continue
        row = {
            "model": mid,
            "weights": models[mid].weights,
            "mean_alignment": partner.mean_alignment,
            "most_aligned_with": partner.model,
            "score": partner.score,
            "layer_pair": partner.layer_pair,
        }
        if reference is not None and reference in mat.columns:
            row[f"to_{reference}"] = mat.loc[mid, reference]
        rows.append(row)
    table = pd.DataFrame(rows).sort_values("mean_alignment", ascending=False, kind="stable")
    table.insert(0, "rank", range(1, len(table) + 1))
    return table


def write_matrix(
    res: Results,
    best: pd.DataFrame,
    metric: str,
    label: str,
    stem: str,
    metric_of: MetricLookup,
    run_dir: Path,
    files: dict[str, str],
) -> None:
    """Matrix CSV, heatmap PNG and ranking Markdown of one metric under one condition."""
    sub = best[(best.metric == metric) & (best.condition == label)]
    order = [m for m in res.record.models if m in set(sub.model_x) | set(sub.model_y)]
    mat = alignment_matrix(sub, metric, order)
    csv, png, md = (
        run_dir / f"{kind}_{stem}.{ext}" for kind, ext in (("alignment", "csv"), ("heatmap", "png"), ("ranking", "md"))
    )
    mat.to_csv(csv, float_format="%.6f")
    params, n = res.params(metric), res.n_samples(label)
    heatmap(mat, f"{res.suite}: {metric} {params_key(params)}, max over layer pairs, {label}, N={n}", png)
    table = ranking(mat, sub, res.record.models, res.record.suite.reference)
    cal = res.calibration
    chance, how = chance_level(
        metric_of(metric), metric, params, n, cal[cal.condition == label] if not cal.empty else None
    )
    failed = "".join(
        f"\n- **failed**: {md_text(mid)}: {md_text(r.error)}"
        for mid, m in res.record.models.items()
        for r in m.runs
        if r.condition == label and r.status == "failed"
    )
    md.write_text(
        f"# {res.suite}: models ranked by mean {metric} alignment\n\n"
        f"Dataset `{label}` ({n} samples), metric `{metric}` {params_key(params)}, "
        f"score = max over layer pairs. Chance level: {chance:.4f} ({how}).\n\n"
        + md_table(table)
        + "\n"
        + failed
        + "\n",
        encoding="utf-8",
    )
    files.update({f"matrix_{stem}": str(csv), f"heatmap_{stem}": str(png), f"ranking_{stem}": str(md)})


def write_sweep(
    res: Results, best: pd.DataFrame, metric: str, metric_of: MetricLookup, run_dir: Path, files: dict[str, str]
) -> None:
    """Mean and spread over model pairs of the best score, per condition, with the chance level at its N, as
    CSV and a line plot (figures.sweep_figure)."""
    rows = []
    for cond in res.record.conditions:
        sub = best[(best.metric == metric) & (best.condition == cond.label)]
        n = res.n_samples(cond.label)
        cal = res.calibration[res.calibration.condition == cond.label] if not res.calibration.empty else None
        chance = chance_level(metric_of(metric), metric, sub.params.iloc[0], n, cal)[0] if len(sub) else float("nan")
        rows.append(
            {
                "condition": cond.label,
                "dataset": cond.dataset.id,
                "level": cond.level,
                "k": cond.k,
                "n_samples": n,
                "pairs": len(sub),
                "mean": sub.score.mean(),
                "std": sub.score.std(ddof=1) if len(sub) > 1 else 0.0,
                "chance": chance,
            }
        )
    table = pd.DataFrame(rows)
    csv, png = run_dir / f"sweep_{metric}.csv", run_dir / f"sweep_{metric}.png"
    table.to_csv(csv, index=False, float_format="%.6g")
    conditions = res.record.conditions
    fig = sweep_figure(
        table,
        best,
        metric,
        f"{res.suite}: {metric}",
        res.record.suite.reference,
        conditions[0].transform,
        any(c.samples is not None for c in conditions),
    )
    fig.savefig(png, dpi=120)
    pyplot().close(fig)
    files.update({f"sweep_{metric}": str(csv), f"sweep_plot_{metric}": str(png)})


def results_of(run: SuiteRun, run_dir: Path) -> Results:
    """A finished run as Results, its record stamped with this machine and the library versions."""
    record = RunRecord(
        harness=HarnessEntry(
            prh_bench=__version__,
            python=sys.version.split()[0],
            platform=platform.platform(),
            torch_threads=torch.get_num_threads(),
        ),
        libraries=library_versions(LIBRARIES),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        max_samples=run.max_samples,
        suite=run.suite,
        conditions=[
            ConditionEntry(
                label=c.label,
                dataset=c.dataset,
                transform=c.transform,
                level=c.level,
                k=c.k,
                samples=c.samples,
                n_samples=run.n_samples[c.label],
            )
            for c in run.conditions
        ],
        models={
            mid: ModelEntry.of(
                m,
                [
                    ModelRun(
                        condition=o.condition,
                        status=o.status,
                        cache_key=o.key,
                        layers=o.layers,
                        widths=o.widths or [],
                        seconds=round(o.seconds, 3),
                        error=o.error,
                    )
                    for o in run.outcomes
                    if o.model == mid
                ],
            )
            for mid, m in run.models.items()
        },
        metrics={u.name: MetricEntry(version=run.metric_versions[u.name]) for u in run.suite.metrics},
        device=run.device,
        pair_work=[PairWork.model_validate(w) for w in run.pair_work],
        approximate_search=ApproximateSearch.model_validate(run.approximate_search),
        seconds={k: round(v, 3) for k, v in run.seconds.items()},
    )
    return Results(run_dir, record, run.scores, run.calibration, run.model_scores, run.probes, run.sample_terms)


def write_run(run: SuiteRun, run_dir: Path) -> dict[str, Any]:
    """Write every output of a run, its tables and run.json last (a folder with them is complete); return
    {'files': {...}, 'best': [...]} for the CLI's --json."""
    run_dir.mkdir(parents=True, exist_ok=True)
    res = results_of(run, run_dir)
    files: dict[str, str] = {}
    records = [
        r for job in run.scored for r in job_records(job.scores, job.condition, job.n, run.models, job.layer_names)
    ]
    if records:
        write_records(run_dir / RESULTS_DIR, records)
        files["results"] = str(run_dir / RESULTS_DIR)
    best = res.best()
    several = len(res.conditions) > 1
    for metric in res.metrics:
        if several:
            write_sweep(res, best, metric, run.metric, run_dir, files)
            res.consistency(metric).to_csv(path := run_dir / f"consistency_{metric}.csv", index=False)
            files[f"consistency_{metric}"] = str(path)
        if len(res.conditions) <= MAX_MATRICES:
            for label in res.conditions:
                stem = metric + (f"_{slug(label)}" if several else "")
                write_matrix(res, best, metric, label, stem, run.metric, run_dir, files)
    files = res.write(run_dir) | files
    cols = ["condition", "metric", "model_x", "model_y", "layer_x", "layer_y", "score"]
    return {"files": files, "best": best[cols].to_dict("records") if not best.empty else []}
