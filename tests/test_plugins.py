"""The plugin system: hook docs, an external plugin package found through its entry point, and the allow-list."""

from __future__ import annotations

import inspect
import textwrap
from pathlib import Path

import pytest

from prh_bench import hookspecs
from prh_bench.manager import BUILTINS, build_plugin_manager, load_plugins

from .conftest import cli, cli_json, write_yaml

PLUGIN_CODE = '''
"""A third-party plugin: a 'pixels' backend (grey thumbnails at two sizes: a model with two layers)."""
from pathlib import Path

import numpy as np
import torch
from prh_bench.backend import FeatureExtractor, ModelBackend
from prh_bench.hookspecs import hookimpl


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


@hookimpl
def prh_model_backends():
    return {"pixels": PixelsBackend()}


@hookimpl
def prh_manifest_dirs():
    return [Path(__file__).parent / "manifests"]
'''


@pytest.fixture
def external_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A tiny installed-looking package: module, manifests and a dist-info with an entry point."""
    pkg = tmp_path / "prh_pixels"
    write_yaml(pkg / "__init__.py", PLUGIN_CODE)
    write_yaml(pkg / "manifests" / "pixel-thumbs.yaml", textwrap.dedent("""\
        kind: model
        id: pixel-thumbs
        version: 1
        backend: pixels
        source: thumbnails
        modality: vision
        weights: {random: 0}
        citation: "test plugin"
        """))
    write_yaml(pkg / "manifests" / "pixels-suite.yaml", textwrap.dedent("""\
        kind: suite
        id: pixels-suite
        version: 1
        dataset: pocket-photos
        models: [pixel-thumbs, efficientnet-lite0-random]
        metrics: [{name: mutual_knn, k: 3}]
        max_samples: 20
        """))
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
    plugins = cli_json("ls", "plugins")
    assert {"plugin": "pixels", "distribution": "prh-pixels", "provides": "backend:pixels"} in plugins
    shown = cli_json("show", "pixel-thumbs")
    assert shown["provided_by"] == "pixels"
    out = cli_json("run", "--suite", "pixels-suite", "--out", tmp_path / "run")
    assert out["models"]["pixel-thumbs"]["status"] == "extracted"
    (pair,) = out["best"]
    assert {pair["model_x"], pair["model_y"]} == {"pixel-thumbs", "efficientnet-lite0-random"}
    assert 0.0 < pair["score"] <= 1.0
    smoke = cli("smoke", "pixel-thumbs", "--samples", "6")
    assert smoke.exit_code == 0 and "ok: 'pixel-thumbs' gave 2 layers" in smoke.output


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

    with pytest.raises(BadInput, match="backend 'loose' of plugin .* is a object, not a prh_bench.backend.ModelBackend"):
        load_plugins((Loose(),))
