"""Renders a leaderboard: Markdown, CSV and JSON tables, figures (PNG and SVG) and one self-contained HTML page
with a sortable table, readable offline."""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from .leaderboard import Leaderboard
from .report import matrix_figure, md_table, md_text, pyplot
from .run_folder import slug


def _save(fig, stem: Path) -> list[Path]:
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    for p in paths:
        fig.savefig(p, dpi=130, bbox_inches="tight")
    pyplot().close(fig)
    return paths


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
    title = (f"{lb.suite.id}: {lb.metric}, max over layer pairs; rows and columns ordered by average-linkage "
             "clustering")
    return _save(matrix_figure(lb.matrix.loc[order, order], title, lb.metric), stem)


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
    return _save(fig, stem)


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
        key.text(0, 1 - k / (len(xy) + 1), f"{k}  {name}", fontsize=7, va="center",
                 color="C3" if random.iloc[k - 1] else "C0", transform=key.transAxes)
    ax.set_title(f"{lb.suite.id}: classical MDS of -log({lb.metric}), stress-1 {stress:.2f}; "
                 "red = random weights", fontsize=8)
    ax.set_xticks([]), ax.set_yticks([])
    return _save(fig, stem)


CORRELATION_NOTE = ("r: over the models with both numbers (n): all of them, or the trained ones alone (models); "
                    "a correlation across trained models and random controls mostly measures the gap between the "
                    "two clusters, so read the trained row. partial pearson: r after both sides are regressed on "
                    "the size covariates in controls (log10 parameters, depth in layers extracted, log2 widest "
                    "layer; as many as leave four residual degrees of freedom), its p_value by Freedman-Lane "
                    "permutation. ci_low and ci_high: the 2.5 and 97.5 percentiles of r over bootstrap resamples of "
                    "the models, of which bootstrap_resamples (of 2000) had both sides varying (the others have no "
                    "r), none below 5 models; p_value: two-sided permutation test of the pairing (with n models it "
                    "cannot go below about 2/n!); score_direction: whether more of the score means more competence "
                    "(for bits per byte it means less, so alignment growing with competence shows as a negative r).")


CONSISTENCY_NOTE = ("The leaderboard shows the run's first condition. Each other condition against the first and the "
                    "previous one: matrix_spearman, Spearman rho of the two model x model alignment matrices' entries "
                    "(over the models both have), with a one-sided Mantel permutation p (models relabelled in rows "
                    "and columns together); ranking_spearman, rho of the models' alignment to the reference.")


def write_leaderboard(lb: Leaderboard, out: Path,
                      more_figures: Callable[[Path], list[Path]] | None = None) -> dict[str, str]:
    """Tables, figures and the page of a leaderboard in `out`; `more_figures(out)` adds suite-specific ones."""
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    lb.table.to_csv(out / "leaderboard.csv", index=False)
    lb.correlations.to_csv(out / "correlations.csv", index=False)
    doc = {"meta": lb.meta, "table": json.loads(lb.table.to_json(orient="records")),
           "correlations": json.loads(lb.correlations.to_json(orient="records")),
           "binned": json.loads(lb.binned.to_json(orient="records"))}
    (out / "leaderboard.json").write_text(json.dumps(doc, indent=2), encoding="utf-8")
    figures = leaderboard_heatmap(lb, out / "heatmap") + embedding_figure(lb, out / "embedding")
    for score in dict.fromkeys(lb.correlations.score) if not lb.correlations.empty else []:
        figures += scatter_figure(lb, score, out / f"scatter_{slug(score)}")
    if more_figures is not None:
        figures += more_figures(out)
    md = [f"# {lb.suite.id} leaderboard", "",
          f"Models ranked by {md_text(lb.metric)} ({md_text(lb.meta['metric_params'])}) alignment to "
          f"{md_text(lb.reference)} (max over layer pairs) on {md_text(lb.condition)}; run {md_text(lb.meta['run'])} "
          f"({md_text(lb.meta['run_created'])}), prh-bench {md_text(lb.meta['harness'])}.", "",
          md_text(chance_sentence(lb)), "",
          md_table(display_table(lb)), ""]
    md += [md_text(text) + "\n" for text in (p_floor_note(lb), uncertainty_sentence(lb), verification_sentence(lb))
           if text]
    if bounds := limits(lb):
        md += ["## What these data can and cannot show", ""] + [f"- {md_text(b)}" for b in bounds] + [""]
    if not lb.correlations.empty:
        md += ["## Alignment vs downstream scores", "",
               "Pearson and Spearman r with percentile-bootstrap 95% intervals (models resampled) and two-sided "
               "permutation p-values.", "", md_table(lb.correlations, ".3f"), "", CORRELATION_NOTE, ""]
    if not lb.consistency.empty:
        md += ["## Does the ranking depend on the data?", "", CONSISTENCY_NOTE, "", md_table(lb.consistency, ".3f"), ""]
    if not lb.binned.empty:
        lb.binned.to_csv(out / "binned.csv", index=False)
        md += ["## Alignment by number of tasks solved", "", lb.meta["solved_rule"] + ".", "",
               md_table(lb.binned), ""]
    md += ["## Sources of downstream scores", ""] + [f"- {md_text(k)}: {md_text(v)}" for k, v in lb.meta["scores_sources"].items()]
    (out / "leaderboard.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    (out / "index.html").write_text(render_html(lb, [p for p in figures if p.suffix == ".png"]), encoding="utf-8")
    for p in [out / n for n in ("leaderboard.md", "leaderboard.csv", "leaderboard.json", "correlations.csv", "index.html")] + figures:
        files[p.name] = str(p)
    return files


def chance_sentence(lb: Leaderboard) -> str:
    """What chance looks like for this metric, and what the p-value and calibrated columns mean."""
    m = lb.meta
    text = f"Chance level of {lb.metric} at N = {m['n_samples']}: {m['chance_level']:.4f} ({m['chance_source']})."
    if m.get("calibration"):
        c = m["calibration"]
        within = (" within their groups (each sample exchanged only with samples of its own group: crops of one "
                  "photograph, so the null keeps what telling the groups apart gives any model)"
                  if c.get("exchange") == "within_groups" else "")
        text += (f" p_value: add-one permutation p-value of the score to the reference ({c['permutations']} shuffles "
                 f"of the samples{within}, the same for all layers, max over layer pairs); calibrated: "
                 f"clamp((score - tau) / (1 - tau), 0, 1) with tau the null's critical value at alpha = {c['alpha']:g} "
                 f"(calibrated-similarity's definition): 0 for a score a shuffle reaches.")
    return text


def verification_sentence(lb: Leaderboard) -> str:
    """What the verification column of a leaderboard built from a results store means."""
    if "verification" not in lb.table:
        return ""
    return ("verification: 'verified (s of M records recomputed)' means `prh-bench verify` checked every file, "
            "manifest version and feature checksum of the submission that brought the model's results, and "
            "recomputed s of its M pair records from the features within tolerance; 'unverified' means the results "
            "were merged without that check (the maintainers' own runs included, unless verified too). Permutation "
            "nulls (p_value, calibrated) are checked for consistency with their scores, not recomputed.")


def uncertainty_sentence(lb: Leaderboard) -> str:
    """How the intervals, tiers and p_vs_next were made, and what they cannot show; empty without them."""
    u = lb.meta.get("uncertainty")
    if not u:
        return ""
    unit = "groups of samples (crops of one photograph, ...)" if u["groups"] < u["samples"] else "samples"
    return (f"ci_low, ci_high: 95% interval of the alignment to the reference, and rank_low, rank_high of the rank, "
            f"over {u['resamples']} resamples with replacement of the {u['groups']} {unit} of the {u['samples']} "
            "samples, each sample's term computed from the neighbour lists of the full set (a resample of the "
            "features would make a sample drawn twice its own nearest neighbour); the best layer pair is held "
            "fixed. tier: adjacent ranks that a paired sign-flip test on the same samples (whole groups flipped) "
            f"cannot separate at alpha = {u['alpha']:g} after Holm's adjustment over the {len(lb.table) - 2} adjacent "
            f"pairs share a tier ({u['tiers']} tiers); p_vs_next: that adjusted p against the next rank, at least "
            f"{u['test_floor']:.2g} before adjustment. With few groups the intervals are coarse and no test can reach "
            "a small p; the intervals say how much the ranking depends on which samples were averaged, not on "
            "another draw of the data set's photographs or concepts.")


def limits(lb: Leaderboard) -> list[str]:
    """What this leaderboard's data can and cannot show, from its own figures: the samples' independent units,
    how much of the score random controls reach, which ranks the tests separate, and how many points a trend
    within the trained models rests on."""
    m, t, out = lb.meta, lb.table, []
    if (u := m.get("uncertainty")) and u["groups"] < u["samples"]:
        out.append(f"{u['samples']} samples in {u['groups']} groups (photographs or concepts): the independent units "
                   f"are nearer {u['groups']} than {u['samples']}, and every interval and test here counts groups.")
    measure = "alignment_to_reference" if lb.reference else "mean_alignment"
    kinds = {k: part for k, part in t.dropna(subset=[measure]).groupby("kind")} if "kind" in t else {}
    if "random" in kinds and "trained" in kinds:
        rnd, trn = kinds["random"], kinds["trained"]
        text = (f"Random-initialised controls score {rnd[measure].min():.3f}-{rnd[measure].max():.3f} against "
                f"{trn[measure].min():.3f}-{trn[measure].max():.3f} for trained models (chance "
                f"{m['chance_level']:.3f}): that much of the score needs no training, so read alignment against the "
                "controls, not against chance.")
        if "calibrated" in t and rnd.calibrated.notna().any():
            text += (f" Against the permutation null the controls' calibrated scores are "
                     f"{rnd.calibrated.min():.2f}-{rnd.calibrated.max():.2f}, the trained models' "
                     f"{trn.calibrated.min():.2f}-{trn.calibrated.max():.2f}.")
        out.append(text)
    if "tier" in t and t.tier.notna().any():
        out.append(f"The paired tests separate the {int(t.tier.notna().sum())} ranked models into {int(t.tier.max())} "
                   "tiers: ranks within a tier are not ordered by these data.")
    if not lb.correlations.empty and "models" in lb.correlations:
        trained = lb.correlations[(lb.correlations.models == "trained") & (lb.correlations.statistic == "pearson")]
        for r in trained.itertuples():
            out.append(f"Within the trained models, {r.alignment} against {r.score} rests on {r.n} models "
                       f"(r = {r.r:.2f}, p = {r.p_value:.2g}); with {r.n} points a permutation p cannot go below "
                       f"{2 / math.factorial(r.n):.2g}, and a correlation across trained and random models mostly "
                       "measures the gap between the two.")
    return out


def p_floor(lb: Leaderboard) -> tuple[float, pd.Series] | None:
    """(1/(R+1), which rows' p-values sit at it), or None without permutation p-values: a p there says
    p <= 1/(R+1), nothing smaller."""
    c = lb.meta.get("calibration")
    if not c or "p_value" not in lb.table:
        return None
    floor = 1 / (c["permutations"] + 1)
    return floor, pd.Series(np.isclose(lb.table.p_value, floor, rtol=1e-6), index=lb.table.index)


def p_floor_note(lb: Leaderboard) -> str:
    """How many p-values sit at the floor of their permutation count, and what that means."""
    if (found := p_floor(lb)) is None or not (at := int(found[1].sum())):
        return ""
    return (f"{at} of {int(lb.table.p_value.notna().sum())} p-values sit at the floor of "
            f"{lb.meta['calibration']['permutations']} permutations, shown as p <= {found[0]:.2g} = 1/(R+1): no "
            "permutation reached the score, which bounds p, and does not make it smaller.")


def display_table(lb: Leaderboard) -> pd.DataFrame:
    """The table as shown: parameters in millions, a p-value at its permutation floor as 'p <= floor'."""
    table = lb.table.assign(params=lb.table.params.map(params_label))
    if (found := p_floor(lb)) is not None:
        floor, at = found
        table["p_value"] = [f"<= {floor:.2g}" if hit else v for v, hit in zip(table.p_value, at, strict=True)]
    return table


def _cell(v: object) -> str:
    if v is pd.NA:
        return ""
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.4g}"
    return html.escape(str(v))


def caption(lb: Leaderboard, stem: str) -> str:
    """What a figure shows, in a sentence a reader needs no README for."""
    if stem == "heatmap":
        return (f"{lb.metric} between every pair of models (max over layer pairs); rows and columns ordered by "
                "clustering, so models that align sit together.")
    if stem == "embedding":
        return (f"Models placed by classical MDS of -log({lb.metric}): near means aligned. Numbers key the points "
                "to names; stress-1 says how much the 2-D picture distorts the distances.")
    if stem == "colorspace":
        return ("Each model's colours in 3-D (classical MDS of its distances, best layer), aligned to the reference "
                "colour space by rotation or reflection, scale and shift; each point painted in its own colour.")
    score = stem.removeprefix("scatter_")
    return (f"Alignment to {lb.reference} against {score}: one point per model (area ~ log parameters), blue "
            "trained, red random controls and green parameter-free models, a least-squares line with its bootstrap 95% band per kind whose "
            "score varies, and Pearson r of each kind and of all.")


def params_label(p: float) -> str:
    return f"{p / 1e6:.1f}M" if pd.notna(p) else ""


def render_html(lb: Leaderboard, pngs: list[Path]) -> str:
    """One page, no external resources: figures inlined as data URIs, a few lines of script to sort columns."""
    table = display_table(lb)
    head = "".join(f'<th onclick="sortBy({i})">{html.escape(c)}<span class="arrow"></span></th>'
                   for i, c in enumerate(table.columns))
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in table.itertuples(index=False))
    corr = lb.correlations.to_html(index=False, float_format=lambda v: f"{v:.3f}", border=0) if not lb.correlations.empty else ""
    corr = corr and corr + f"<p>{html.escape(CORRELATION_NOTE)}</p>"
    figs = "".join(f'<figure><img alt="{html.escape(caption(lb, p.stem))}" '
                   f'src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">'
                   f"<figcaption>{html.escape(caption(lb, p.stem))}</figcaption></figure>" for p in pngs)
    consistency = ("<h2>Does the ranking depend on the data?</h2>"
                   f"<p>{html.escape(CONSISTENCY_NOTE)}</p>"
                   + lb.consistency.to_html(index=False, float_format=lambda v: f"{v:.3f}", border=0)
                   if not lb.consistency.empty else "")
    sources = "".join(f"<li><code>{html.escape(k)}</code>: {html.escape(v)}</li>" for k, v in lb.meta["scores_sources"].items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(lb.suite.id)} leaderboard</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}}table{{border-collapse:collapse;font-size:13px}}
th,td{{padding:3px 8px;border-bottom:1px solid #ddd;text-align:left}}th{{cursor:pointer;background:#f3f3f3}}
figure{{display:inline-block;margin:1em;max-width:560px;vertical-align:top}}img{{max-width:560px}}
figcaption{{font-size:13px;color:#333}}</style></head><body>
<h1>{html.escape(lb.suite.id)} leaderboard</h1>
<p>{html.escape(lb.metric)} alignment to <code>{html.escape(str(lb.reference))}</code>, max over layer pairs, on
{html.escape(lb.condition)}. Run {html.escape(lb.meta['run'])}. Click a column to sort (largest first; again to
reverse).</p>
<p>{html.escape(chance_sentence(lb))}</p>
<table id="board"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>
{"".join(f"<p>{html.escape(t)}</p>" for t in (p_floor_note(lb), uncertainty_sentence(lb), verification_sentence(lb))
         if t)}
{"<h2>What these data can and cannot show</h2><ul>" + "".join(f"<li>{html.escape(b)}</li>" for b in limits(lb))
 + "</ul>" if limits(lb) else ""}
<h2>Alignment vs downstream scores</h2>{corr or '<p>No downstream scores for this suite.</p>'}
{consistency}
<h2>Figures</h2>{figs}
<h2>Sources</h2><ul>{sources}</ul>
<script>
let dir = {{}};
function sortBy(col) {{
  const tb = document.querySelector('#board tbody');
  const rows = Array.from(tb.rows);
  dir[col] = dir[col] === -1 ? 1 : -1;  // largest first on the first click
  document.querySelectorAll('#board th .arrow').forEach((a, i) => {{ a.textContent = i === col ? (dir[col] < 0 ? ' \u25bc' : ' \u25b2') : ''; }});
  const key = r => {{ const t = r.cells[col].textContent; const n = parseFloat(t); return isNaN(n) ? t : n; }};
  rows.sort((a, b) => {{ const x = key(a), y = key(b);
    if (x === '' || y === '') return (x === '') - (y === '');
    return (x < y ? -1 : x > y ? 1 : 0) * dir[col]; }});
  rows.forEach(r => tb.appendChild(r));
}}
</script></body></html>
"""
