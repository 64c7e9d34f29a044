"""Writes a run folder: the long score table with its JSON sidecar, and per metric the model x model
alignment matrix (CSV + heatmap PNG) and a Markdown table ranking models by mean alignment to the others."""

from __future__ import annotations

import json
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from . import __version__
from .features import library_versions
from .manifest import ModelManifest
from .registry import Registry
from .runner import SuiteRun

LIBRARIES = ("torch", "torchvision", "timm", "transformers", "open_clip_torch", "numpy", "pandas", "safetensors")


def best_pairs(scores: pd.DataFrame) -> pd.DataFrame:
    """Per model pair and metric: the best layer pair (max over layer pairs) and its score."""
    if scores.empty:
        return scores
    idx = scores.groupby(["metric", "model_x", "model_y"], sort=False)["score"].idxmax()
    return scores.loc[idx].reset_index(drop=True)


def alignment_matrix(best: pd.DataFrame, metric: str, order: list[str]) -> pd.DataFrame:
    """Square model x model matrix of best scores (symmetric metrics fill both triangles; diagonal empty)."""
    sub = best[best.metric == metric]
    mat = pd.DataFrame(index=order, columns=order, dtype=float)
    for r in sub.itertuples():
        mat.loc[r.model_x, r.model_y] = r.score
        if pd.isna(mat.loc[r.model_y, r.model_x]):
            mat.loc[r.model_y, r.model_x] = r.score
    return mat


def ranking(mat: pd.DataFrame, best: pd.DataFrame, registry: Registry, reference: str | None) -> pd.DataFrame:
    rows = []
    for mid in mat.index:
        others = mat.loc[mid].drop(mid).dropna()
        if others.empty:
            continue
        partner = others.idxmax()
        pair = best[((best.model_x == mid) & (best.model_y == partner)) | ((best.model_x == partner) & (best.model_y == mid))].iloc[0]
        own, their = (pair.layer_x, pair.layer_y) if pair.model_x == mid else (pair.layer_y, pair.layer_x)
        m = registry.get(mid)
        row = {"model": mid, "weights": m.weights_label if isinstance(m, ModelManifest) else "",
               "mean_alignment": others.mean(), "most_aligned_with": partner, "score": others.max(),
               "layer_pair": f"{own} / {their}"}
        if reference is not None and reference in mat.columns:
            row[f"to_{reference}"] = mat.loc[mid, reference]
        rows.append(row)
    table = pd.DataFrame(rows).sort_values("mean_alignment", ascending=False, kind="stable")
    table.insert(0, "rank", range(1, len(table) + 1))
    return table


def heatmap(mat: pd.DataFrame, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(mat)
    fig, ax = plt.subplots(figsize=(2.5 + 0.55 * n, 2 + 0.5 * n))
    im = ax.imshow(mat.to_numpy(dtype=float), cmap="viridis")
    ax.set_xticks(range(n), mat.columns, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), mat.index, fontsize=8)
    for i in range(n):
        for j in range(n):
            v = mat.iat[i, j]
            if pd.notna(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if v < mat.max().max() * 0.6 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_run(run: SuiteRun, registry: Registry, run_dir: Path) -> dict[str, Any]:
    """Write every output of a run; return {'files': {...}, 'best': [...]} for the CLI's --json."""
    run_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    scores_path = run_dir / "scores.csv"
    run.scores.to_csv(scores_path, index=False)
    files["scores"] = str(scores_path)
    if not run.calibration.empty:
        cal_path = run_dir / "calibration.csv"
        run.calibration.to_csv(cal_path, index=False)
        files["calibration"] = str(cal_path)
    best = best_pairs(run.scores)
    order = [o.model for o in run.outcomes if o.status != "failed"]
    for metric in dict.fromkeys(best.metric) if not best.empty else []:
        mat = alignment_matrix(best, metric, order)
        csv, png, md = (run_dir / f"{stem}_{metric}.{ext}" for stem, ext in
                        (("alignment", "csv"), ("heatmap", "png"), ("ranking", "md")))
        mat.to_csv(csv, float_format="%.6f")
        params = best[best.metric == metric].params.iloc[0]
        heatmap(mat, f"{run.suite.id}: {metric} {params}, max over layer pairs, N={run.n_samples}", png)
        table = ranking(mat, best[best.metric == metric], registry, run.suite.reference)
        failed = "".join(f"\n- **failed**: `{o.model}`: {o.error}" for o in run.failures)
        md.write_text(
            f"# {run.suite.id}: models ranked by mean {metric} alignment\n\n"
            f"Dataset `{run.dataset.id}` ({run.n_samples} samples), metric `{metric}` {params}, "
            f"score = max over layer pairs. Chance level of mutual_knn is k/(N-1).\n\n"
            + table.to_markdown(index=False, floatfmt=".4f") + "\n" + failed + "\n",
            encoding="utf-8",
        )
        files.update({f"matrix_{metric}": str(csv), f"heatmap_{metric}": str(png), f"ranking_{metric}": str(md)})
    sidecar = {
        "harness": {"prh_bench": __version__, "python": sys.version.split()[0], "platform": platform.platform()},
        "libraries": library_versions(LIBRARIES),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "suite": run.suite.model_dump(mode="json"),
        "dataset": run.dataset.model_dump(mode="json") | {"n_samples": run.n_samples},
        "models": {o.model: {"status": o.status, "cache_key": o.key, "layers": o.layers,
                             "seconds": round(o.seconds, 3), "error": o.error,
                             "manifest_version": registry.get(o.model).version} for o in run.outcomes},
        "metrics": {u.name: {"version": registry.get(u.name).version} for u in run.suite.metrics},
        "seconds": {k: round(v, 3) for k, v in run.seconds.items()},
    }
    side = run_dir / "run.json"
    side.write_text(json.dumps(sidecar, indent=2), encoding="utf-8")
    files["sidecar"] = str(side)
    best_rows = best[["metric", "model_x", "model_y", "layer_x", "layer_y", "score"]].to_dict("records") if not best.empty else []
    return {"files": files, "best": best_rows}
