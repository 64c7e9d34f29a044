"""The PRH colour figure (Figure 8): each representation's colours embedded in 3-D by classical MDS of its
Euclidean distances, aligned to CIELAB by the best similarity transform (Kabsch-Umeyama: rotation or reflection,
scale, translation), every point painted in its own colour, the models side by side.

A model enters with the layer whose score to the reference is best in the run; its features are read from the
cache (never extracted) and prepared as the suite prepares them."""

from __future__ import annotations

from pathlib import Path

from ..errors import BadInput
from ..features import FeatureCache
from ..lazy import np, pd
from .leaderboard import Leaderboard
from .results import Results

#: panels beyond the reference (three rows of four): the best-ranked models, and the last-ranked (a control, usually)
PANELS = 11


def umeyama(z: np.ndarray, target: np.ndarray, reflect: bool) -> tuple[np.ndarray, float]:
    """s z R + t closest to `target` in least squares (Umeyama 1991), R a rotation, or a rotation times a
    reflection when `reflect`; returns the mapped points and the residual as a share of the target's spread."""
    mz, mt = z.mean(0), target.mean(0)
    zc, tc = z - mz, target - mt
    u, s, vt = np.linalg.svd(zc.T @ tc)
    d = np.ones(len(s))
    if (np.linalg.det(u @ vt) < 0) != reflect:
        d[-1] = -1
    r = u @ np.diag(d) @ vt
    scale = (s * d).sum() / (zc**2).sum()
    mapped = scale * zc @ r + mt
    return mapped, float(((mapped - target) ** 2).sum() / (tc**2).sum())


def aligned(z: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, float]:
    """The better of the proper and the mirrored Kabsch-Umeyama alignment (MDS fixes no handedness)."""
    return min((umeyama(z, target, reflect) for reflect in (False, True)), key=lambda pair: pair[1])


def color_figure(lb: Leaderboard, res: Results, cache: FeatureCache, out: Path) -> list[Path]:
    """Write colorspace.png/svg for a leaderboard (of the run `res`) whose reference is a 3-D colour space whose
    coordinates are CIELAB (a suite's `figures: [colors]`)."""
    from skimage.color import lab2rgb

    from ..align import prepare
    from .figures import classical_mds, pyplot, save

    if lb.reference is None:
        raise BadInput(f"{res.source}: the colour figure needs a reference colour space")
    scores = res.scores[(res.scores.metric == lb.metric) & (res.scores.condition == lb.condition)]
    prep = lb.suite.prepare

    def features(model: str, layer: str | None) -> np.ndarray:
        run = res.record.models[model].run_under(lb.condition)
        feats = cache.load(model, run.cache_key) if run is not None and run.cache_key else None
        if feats is None:
            raise BadInput(f"the features of '{model}' are no longer in the cache {cache.root}; run the suite again")
        i = feats.layer_names.index(layer) if layer is not None else 0
        layers = prepare(feats.tensors, prep.clamp_quantile, prep.l2_normalize, False, prep.clamp, prep.precision)
        return layers[i].double().numpy()

    ref = features(lb.reference, None)
    if ref.shape[1] != 3:
        raise BadInput(f"reference '{lb.reference}' is {ref.shape[1]}-D; the colour figure needs a 3-D colour space")
    colors = np.clip(lab2rgb(ref[:, None, :])[:, 0, :], 0, 1)
    ranked = [m for m in lb.table.model if m != lb.reference and m in set(scores.model_x) | set(scores.model_y)]
    shown = ranked[: PANELS - 1] + ranked[-1:] if len(ranked) > PANELS else ranked
    panels: list[tuple[str, np.ndarray, str]] = [(lb.reference, ref, "reference")]
    for model in shown:
        pair = scores[
            ((scores.model_x == lb.reference) & (scores.model_y == model))
            | ((scores.model_x == model) & (scores.model_y == lb.reference))
        ]
        best = pair.loc[pair.score.idxmax()]
        layer = best.layer_y if best.model_y == model else best.layer_x
        x = features(model, layer)
        dist = np.sqrt(np.clip(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1), 0, None))
        z, kept = classical_mds(dist, 3)
        mapped, residual = aligned(z, ref)
        row = lb.table.set_index("model").loc[model]
        stats = f"{lb.metric} {row.alignment_to_reference:.3f}" + (
            f", p = {row.p_value:.3g}" if "p_value" in row and pd.notna(row.p_value) else ""
        )
        panels.append((f"{model} [{layer}]", mapped, f"{stats}\nresidual {residual:.2f}, MDS keeps {kept:.0%}"))
    plt = pyplot()
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig = plt.figure(figsize=(3.6 * cols, 3.7 * rows))
    for k, (title, pts, note) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, k + 1, projection="3d")
        ax.scatter(pts[:, 1], pts[:, 2], pts[:, 0], c=colors, s=6, depthshade=False)  # a*, b*, L* up
        ax.set_title(f"{title}\n{note}", fontsize=7)
        ax.set_xlabel("a*", fontsize=6, labelpad=-8)
        ax.set_ylabel("b*", fontsize=6, labelpad=-8)
        ax.set_zlabel("L*", fontsize=6, labelpad=-8)
        ax.tick_params(labelsize=0, length=0)
        ax.view_init(elev=20, azim=-60)
    fig.suptitle(
        f"{lb.suite.id}: {len(ref)} colours in each representation (classical MDS to 3-D, aligned to "
        f"{lb.reference} by rotation/reflection, scale and shift); each point in its own colour",
        fontsize=8,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.97))  # room for the title above the first row's panel titles
    return save(fig, out / "colorspace")
