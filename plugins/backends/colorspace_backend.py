"""Colour spaces as models: reference representations of a colour (the mean RGB of a sample's image; a swatch's
own colour) for the PRH colour study (Figure 8, Appendix D).

- `source: cielab`: CIE L*a*b* coordinates (skimage.color.rgb2lab, D65): a perceptual space, 3-D Euclidean.
- `source: srgb`: the sRGB coordinates in [0, 1] themselves, a non-perceptual control.
- `source: pmi`: the paper's vision kernel: colours of real photographs quantised to `levels`^3 bins, pixel
  pairs within `radius` pixels counted, positive pointwise mutual information (PPMI) between bins; a colour is
  the PPMI rows of the bins near it (Gaussian weights over bin centres, sigma = one bin width).

Each is one layer. The photographs are those bundled with scikit-image and scikit-learn (`photos`)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from prh_bench.plugin import (
    BadInput,
    FeatureExtractor,
    ModelBackend,
    ModelManifest,
    Sample,
    hookimpl,
    np,
    preprocess_options,
    torch,
)

SOURCES = ("cielab", "srgb", "pmi")
PMI_OPTIONS = {
    "levels": 8,
    "radius": 4,
    "photos": [
        "skimage:astronaut",
        "skimage:chelsea",
        "skimage:coffee",
        "skimage:rocket",
        "skimage:hubble_deep_field",
        "skimage:immunohistochemistry",
        "skimage:retina",
        "skimage:motorcycle",
        "sklearn:china",
        "sklearn:flower",
    ],
}


def mean_rgb(sample: Sample) -> np.ndarray:
    if sample.image is None:
        raise BadInput(f"sample '{sample.id}' has no image: a colour space reads the colour of an image")
    return np.asarray(sample.image.convert("RGB"), dtype=np.float64).reshape(-1, 3).mean(0) / 255


@lru_cache(maxsize=4)
def ppmi_table(photos: tuple[str, ...], levels: int, radius: int) -> np.ndarray:
    """PPMI between quantised colours (levels^3 bins) from pixel pairs at most `radius` apart in the photos."""
    from prh_bench.plugins.datasets.photos import load_photo

    bins = levels**3
    counts = np.zeros(bins * bins, dtype=np.int64)
    offsets = [
        (dy, dx)
        for dy in range(0, radius + 1)
        for dx in range(-radius, radius + 1)
        if (dy > 0 or dx > 0) and dy * dy + dx * dx <= radius * radius
    ]
    for ref in photos:
        rgb = np.asarray(load_photo(ref), dtype=np.int64)
        q = rgb * levels // 256
        idx = (q[..., 0] * levels + q[..., 1]) * levels + q[..., 2]
        h, w = idx.shape
        for dy, dx in offsets:  # pixel (y, x) with pixel (y + dy, x + dx)
            a = idx[: h - dy, max(0, -dx) : w - max(0, dx)]
            b = idx[dy:, max(0, dx) : w - max(0, -dx)]
            counts += np.bincount((a * bins + b).ravel(), minlength=bins * bins)
    c = counts.reshape(bins, bins).astype(np.float64)
    c = c + c.T  # a pair counts both ways
    total, rows = c.sum(), c.sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        pmi = np.log(c * total / np.outer(rows, rows))
    return np.where(np.isfinite(pmi) & (pmi > 0), pmi, 0.0)


class ColorSpaceExtractor(FeatureExtractor):
    def __init__(self, m: ModelManifest):
        if m.source not in SOURCES:
            raise BadInput(f"model '{m.id}': field 'source': expected one of {', '.join(SOURCES)}, got {m.source!r}")
        self.source = m.source
        self.layer_names = {"cielab": ["lab"], "srgb": ["rgb"], "pmi": ["ppmi"]}[m.source]
        if m.source == "pmi":
            opts = preprocess_options(m, PMI_OPTIONS)
            self.levels = int(opts["levels"])
            self.table = ppmi_table(tuple(opts["photos"]), self.levels, int(opts["radius"]))
            grid = (np.arange(self.levels) + 0.5) / self.levels
            self.centres = np.stack(np.meshgrid(grid, grid, grid, indexing="ij"), -1).reshape(-1, 3)
        else:
            preprocess_options(m, {})

    def __call__(self, batch: Sequence[Sample]) -> list[torch.Tensor]:
        rgb = np.stack([mean_rgb(s) for s in batch])
        if self.source == "srgb":
            out = rgb
        elif self.source == "cielab":
            from skimage.color import rgb2lab

            out = rgb2lab(rgb[:, None, :])[:, 0, :]
        else:
            d2 = ((rgb[:, None, :] - self.centres[None]) ** 2).sum(-1)
            w = np.exp(-d2 * self.levels**2 / 2)
            out = (w / w.sum(1, keepdims=True)) @ self.table
        return [torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))]


class ColorSpaceBackend(ModelBackend):
    libraries = ("numpy", "scikit-image")
    parameter_free = True

    def load(self, manifest: ModelManifest, device: Any) -> FeatureExtractor:
        return ColorSpaceExtractor(manifest)

    def weights_status(self, m: ModelManifest) -> str:
        return "local"

    def preprocess_keys(self, m: ModelManifest) -> tuple[str, ...]:
        return tuple(PMI_OPTIONS) if m.source == "pmi" else ()

    def feature_widths(self, m: ModelManifest) -> list[int]:
        return [3] if m.source in ("cielab", "srgb") else [int(m.preprocess.get("levels", 8)) ** 3]


@hookimpl
def prh_model_backends() -> dict[str, Any]:
    return {"colorspace": ColorSpaceBackend()}
