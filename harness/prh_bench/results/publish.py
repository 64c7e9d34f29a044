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
from .leaderboard_figures import embedding_figure, leaderboard_heatmap, scatter_figure
from .matrices import params_key
from .report import md_table, md_text
from .run_folder import slug

CORRELATION_NOTE = (
    "r: over the models with both numbers (n): all of them, or the trained ones alone (models); "
    "a correlation across trained models and random controls mostly measures the gap between the "
    "two clusters, so read the trained row. partial pearson: r after both sides are regressed on "
    "the size covariates in controls (log10 parameters, depth in layers extracted, log2 widest "
    "layer; as many as leave four residual degrees of freedom), its p_value by Freedman-Lane "
    "permutation. ci_low and ci_high: the 2.5 and 97.5 percentiles of r over bootstrap resamples of "
    "the models, of which bootstrap_resamples (of 2000) had both sides varying (the others have no "
    "r), none below 5 models; p_value: two-sided permutation test of the pairing (with n models it "
    "cannot go below about 2/n!); score_direction: whether more of the score means more competence "
    "(for bits per byte it means less, so alignment growing with competence shows as a negative r)."
)


CONSISTENCY_NOTE = (
    "The leaderboard shows the run's first condition. Each other condition against the first and the "
    "previous one: matrix_spearman, Spearman rho of the two model x model alignment matrices' entries "
    "(over the models both have), with a one-sided Mantel permutation p (models relabelled in rows "
    "and columns together); ranking_spearman, rho of the models' alignment to the reference."
)


def write_leaderboard(
    lb: Leaderboard, out: Path, more_figures: Callable[[Path], list[Path]] | None = None
) -> dict[str, str]:
    """Tables, figures and the page of a leaderboard in `out`; `more_figures(out)` adds suite-specific ones."""
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    lb.table.to_csv(out / "leaderboard.csv", index=False)
    lb.correlations.to_csv(out / "correlations.csv", index=False)
    doc = {
        "meta": lb.meta.model_dump(mode="json"),
        "table": json.loads(lb.table.to_json(orient="records")),
        "correlations": json.loads(lb.correlations.to_json(orient="records")),
        "binned": json.loads(lb.binned.to_json(orient="records")),
    }
    (out / "leaderboard.json").write_text(json.dumps(doc, indent=2), encoding="utf-8")
    figures = leaderboard_heatmap(lb, out / "heatmap") + embedding_figure(lb, out / "embedding")
    for score in dict.fromkeys(lb.correlations.score) if not lb.correlations.empty else []:
        figures += scatter_figure(lb, score, out / f"scatter_{slug(score)}")
    if more_figures is not None:
        figures += more_figures(out)
    md = [
        f"# {lb.suite.id} leaderboard",
        "",
        f"Models ranked by {md_text(lb.metric)} ({md_text(params_key(lb.meta.metric_params))}) alignment to "
        f"{md_text(lb.reference)} (max over layer pairs) on {md_text(lb.condition)}; results of "
        f"{md_text(lb.meta.source)} ({md_text(lb.meta.created)}), prh-bench {md_text(lb.meta.harness)}.",
        "",
        md_text(chance_sentence(lb)),
        "",
        md_table(display_table(lb)),
        "",
    ]
    md += [
        md_text(text) + "\n" for text in (p_floor_note(lb), uncertainty_sentence(lb), verification_sentence(lb)) if text
    ]
    if bounds := limits(lb):
        md += ["## What these data can and cannot show", ""] + [f"- {md_text(b)}" for b in bounds] + [""]
    if not lb.correlations.empty:
        md += [
            "## Alignment vs downstream scores",
            "",
            "Pearson and Spearman r with percentile-bootstrap 95% intervals (models resampled) and two-sided "
            "permutation p-values.",
            "",
            md_table(lb.correlations, ".3f"),
            "",
            CORRELATION_NOTE,
            "",
        ]
    if not lb.consistency.empty:
        md += ["## Does the ranking depend on the data?", "", CONSISTENCY_NOTE, "", md_table(lb.consistency, ".3f"), ""]
    if not lb.binned.empty:
        lb.binned.to_csv(out / "binned.csv", index=False)
        md += ["## Alignment by number of tasks solved", "", lb.meta.solved_rule + ".", "", md_table(lb.binned), ""]
    md += ["## Sources of downstream scores", ""] + [
        f"- {md_text(k)}: {md_text(v)}" for k, v in lb.meta.scores_sources.items()
    ]
    (out / "leaderboard.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    (out / "index.html").write_text(render_html(lb, [p for p in figures if p.suffix == ".png"]), encoding="utf-8")
    for p in [
        out / n for n in ("leaderboard.md", "leaderboard.csv", "leaderboard.json", "correlations.csv", "index.html")
    ] + figures:
        files[p.name] = str(p)
    return files


def chance_sentence(lb: Leaderboard) -> str:
    """What chance looks like for this metric, and what the p-value and calibrated columns mean."""
    m = lb.meta
    text = f"Chance level of {lb.metric} at N = {m.n_samples}: {m.chance_level:.4f} ({m.chance_source})."
    if (c := m.calibration) is not None:
        within = (
            " within their groups (each sample exchanged only with samples of its own group: crops of one "
            "photograph, so the null keeps what telling the groups apart gives any model)"
            if c.exchange == "within_groups"
            else ""
        )
        text += (
            f" p_value: add-one permutation p-value of the score to the reference ({c.permutations} shuffles "
            f"of the samples{within}, the same for all layers, max over layer pairs); calibrated: "
            f"clamp((score - tau) / (1 - tau), 0, 1) with tau the null's critical value at alpha = {c.alpha:g} "
            f"(calibrated-similarity's definition): 0 for a score a shuffle reaches."
        )
    return text


def verification_sentence(lb: Leaderboard) -> str:
    """What the verification column of a leaderboard built from a results store means."""
    if "verification" not in lb.table:
        return ""
    return (
        "verification: 'verified (s of M records recomputed)' means `prh-bench verify` checked every file, "
        "manifest version and feature checksum of the submission that brought the model's results, and "
        "recomputed s of its M pair records from the features within tolerance; 'unverified' means the results "
        "were merged without that check (the maintainers' own runs included, unless verified too). Permutation "
        "nulls (p_value, calibrated) are checked for consistency with their scores, not recomputed."
    )


def uncertainty_sentence(lb: Leaderboard) -> str:
    """How the intervals, tiers and p_vs_next were made, and what they cannot show; empty without them."""
    u = lb.meta.uncertainty
    if u is None:
        return ""
    unit = "groups of samples (crops of one photograph, ...)" if u.groups < u.samples else "samples"
    return (
        f"ci_low, ci_high: 95% interval of the alignment to the reference, and rank_low, rank_high of the rank, "
        f"over {u.resamples} resamples with replacement of the {u.groups} {unit} of the {u.samples} "
        "samples, each sample's term computed from the neighbour lists of the full set (a resample of the "
        "features would make a sample drawn twice its own nearest neighbour); the best layer pair is held "
        "fixed. tier: adjacent ranks that a paired sign-flip test on the same samples (whole groups flipped) "
        f"cannot separate at alpha = {u.alpha:g} after Holm's adjustment over the {len(lb.table) - 2} adjacent "
        f"pairs share a tier ({u.tiers} tiers); p_vs_next: that adjusted p against the next rank, at least "
        f"{u.test_floor:.2g} before adjustment. With few groups the intervals are coarse and no test can reach "
        "a small p; the intervals say how much the ranking depends on which samples were averaged, not on "
        "another draw of the data set's photographs or concepts."
    )


def limits(lb: Leaderboard) -> list[str]:
    """What this leaderboard's data can and cannot show, from its own figures: the samples' independent units,
    how much of the score random controls reach, which ranks the tests separate, and how many points a trend
    within the trained models rests on."""
    m, t, out = lb.meta, lb.table, []
    if (u := m.uncertainty) is not None and u.groups < u.samples:
        out.append(
            f"{u.samples} samples in {u.groups} groups (photographs or concepts): the independent units "
            f"are nearer {u.groups} than {u.samples}, and every interval and test here counts groups."
        )
    measure = "alignment_to_reference" if lb.reference else "mean_alignment"
    # A comprehension, not dict(groupby): dict() would take the groupby's `keys` attribute for a mapping's.
    kinds = {k: part for k, part in t.dropna(subset=[measure]).groupby("kind")} if "kind" in t else {}  # noqa: C416
    if "random" in kinds and "trained" in kinds:
        rnd, trn = kinds["random"], kinds["trained"]
        text = (
            f"Random-initialised controls score {rnd[measure].min():.3f}-{rnd[measure].max():.3f} against "
            f"{trn[measure].min():.3f}-{trn[measure].max():.3f} for trained models (chance "
            f"{m.chance_level:.3f}): that much of the score needs no training, so read alignment against the "
            "controls, not against chance."
        )
        if "calibrated" in t and rnd.calibrated.notna().any():
            text += (
                f" Against the permutation null the controls' calibrated scores are "
                f"{rnd.calibrated.min():.2f}-{rnd.calibrated.max():.2f}, the trained models' "
                f"{trn.calibrated.min():.2f}-{trn.calibrated.max():.2f}."
            )
        out.append(text)
    if "tier" in t and t.tier.notna().any():
        out.append(
            f"The paired tests separate the {int(t.tier.notna().sum())} ranked models into {int(t.tier.max())} "
            "tiers: ranks within a tier are not ordered by these data."
        )
    if not lb.correlations.empty and "models" in lb.correlations:
        trained = lb.correlations[(lb.correlations.models == "trained") & (lb.correlations.statistic == "pearson")]
        for r in trained.itertuples():
            out.append(
                f"Within the trained models, {r.alignment} against {r.score} rests on {r.n} models "
                f"(r = {r.r:.2f}, p = {r.p_value:.2g}); with {r.n} points a permutation p cannot go below "
                f"{2 / math.factorial(r.n):.2g}, and a correlation across trained and random models mostly "
                "measures the gap between the two."
            )
    return out


def p_floor(lb: Leaderboard) -> tuple[float, pd.Series] | None:
    """(1/(R+1), which rows' p-values sit at it), or None without permutation p-values: a p there says
    p <= 1/(R+1), nothing smaller."""
    c = lb.meta.calibration
    if c is None or "p_value" not in lb.table:
        return None
    floor = 1 / (c.permutations + 1)
    return floor, pd.Series(np.isclose(lb.table.p_value, floor, rtol=1e-6), index=lb.table.index)


def p_floor_note(lb: Leaderboard) -> str:
    """How many p-values sit at the floor of their permutation count, and what that means."""
    if (found := p_floor(lb)) is None or not (at := int(found[1].sum())) or lb.meta.calibration is None:
        return ""
    return (
        f"{at} of {int(lb.table.p_value.notna().sum())} p-values sit at the floor of "
        f"{lb.meta.calibration.permutations} permutations, shown as p <= {found[0]:.2g} = 1/(R+1): no "
        "permutation reached the score, which bounds p, and does not make it smaller."
    )


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
        return (
            f"{lb.metric} between every pair of models (max over layer pairs); rows and columns ordered by "
            "clustering, so models that align sit together."
        )
    if stem == "embedding":
        return (
            f"Models placed by classical MDS of -log({lb.metric}): near means aligned. Numbers key the points "
            "to names; stress-1 says how much the 2-D picture distorts the distances."
        )
    if stem == "colorspace":
        return (
            "Each model's colours in 3-D (classical MDS of its distances, best layer), aligned to the reference "
            "colour space by rotation or reflection, scale and shift; each point painted in its own colour."
        )
    score = stem.removeprefix("scatter_")
    return (
        f"Alignment to {lb.reference} against {score}: one point per model (area ~ log parameters), blue "
        "trained, red random controls and green parameter-free models, a least-squares line with its bootstrap 95% band per kind whose "
        "score varies, and Pearson r of each kind and of all."
    )


def params_label(p: float) -> str:
    return f"{p / 1e6:.1f}M" if pd.notna(p) else ""


def render_html(lb: Leaderboard, pngs: list[Path]) -> str:
    """One page, no external resources: figures inlined as data URIs, a few lines of script to sort columns."""
    table = display_table(lb)
    head = "".join(
        f'<th onclick="sortBy({i})">{html.escape(c)}<span class="arrow"></span></th>'
        for i, c in enumerate(table.columns)
    )
    body = "".join(
        "<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in table.itertuples(index=False)
    )
    corr = (
        lb.correlations.to_html(index=False, float_format=lambda v: f"{v:.3f}", border=0)
        if not lb.correlations.empty
        else ""
    )
    corr = corr and corr + f"<p>{html.escape(CORRELATION_NOTE)}</p>"
    figs = "".join(
        f'<figure><img alt="{html.escape(caption(lb, p.stem))}" '
        f'src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">'
        f"<figcaption>{html.escape(caption(lb, p.stem))}</figcaption></figure>"
        for p in pngs
    )
    consistency = (
        "<h2>Does the ranking depend on the data?</h2>"
        f"<p>{html.escape(CONSISTENCY_NOTE)}</p>"
        + lb.consistency.to_html(index=False, float_format=lambda v: f"{v:.3f}", border=0)
        if not lb.consistency.empty
        else ""
    )
    sources = "".join(
        f"<li><code>{html.escape(k)}</code>: {html.escape(v)}</li>" for k, v in lb.meta.scores_sources.items()
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(lb.suite.id)} leaderboard</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}}table{{border-collapse:collapse;font-size:13px}}
th,td{{padding:3px 8px;border-bottom:1px solid #ddd;text-align:left}}th{{cursor:pointer;background:#f3f3f3}}
figure{{display:inline-block;margin:1em;max-width:560px;vertical-align:top}}img{{max-width:560px}}
figcaption{{font-size:13px;color:#333}}</style></head><body>
<h1>{html.escape(lb.suite.id)} leaderboard</h1>
<p>{html.escape(lb.metric)} alignment to <code>{html.escape(str(lb.reference))}</code>, max over layer pairs, on
{html.escape(lb.condition)}. Results of {html.escape(lb.meta.source)}. Click a column to sort (largest first; again to
reverse).</p>
<p>{html.escape(chance_sentence(lb))}</p>
<table id="board"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>
{
        "".join(
            f"<p>{html.escape(t)}</p>"
            for t in (p_floor_note(lb), uncertainty_sentence(lb), verification_sentence(lb))
            if t
        )
    }
{
        "<h2>What these data can and cannot show</h2><ul>"
        + "".join(f"<li>{html.escape(b)}</li>" for b in limits(lb))
        + "</ul>"
        if limits(lb)
        else ""
    }
<h2>Alignment vs downstream scores</h2>{corr or "<p>No downstream scores for this suite.</p>"}
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
