"""The plugin system: hook docs, an external plugin package found through its entry point, and the allow-list."""

from __future__ import annotations

import inspect
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from prh_bench import hookspecs
from prh_bench.manager import BUILTINS, build_plugin_manager, load_plugins

from .conftest import cli, cli_json, write_yaml

PLUGIN_CODE = '''
"""A third-party plugin implementing all five hooks through the plugin API alone: a 'pixels' backend (grey
thumbnails at two sizes: a model with two layers), a 'stripes' data set loader, a 'plain_cka' metric and a
'nearest_centroid' task, and the manifests that use them."""
from pathlib import Path

import numpy as np
from PIL import Image

from prh_bench.plugin import (FeatureExtractor, Metric, ModelBackend, Sample, SampleSet, Task, hookimpl, torch)


class Thumbs(FeatureExtractor):
    layer_names = ["thumb8", "thumb16"]

    def __call__(self, batch):
        out = []
        for size in (8, 16):
            out.append(torch.stack([
                torch.from_numpy(np.asarray(s.image.convert("L").resize((size, size)), dtype=np.float32).ravel())
                for s in batch]))
        return out


class PixelsBackend(ModelBackend):
    libraries = ("torch",)

    def load(self, manifest, device):
        return Thumbs()


def stripes(manifest):
    """Images of stripes at four angles (the label), each with a width of its own."""
    rng = np.random.default_rng(manifest.options.get("seed", 0))
    yy, xx = np.mgrid[0:32, 0:32]
    samples = []
    for i in range(manifest.options.get("count", 40)):
        label = i % 4
        angle = label * np.pi / 4
        wave = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) / rng.uniform(2.8, 3.2))
        image = Image.fromarray(((wave + 1) * 127.5).astype(np.uint8)).convert("RGB")
        samples.append(Sample(id=f"stripe{i:03d}", image=image, label=label))
    return SampleSet(tuple(samples))


class PlainCKA(Metric):
    """Linear CKA written from its definition: HSIC of centred Gram matrices, normalised."""

    name = "plain_cka"

    def summarize(self, feats, **params):
        x = feats.double() - feats.double().mean(0)
        return x @ x.T

    def pair_scores(self, sx, sy, **params):
        return torch.tensor([[float((a * b).sum() / (a.norm() * b.norm())) for b in sy] for a in sx],
                            dtype=torch.float64)

    def permute(self, summary, perm):
        return summary[perm][:, perm]


class NearestCentroid(Task):
    """Accuracy of the nearest class mean (last layer), fitted on half the samples and scored on the rest."""

    name = "nearest_centroid"

    def evaluate(self, feats, samples, **params):
        x = feats.tensors[-1].double()
        y = torch.tensor([s.label for s in samples.samples])
        fit = torch.arange(len(y)) // 4 % 2 == 0  # alternate runs of the four classes
        classes = sorted(set(y[fit].tolist()))
        means = torch.stack([x[fit & (y == c)].mean(0) for c in classes])
        guess = torch.tensor(classes)[torch.cdist(x[~fit], means).argmin(1)]
        return float((guess == y[~fit]).double().mean())


@hookimpl
def prh_model_backends():
    return {"pixels": PixelsBackend()}


@hookimpl
def prh_dataset_loaders():
    return {"stripes": stripes}


@hookimpl
def prh_metrics():
    return {"plain_cka": PlainCKA()}


@hookimpl
def prh_tasks():
    return {"nearest_centroid": NearestCentroid()}


@hookimpl
def prh_manifest_dirs():
    return [Path(__file__).parent / "manifests"]
'''


@pytest.fixture
def external_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A tiny installed-looking package: module, manifests and a dist-info with an entry point."""
    pkg = tmp_path / "prh_pixels"
    write_yaml(pkg / "__init__.py", PLUGIN_CODE)
    write_yaml(
        pkg / "manifests" / "pixel-thumbs.yaml",
        textwrap.dedent("""\
        kind: model
        id: pixel-thumbs
        version: 1
        backend: pixels
        source: thumbnails
        modality: vision
        weights: {random: 0}
        citation: "test plugin"
        """),
    )
    write_yaml(
        pkg / "manifests" / "pixels-suite.yaml",
        textwrap.dedent("""\
        kind: suite
        id: pixels-suite
        version: 1
        dataset: pocket-photos
        models: [pixel-thumbs, efficientnet-lite0-random]
        metrics: [{name: mutual_knn, k: 3}]
        max_samples: 20
        """),
    )
    write_yaml(
        pkg / "manifests" / "stripes-40.yaml",
        textwrap.dedent("""\
        kind: dataset
        id: stripes-40
        version: 1
        loader: stripes
        modality: vision
        options: {count: 40}
        """),
    )
    write_yaml(
        pkg / "manifests" / "plain-cka.yaml",
        textwrap.dedent("""\
        kind: metric
        id: plain_cka
        version: 1
        name: plain_cka
        """),
    )
    write_yaml(
        pkg / "manifests" / "stripes-suite.yaml",
        textwrap.dedent("""\
        kind: suite
        id: stripes-suite
        version: 1
        dataset: stripes-40
        models: [pixel-thumbs, efficientnet-lite0-random]
        metrics: [{name: plain_cka}, {name: cka}]
        prepare: {clamp_quantile: null, l2_normalize: false}
        probes: [{dataset: stripes-40, task: nearest_centroid}]
        """),
    )
    info = tmp_path / "prh_pixels-0.1.dist-info"
    write_yaml(info / "METADATA", "Metadata-Version: 2.1\nName: prh-pixels\nVersion: 0.1\n")
    write_yaml(info / "entry_points.txt", "[prh_bench]\npixels = prh_pixels\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PRH_BENCH_PLUGINS", "pixels")  # the one third-party plugin these tests load
    return tmp_path


def test_every_hook_is_documented_and_implemented_by_a_builtin() -> None:
    pm = build_plugin_manager()
    specs = [n for n, f in inspect.getmembers(hookspecs, inspect.isfunction) if n.startswith("prh_")]
    assert specs == ["prh_dataset_loaders", "prh_manifest_dirs", "prh_metrics", "prh_model_backends", "prh_tasks"]
    for name in specs:
        doc = inspect.getdoc(getattr(hookspecs, name))
        assert doc and len(doc.splitlines()) == 1, f"{name} needs a one-line docstring"
        impls = {i.plugin_name for i in getattr(pm.hook, name).get_hookimpls()}
        assert impls & set(BUILTINS), f"no built-in implements {name}"
    # Where plugin authors read (as datasette's test_docs): a hook missing there is a hook nobody finds.
    contributing = (Path(__file__).parents[1] / "CONTRIBUTING.md").read_text(encoding="utf-8")
    assert [n for n in specs if f"`{n}`" not in contributing and f"def {n}(" not in contributing] == []


def test_external_plugin_adds_a_model_that_is_listed_and_runs(external_plugin: Path, tmp_path: Path) -> None:
    rows = cli_json("ls", "models")
    assert "pixel-thumbs" in [r["id"] for r in rows]
    shown = cli_json("show", "pixel-thumbs")
    assert shown["provided_by"] == "pixels"
    out = cli_json("run", "--suite", "pixels-suite", "--out", tmp_path / "run")
    assert out["models"]["pixel-thumbs"]["status"] == "extracted"
    (pair,) = out["best"]
    assert {pair["model_x"], pair["model_y"]} == {"pixel-thumbs", "efficientnet-lite0-random"}
    assert 0.0 < pair["score"] <= 1.0
    smoke = cli("smoke", "pixel-thumbs", "--samples", "6")
    assert smoke.exit_code == 0 and "ok: 'pixel-thumbs' gave 2 layers" in smoke.output


def test_an_outside_plugin_serves_all_five_hooks(external_plugin: Path, tmp_path: Path) -> None:
    """Only the backend and the manifest folder of an outside plugin were exercised (2 of 5 hooks): its data set
    loader, metric and task run too, through the plugin API alone, and give the numbers their definitions do."""
    plugins = cli_json("ls", "plugins")
    row = next(r for r in plugins if r["plugin"] == "pixels")
    assert (row["distribution"], row["provides"]) == (
        "prh-pixels",
        "backend:pixels, loader:stripes, metric:plain_cka, task:nearest_centroid",
    )
    out = cli_json("run", "--suite", "stripes-suite", "--out", tmp_path / "run")
    assert {r["status"] for r in out["runs"]} == {"extracted", "cached"}  # the probe reads the alignment features
    scores = pd.read_csv(tmp_path / "run" / "scores.csv")
    mine, builtin = (
        scores[scores.metric == m].set_index(["model_x", "model_y", "layer_x", "layer_y"]).score
        for m in ("plain_cka", "cka")
    )
    # Its CKA is linear CKA: equal to the built-in within float32 rounding (the built-in multiplies float32 features).
    assert len(mine) == 2 * 6 and (mine - builtin.loc[mine.index]).abs().max() < 1e-6
    probes = pd.read_csv(tmp_path / "run" / "probes.csv").set_index("model").score
    assert set(probes.index) == {"pixel-thumbs", "efficientnet-lite0-random"}
    assert probes["pixel-thumbs"] == 1.0  # four orientations of stripes of near one width are apart in pixel space


def test_allow_list_env_var_restricts_external_plugins(external_plugin: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRH_BENCH_PLUGINS", "")
    assert "pixels" not in load_plugins().backends
    monkeypatch.setenv("PRH_BENCH_PLUGINS", "pixels")
    assert "pixels" in load_plugins().backends


def test_two_plugins_claiming_one_name_is_an_error() -> None:
    from prh_bench.errors import BadInput
    from prh_bench.hookspecs import hookimpl

    class Clash:
        @hookimpl
        def prh_model_backends(self):
            return {"timm": object()}

    with pytest.raises(BadInput, match="backend 'timm' is provided by two plugins"):
        load_plugins(extra=(Clash(),))


def test_a_plugin_object_that_is_no_backend_is_refused_naming_the_plugin() -> None:
    from prh_bench.errors import BadInput
    from prh_bench.hookspecs import hookimpl

    class Loose:
        @hookimpl
        def prh_model_backends(self):
            return {"loose": object()}

    with pytest.raises(
        BadInput, match=r"backend 'loose' of plugin .* is a object, not a prh_bench.backend.ModelBackend"
    ):
        load_plugins((Loose(),))
