"""Manifest schema, validation messages (file + field + expectation) and registry references."""

from __future__ import annotations

from pathlib import Path

import pytest

from prh_bench.errors import ManifestError
from prh_bench.manifest import ModelManifest, RandomWeights
from prh_bench.manifest_reader import load_manifest
from prh_bench.registry import Registry

from .conftest import cli, write_yaml

GOOD_MODEL = """\
kind: model
id: tiny-resnet
version: 1
backend: timm
source: resnet18
modality: vision
weights: {random: 3}
layers: {nodes: ["layer*"], pool: avg}
tags: [test]
"""


def test_good_model_parses(tmp_path: Path) -> None:
    m = load_manifest(write_yaml(tmp_path / "m.yaml", GOOD_MODEL))
    assert isinstance(m, ModelManifest)
    assert m.weights == RandomWeights(random=3)
    assert m.layers.nodes == ["layer*"]


def test_registry_ships_valid_manifests() -> None:
    result = cli("validate")
    assert result.exit_code == 0, result.output
    assert "manifest(s) valid" in result.output


def test_three_mistakes_give_three_clear_errors_and_exit_2(tmp_path: Path) -> None:
    misspelled = write_yaml(tmp_path / "misspelled.yaml", GOOD_MODEL.replace("modality:", "modalty:"))
    wrong_type = write_yaml(tmp_path / "wrong_type.yaml", GOOD_MODEL.replace("version: 1", "version: one"))
    unknown = write_yaml(tmp_path / "unknown_backend.yaml", GOOD_MODEL.replace("backend: timm", "backend: timmm"))
    result = cli("validate", misspelled, wrong_type, unknown)
    assert result.exit_code == 2
    err = result.stderr
    assert f"{misspelled}: field 'modalty': unknown field (misspelled?)" in err
    assert f"{misspelled}: field 'modality': required field is missing" in err
    assert f"{wrong_type}: field 'version': Input should be a valid integer" in err and "'one'" in err
    assert f"{unknown}: field 'backend': unknown backend 'timmm'; did you mean 'timm'?" in err


@pytest.mark.parametrize(
    "text, expected",
    [
        ("[1, 2]", "expected a mapping"),
        ("id: x\nversion: 1\n", "field 'kind': required field is missing"),
        ("kind: modle\nid: x\nversion: 1\n", "expected kind to be one of model, dataset, metric, suite"),
        (
            "kind: model\nid: x\nversion: 1\nbackend: timm\nsource: r\nmodality: vision\nweights: {random: a}\n",
            "field 'weights.random'",
        ),
        (
            "kind: suite\nid: s\nversion: 1\ndataset: d\nmodels: []\nmetrics: [{name: mutual_knn}]\n",
            "a suite needs at least one model",
        ),
        ("kind: model\nid: x\n  bad: [\n", "not valid YAML"),
        # The id names files: 300 characters passed validation, then the run died with "File name too long".
        (
            "kind: model\nid: " + "m" * 300 + "\nversion: 1\nbackend: timm\nsource: r\nmodality: vision\n",
            "field 'id': String should have at most 100 characters",
        ),
        # A repeated sweep entry would run twice and be kept once (the records are keyed by condition).
        (
            "kind: suite\nid: s\nversion: 1\ndataset: d\nmodels: [m]\nmetrics: [{name: mutual_knn}]\n"
            "sweep: {transform: gaussian_noise, levels: [0.1, 0.2, 0.1]}\n",
            "field 'sweep.levels': Value error, each entry must be distinct; repeated: 0.1",
        ),
        (
            "kind: suite\nid: s\nversion: 1\ndataset: d\nmodels: [m]\nmetrics: [{name: mutual_knn}]\n"
            "sweep: {datasets: [a, b, a]}\n",
            "field 'sweep.datasets': Value error, each entry must be distinct; repeated: a",
        ),
    ],
)
def test_schema_errors_name_file_and_field(tmp_path: Path, text: str, expected: str) -> None:
    path = write_yaml(tmp_path / "bad.yaml", text)
    with pytest.raises(ManifestError) as exc:
        load_manifest(path)
    assert str(path) in str(exc.value) and expected in str(exc.value)


def test_suite_references_are_checked(tmp_path: Path) -> None:
    write_yaml(
        tmp_path / "suite.yaml",
        """\
kind: suite
id: broken-suite
version: 1
dataset: no-such-dataset
models: [efficientnet-lite0, no-such-model]
metrics: [{name: mutual_knn, k: 5}, {name: ckaa}]
reference: resnet18-random
""",
    )
    result = cli("validate", tmp_path)
    assert result.exit_code == 2
    for needle in (
        "field 'dataset': unknown dataset 'no-such-dataset'",
        "field 'models.1': unknown model 'no-such-model'",
        "field 'metrics.1.name': unknown metric 'ckaa'; did you mean 'cka'?",
        "field 'reference': 'resnet18-random' is not one",
    ):
        assert needle in result.stderr


def test_an_invalid_manifest_is_set_aside_and_named_where_it_is_needed(tmp_path: Path) -> None:
    """One invalid --registry or third-party manifest made every command exit 2, even `ls plugins`; a suite using
    a model that failed validation was told "unknown model". Now it is skipped with a warning, and a command
    that needs it says which manifest is invalid and why."""
    write_yaml(tmp_path / "dup.yaml", GOOD_MODEL.replace("id: tiny-resnet", "id: efficientnet-lite0"))
    write_yaml(
        tmp_path / "typo.yaml", GOOD_MODEL.replace("id: tiny-resnet", "id: my-net").replace("modality", "modalty")
    )
    write_yaml(
        tmp_path / "uses.yaml",
        "kind: suite\nid: uses-mine\nversion: 1\ndataset: pocket-photos\n"
        "models: [my-net, resnet18-random]\nmetrics: [{name: mutual_knn}]\n",
    )
    listed = cli("--registry", tmp_path, "ls", "models")
    assert listed.exit_code == 0 and "resnet18-random" in listed.output and "my-net" not in listed.stdout
    # The duplicate makes every manifest that names efficientnet-lite0 ambiguous: its suites and score table too.
    assert "invalid manifest(s) skipped: efficientnet-lite0, imagenet-top1-pocket, my-net, pocket, " in listed.stderr
    assert "uses-mine (prh-bench validate shows why)" in listed.stderr
    assert cli("--registry", tmp_path, "ls", "plugins").exit_code == 0
    for args, needle in (
        (("show", "efficientnet-lite0"), "invalid model 'efficientnet-lite0': "),
        (("show", "my-net"), "invalid model 'my-net': "),
        (("run", "--suite", "uses-mine"), "invalid suite 'uses-mine': "),
        (("run", "--suite", "pocket"), "invalid suite 'pocket': "),
    ):
        result = cli("--registry", tmp_path, *args)
        assert result.exit_code == 2 and needle in result.stderr, (args, result.output)
    assert (
        "field 'models.0': invalid model 'efficientnet-lite0' (" in cli("--registry", tmp_path, "show", "pocket").stderr
    )
    shown = cli("--registry", tmp_path, "show", "uses-mine").stderr
    assert (
        "field 'models.0': invalid model 'my-net' (" in shown and "typo.yaml: field 'modality': required field" in shown
    )
    assert (
        "'efficientnet-lite0' is already defined in" in cli("--registry", tmp_path, "show", "efficientnet-lite0").stderr
    )
    checked = cli("--registry", tmp_path, "validate")
    assert checked.exit_code == 2 and "typo.yaml: field 'modalty'" in checked.stderr and "dup.yaml" in checked.stderr


def test_unknown_suite_is_bad_input() -> None:
    result = cli("run", "--suite", "does-not-exist")
    assert result.exit_code == 2
    assert "no suite with id 'does-not-exist'" in result.stderr


def test_unknown_id_suggests_close_matches() -> None:
    result = cli("show", "efficientnet-lite")
    assert result.exit_code == 2
    assert "Did you mean: efficientnet-lite" in result.stderr


def test_registry_lookup_by_kind() -> None:
    from prh_bench.manager import load_plugins

    reg = Registry.load(load_plugins())
    assert {"pocket", "pocket-text"} <= set(reg.of_kind(type(reg.get("pocket"))))
    assert [m.id for m in reg.suite_models(reg.get("pocket-text"))] == [
        "glove-6b-50d",
        "minilm-l6-random",
        "minilm-l6",
        "smollm2-135m-q4",
    ]


def test_one_file_with_all_three_mistakes_reports_each(tmp_path: Path) -> None:
    bad = write_yaml(
        tmp_path / "bad.yaml",
        GOOD_MODEL.replace("version: 1", "version: one")
        .replace("backend: timm", "backend: timmm")
        .replace("modality:", "modalty:"),
    )
    result = cli("validate", bad)
    assert result.exit_code == 2
    lines = [ln.strip() for ln in result.stderr.splitlines()[1:]]
    assert (
        f"{bad}: field 'version': Input should be a valid integer, unable to parse string as an integer, got 'one'"
        in lines
    )
    assert f"{bad}: field 'modalty': unknown field (misspelled?)" in lines
    assert f"{bad}: field 'backend': unknown backend 'timmm'; did you mean 'timm'?" in lines


def test_a_metric_manifest_cannot_contradict_its_metrics_direction(tmp_path: Path) -> None:
    text = "kind: metric\nid: my-knn\nversion: 1\nname: mutual_knn\nparams: {{k: 5}}\nhigher_is_better: {}\n"
    assert cli("validate", write_yaml(tmp_path / "ok.yaml", text.format("true"))).exit_code == 0
    bad = write_yaml(tmp_path / "bad.yaml", text.format("false"))
    result = cli("validate", bad)
    assert result.exit_code == 2
    assert f"{bad}: field 'higher_is_better': False, but metric 'mutual_knn' is higher-is-better" in result.stderr


def test_manifests_include_a_shared_fragment_and_cannot_escape_their_folder(tmp_path: Path) -> None:
    from prh_bench.errors import ManifestError
    from prh_bench.manifest_reader import load_manifest

    write_yaml(
        tmp_path / "_base.yaml",
        "kind: model\nversion: 1\nbackend: timm\nsource: resnet18\nmodality: vision\n"
        "weights: {path: /w.pth, sha256: null}\ntags: [a]\n",
    )
    one = write_yaml(tmp_path / "one.yaml", "include: _base.yaml\nid: one\nweights: {path: /other.pth}\ntags: [b]\n")
    m = load_manifest(one)
    assert (m.id, m.source, str(m.weights.path), m.tags) == ("one", "resnet18", "/other.pth", ["b"])
    assert cli("validate", tmp_path).exit_code == 0  # the fragment is no manifest of its own
    outside = write_yaml(tmp_path / "sub" / "x.yaml", "include: ../_base.yaml\nid: x\n")
    loop = write_yaml(tmp_path / "_loop.yaml", "include: loop.yaml\n")
    write_yaml(tmp_path / "loop.yaml", "include: _loop.yaml\nid: loop\n")
    for path, message in ((outside, "expected a file name inside this manifest's folder"), (loop, "includes itself")):
        with pytest.raises(ManifestError, match=message):
            load_manifest(path)


def test_the_contributor_docs_name_every_installed_backend() -> None:
    """The template and CONTRIBUTING listed 3 of the 7 backends."""
    from prh_bench.manager import load_plugins

    root = Path(__file__).parents[1]
    template = (root / "registry" / "templates" / "model.yaml").read_text()
    guide = (root / "CONTRIBUTING.md").read_text()
    backend_line = next(line for line in template.splitlines() if line.startswith("backend:"))
    for name in load_plugins().backends:
        assert name in backend_line and f"`{name}`" in guide, name


def test_a_relative_checkpoint_path_is_relative_to_the_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It resolved against the working directory, so a contributor's manifest beside its checkpoint broke when
    run from anywhere else."""
    from prh_bench.weights import resolve_path

    folder = tmp_path / "my-models"
    (folder / "ckpt").mkdir(parents=True)
    (folder / "ckpt" / "model.pth").write_bytes(b"x")
    path = write_yaml(
        folder / "m.yaml",
        "kind: model\nid: mine\nversion: 1\nbackend: timm\nsource: resnet18\n"
        "modality: vision\nweights: {path: ckpt/model.pth}\n",
    )
    monkeypatch.chdir(tmp_path)
    m = load_manifest(path)
    assert m.weights.path == str((folder / "ckpt" / "model.pth").resolve())
    assert resolve_path(m.weights.path, m.id).read_bytes() == b"x"
    text = path.read_text()
    for kept in ("pkg://pkg/file.pth", "${SOMEWHERE}/file.pth", "~/file.pth", "/abs/file.pth"):
        path.write_text(text.replace("ckpt/model.pth", f"'{kept}'"))
        assert load_manifest(path).weights.path == kept


def test_a_parameter_free_model_says_weights_none_and_is_no_random_control(tmp_path: Path) -> None:
    """A fixed colour space had to be labelled 'pretrained' (or 'random (seed 0)' after smoke), and was drawn as one."""
    from prh_bench.manifest import NO_WEIGHTS_LABEL
    from prh_bench.results.leaderboard import model_kind

    base = "kind: model\nversion: 1\nmodality: vision\n"
    write_yaml(tmp_path / "lab.yaml", base + "id: my-lab\nbackend: colorspace\nsource: cielab\nweights: none\n")
    m = load_manifest(tmp_path / "lab.yaml")
    assert (m.weights, m.params, m.weights_label, model_kind(m.weights_label)) == (
        "none",
        None,
        NO_WEIGHTS_LABEL,
        "parameter-free",
    )
    assert cli("--registry", tmp_path, "validate", tmp_path).exit_code == 0
    ok = cli(
        "--registry", tmp_path, "smoke", "my-lab", "--random-weights", "--samples", "6", "--dataset", "xkcd-colors"
    )
    assert ok.exit_code == 0 and "gave 1 layers" in ok.output, ok.output
    assert model_kind("random (seed 3)") == "random" and model_kind("pretrained") == "trained"
    # Each side refuses the other: a model with weights cannot claim none, a fixed space cannot claim weights.
    write_yaml(tmp_path / "lab.yaml", base + "id: my-lab\nbackend: colorspace\nsource: cielab\n")
    write_yaml(tmp_path / "net.yaml", base + "id: my-net\nbackend: timm\nsource: resnet18\nweights: none\n")
    bad = cli("validate", tmp_path)
    assert bad.exit_code == 2
    assert (
        "lab.yaml: field 'weights': backend 'colorspace' builds parameter-free models: set `weights: none`"
        in bad.output
    )
    assert "net.yaml: field 'weights': 'none' declares a parameter-free model, but backend 'timm'" in bad.output
    typo = write_yaml(tmp_path / "typo.yaml", base + "id: t\nbackend: timm\nsource: resnet18\nweights: nothing\n")
    with pytest.raises(ManifestError, match="expected 'pretrained', 'none' \\(a parameter-free model\\)"):
        load_manifest(typo)


def test_plugin_options_are_declared_and_checked(tmp_path: Path) -> None:
    """8 of 9 loaders took a misspelled option silently (its default used), open_clip ignored `preprocess`
    entirely: every built-in loader declares its options and every backend its preprocess keys, and validate
    (and the loader, when called) refuses any other, naming the closest."""
    from prh_bench.manager import load_plugins

    plugins = load_plugins()
    assert all(getattr(loader, "option_names", None) is not None for loader in plugins.loaders.values())
    write_yaml(
        tmp_path / "d.yaml",
        "kind: dataset\nid: my-photos\nversion: 1\nloader: photo_crops\nmodality: vision\noptions: {sise: 128}\n",
    )
    model = "kind: model\nid: m-{b}\nversion: 1\nbackend: {b}\nsource: {s}\nmodality: {mod}\npreprocess: {{{key}: 1}}\n"
    for backend, source, modality in (
        ("timm", "resnet18", "vision"),
        ("torchvision", "resnet18", "vision"),
        ("open_clip", "ViT-B-32", "vision"),
        ("transformers-encoder", "x", "text"),
        ("transformers-causal-lm", "x", "text"),
        ("glove", "x", "text"),
    ):
        write_yaml(tmp_path / f"{backend}.yaml", model.format(b=backend, s=source, mod=modality, key="max_lenght"))
    result = cli("--registry", tmp_path, "validate")
    assert result.exit_code == 2
    assert "d.yaml: field 'options.sise': not an option of loader 'photo_crops'; did you mean 'size'?" in result.stderr
    for backend in ("timm", "torchvision", "open_clip", "transformers-encoder", "transformers-causal-lm", "glove"):
        assert f"{backend}.yaml: field 'preprocess.max_lenght': not an option of backend '{backend}'" in result.stderr
    assert "did you mean 'max_length'?" in result.stderr  # the text encoders know it
    from prh_bench.errors import BadInput
    from prh_bench.manifest import DatasetManifest

    photos = DatasetManifest(
        kind="dataset", id="p", version=1, loader="photo_crops", modality="vision", options={"sise": 1}
    )
    with pytest.raises(BadInput, match=r"dataset 'p': field 'options.sise': not an option of loader 'photo_crops'"):
        plugins.loaders["photo_crops"](photos)
