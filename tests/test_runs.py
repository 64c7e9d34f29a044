"""Whole runs through the CLI: the offline default suite, failures that keep the others' results, smoke checks."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from .conftest import caption_pairs, cli, cli_json, write_yaml

pytestmark = pytest.mark.slow  # runs models end to end, or kills, races or spawns processes

PRETRAINED = ["efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2", "mobilenet-v2"]


def test_pocket_default_run_pretrained_models_align_more_with_each_other(tmp_path: Path) -> None:
    first = cli("run", "--out", tmp_path / "r1")  # no --suite: the default
    assert first.exit_code == 0, first.output
    assert "run folder: " in first.output and "ranking_mutual_knn" in first.output
    mat = pd.read_csv(tmp_path / "r1" / "alignment_mutual_knn.csv", index_col=0)
    controls = [m for m in mat.index if m not in PRETRAINED]
    assert len(controls) >= 3
    for m in PRETRAINED:
        to_pretrained = mat.loc[m, [p for p in PRETRAINED if p != m]].min()
        to_controls = mat.loc[m, controls].max()
        assert to_pretrained > to_controls, (m, to_pretrained, to_controls)
    for f in ("scores.csv", "heatmap_mutual_knn.png", "ranking_mutual_knn.md", "run.json"):
        assert (tmp_path / "r1" / f).stat().st_size > 0
    long = pd.read_csv(tmp_path / "r1" / "scores.csv")
    assert list(long.columns) == ["condition", "model_x", "model_y", "layer_x", "layer_y", "metric", "params", "score"]
    assert long.groupby(["model_x", "model_y"]).ngroups == 28

    second = cli_json("run", "--out", tmp_path / "r2")
    assert {v["status"] for v in second["models"].values()} == {"cached"}
    assert (tmp_path / "r1" / "scores.csv").read_text() == (tmp_path / "r2" / "scores.csv").read_text()


def test_pocket_text_run(tmp_path: Path) -> None:
    out = cli_json("run", "--suite", "pocket-text", "--out", tmp_path)
    best = {frozenset((b["model_x"], b["model_y"])): b["score"] for b in out["best"]}
    real = best[frozenset(("minilm-l6", "glove-6b-50d"))]
    chance = 10 / 299
    assert real > 5 * chance
    assert best[frozenset(("minilm-l6", "minilm-l6-random"))] < 2 * chance


def test_missing_weights_fail_one_model_and_keep_the_rest(tmp_path: Path) -> None:
    write_yaml(
        tmp_path / "reg" / "suite.yaml",
        """\
kind: suite
id: with-hub-model
version: 1
dataset: pocket-photos
models: [resnet18.a1_in1k, efficientnet-lite0-random, vit-tiny-random]
metrics: [{name: mutual_knn, k: 3}]
max_samples: 12
""",
    )
    result = cli(
        "--offline", "--registry", tmp_path / "reg", "run", "--suite", "with-hub-model", "--out", tmp_path / "run"
    )
    assert result.exit_code == 1
    assert (
        "model 'resnet18.a1_in1k': timm/resnet18.a1_in1k is not in the Hugging Face cache (HF_HOME) and the hub is "
        "off; run once with the network" in result.output
    )
    assert "1 failed: resnet18.a1_in1k" in result.stderr
    mat = pd.read_csv(tmp_path / "run" / "alignment_mutual_knn.csv", index_col=0)
    assert list(mat.index) == ["efficientnet-lite0-random", "vit-tiny-random"]
    assert "**failed**: resnet18.a1_in1k" in (tmp_path / "run" / "ranking_mutual_knn.md").read_text()
    side = json.loads((tmp_path / "run" / "run.json").read_text())
    assert side["models"]["resnet18.a1_in1k"]["runs"][0]["status"] == "failed"


def test_modality_mismatch_is_bad_input(tmp_path: Path) -> None:
    write_yaml(
        tmp_path / "suite.yaml",
        """\
kind: suite
id: text-on-images
version: 1
dataset: pocket-photos
models: [minilm-l6, efficientnet-lite0]
metrics: [{name: mutual_knn}]
""",
    )
    result = cli("--registry", tmp_path, "run", "--suite", "text-on-images")
    assert result.exit_code == 2
    assert "model 'minilm-l6' reads text but dataset 'pocket-photos' has no texts" in result.stderr


def test_smoke_checks_a_manifest_file_with_random_weights(tmp_path: Path) -> None:
    template = Path(__file__).parents[1] / "registry" / "templates" / "model.yaml"
    mine = write_yaml(tmp_path / "mine.yaml", template.read_text().replace("resnet50.a1_in1k", "resnet18.a1_in1k"))
    result = cli("--offline", "smoke", mine, "--random-weights", "--samples", "6")
    assert result.exit_code == 0, result.output
    assert "layer4" in result.output and "pre_logits" in result.output
    assert "ok: 'my-model' gave 6 layers of finite features for 6 samples of 'pocket-photos'" in result.output
    result = cli("--offline", "smoke", mine)  # its real weights are not here: a clear failure
    assert result.exit_code == 1 and "pretrained weights for timm 'resnet18.a1_in1k'" in result.stderr


def _object_npy(root: Path) -> list[str]:
    import numpy as np

    (root / "glove").mkdir()
    np.save(root / "glove" / "t_emb.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    pd.DataFrame({"word": ["a", "b"]}).to_parquet(root / "glove" / "t_index.parquet")
    write_yaml(
        root / "m.yaml",
        f"kind: model\nid: g\nversion: 1\nbackend: glove\nsource: {root / 'glove'}\n"
        "modality: text\nweights: pretrained\n",
    )
    return [str(root / "m.yaml")]


def _pickled_model_bin(root: Path) -> list[str]:
    import os

    import torch
    from transformers import BertConfig

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {root / 'pwned'}",))

    BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=100
    ).save_pretrained(root / "enc")
    torch.save({"evil": Evil()}, root / "enc" / "pytorch_model.bin")
    write_yaml(
        root / "m.yaml",
        f"kind: model\nid: e\nversion: 1\nbackend: transformers-encoder\n"
        f"source: {root / 'enc'}\nmodality: text\nweights: pretrained\n",
    )
    return [str(root / "m.yaml")]


def _dataset_script(root: Path) -> list[str]:
    write_yaml(root / "data" / "data.py", "import os\nos.system('touch pwned')\n")
    write_yaml(
        root / "reg" / "d.yaml",
        f"kind: dataset\nid: scripted\nversion: 1\nloader: hf_dataset\n"
        f"modality: text\noptions: {{path: {root / 'data'}, text_column: text}}\n",
    )
    return ["--registry", str(root / "reg"), "smoke", "minilm-l6", "--dataset", "scripted"]


def _not_a_photo(root: Path) -> list[str]:
    write_yaml(
        root / "reg" / "d.yaml",
        "kind: dataset\nid: dirs\nversion: 1\nloader: photo_crops\n"
        "modality: vision\noptions: {photos: ['skimage:data_dir']}\n",
    )
    return ["--registry", str(root / "reg"), "smoke", "efficientnet-lite0", "--dataset", "dirs"]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_object_npy, "not a GloVe table (ValueError: Array can't be memory-mapped: Python objects in dtype.)"),
        (_pickled_model_bin, "holds Python objects besides tensors, refused"),
        (
            _dataset_script,
            "field 'options.path': '{root}/data' cannot be loaded (Dataset scripts are no longer supported",
        ),
        (_not_a_photo, "photo 'skimage:data_dir' is not available offline"),
    ],
)
def test_smoke_reports_bad_files_without_a_traceback(tmp_path: Path, make, message: str) -> None:
    """Each showed a traceback (object .npy, pickled pytorch_model.bin, a dataset script, 'skimage:data_dir')."""
    args = make(tmp_path)
    result = cli(*(args if args[0] == "--registry" else ["smoke", *args]))
    assert result.exit_code == 2 and message.format(root=tmp_path) in result.stderr, result.output
    assert not (tmp_path / "pwned").exists() and "Traceback" not in result.output


def test_offline_fails_missing_weights_before_building_or_fetching(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under --offline the MoCo checkpoints ({url: ...}) made DNS lookups, and each hub model was built before
    its weights were looked for (ViT-G: 57 s and 5.5 GB to fail). Now: no connection is attempted, no missing
    model is built, a private ResNet-18 says that PRH_BENCH_WEIGHTS is unset and that its weights were never
    published, and each failure is printed once."""
    import socket

    import timm
    import torchvision

    tried, built = [], []
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: tried.append(a) or (_ for _ in ()).throw(OSError("no")))
    monkeypatch.setattr(
        socket.socket, "connect", lambda self, addr: tried.append(addr) or (_ for _ in ()).throw(OSError)
    )
    create, get_model = timm.create_model, torchvision.models.get_model
    monkeypatch.setattr(timm, "create_model", lambda name, **kw: built.append(name) or create(name, **kw))
    monkeypatch.setattr(torchvision.models, "get_model", lambda name, **kw: built.append(name) or get_model(name, **kw))
    monkeypatch.delenv("PRH_BENCH_WEIGHTS", raising=False)
    missing = ["vit_giant_patch14_dinov2.lvd142m", "resnet50-mocov2-shaders21k", "resnet18-alignunif-places365"]
    write_yaml(
        tmp_path / "reg" / "suite.yaml",
        "kind: suite\nid: offline-mix\nversion: 1\ndataset: pocket-photos\n"
        f"models: [resnet18-random, vit-tiny-random, {', '.join(missing)}]\n"
        "metrics: [{name: mutual_knn, k: 3}]\nmax_samples: 8\n",
    )
    result = cli(
        "--offline", "--registry", tmp_path / "reg", "run", "--suite", "offline-mix", "--out", tmp_path / "run"
    )
    assert result.exit_code == 1 and "3 failed" in result.stderr, result.output
    assert tried == [] and set(built) <= {"resnet18", "vit_tiny_patch16_224"}, (tried, built)
    out = result.stdout + result.stderr
    assert "is not in the cache and --offline forbids downloading it" in out
    assert (
        "its weights path '${PRH_BENCH_WEIGHTS}/resnet18-alignunif/places365.pth' needs the environment variable "
        "PRH_BENCH_WEIGHTS, which is not set"
        in out
        and "checkpoints were not released" in out
    )
    for mid in missing:  # the reason once (the summary line lists the id once more)
        assert out.count(f"model '{mid}'") == 1, out


def test_a_log_gets_one_line_per_finished_model_and_stage(tmp_path: Path) -> None:
    """Off a terminal (SLURM, CI) a cold run printed nothing until it ended: now a timed line per model and stage."""
    from click.testing import CliRunner

    from prh_bench.cli import main

    result = CliRunner().invoke(main, ["run", "--suite", "pocket", "--max-samples", "12", "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    assert (
        sum("on pocket-photos: extracted" in line for line in lines) == 8 and "[8/8] vit-tiny-random" in result.stderr
    )
    assert any("pocket-photos: features of 8 models (0 failed)" in line for line in lines)
    assert any("pocket-photos: mutual_knn of 28 pairs (28 computed)" in line for line in lines)
    assert all(line[:2].isdigit() and line[2] == ":" for line in lines if "on pocket-photos" in line)  # timed


def test_threads_option_sets_and_records_torch_threads(tmp_path: Path) -> None:
    import torch

    before = torch.get_num_threads()
    try:
        result = cli("run", "--suite", "pocket", "--max-samples", "12", "--threads", "1", "--out", tmp_path / "r")
        assert result.exit_code == 0, result.output
        assert json.loads((tmp_path / "r" / "run.json").read_text())["harness"]["torch_threads"] == 1
    finally:
        torch.set_num_threads(before)
    assert cli("run", "--suite", "pocket", "--threads", "0").exit_code == 2


def test_ls_and_show_json() -> None:
    suites = {r["id"] for r in cli_json("ls", "suites")}
    assert {"pocket", "pocket-text"} <= suites
    pocket_models = cli_json("ls", "models", "--suite", "pocket")
    assert len(pocket_models) == 8
    shown = cli_json("show", "pocket")
    assert shown["metrics"] == [{"name": "mutual_knn", "k": 10}]
    assert shown["file"].endswith("registry/suites/pocket.yaml")
    lite = cli_json("show", "efficientnet-lite0")
    assert lite["provided_by"] == "prh_bench.plugins.backends.timm_backend" and lite["libraries"] == ["torch", "timm"]


def test_suite_with_concat_layers_calibration_and_an_asymmetric_metric(tmp_path: Path) -> None:
    write_yaml(
        tmp_path / "reg" / "suite.yaml",
        """\
kind: suite
id: many-metrics
version: 1
dataset: glove-words
models: [minilm-l6, glove-6b-50d]
metrics: [{name: cycle_knn, k: 5}, {name: cknna, k: 5}, {name: linear_regression, folds: 3}]
prepare: {concat_layers: true}
calibrate: {permutations: 20}
max_samples: 60
""",
    )
    out = cli_json("--registry", tmp_path / "reg", "run", "--suite", "many-metrics", "--out", tmp_path / "run")
    long = pd.read_csv(tmp_path / "run" / "scores.csv")
    cyc = long[long.metric == "cycle_knn"]
    assert set(zip(cyc.model_x, cyc.model_y, strict=True)) == {
        ("minilm-l6", "glove-6b-50d"),
        ("glove-6b-50d", "minilm-l6"),
    }
    assert "all_layers" in set(long.layer_x) and len(long[long.metric == "cknna"]) == 8 * 2 * 2  # both ways
    cal = pd.read_csv(out["files"]["calibration"])
    assert len(cal) == 2 + 2 + 2 and cal.permutations.eq(20).all()
    assert cal.p_value.between(1 / 21, 1).all()
    side = json.loads((tmp_path / "run" / "run.json").read_text())
    assert side["metrics"] == {
        "cycle_knn": {"version": 1},
        "cknna": {"version": 2},
        "linear_regression": {"version": 2},
    }


def score_json(*args: str) -> dict:
    result = cli("score", *args)  # score always prints JSON
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_score_verb_on_cached_files_and_on_suite_models(tmp_path: Path, isolated_cache: Path) -> None:
    out = score_json("cka", "--suite", "pocket-text", "--models", "minilm-l6", "glove-6b-50d", "--permutations", "10")
    assert out["layers_x"][0] == "hidden_states.0" and out["layers_y"] == ["embedding"]
    assert len(out["matrix"]) == 7 and 0 < out["best"] <= 1 and out["calibration"]["permutations"] == 10
    files = sorted(isolated_cache.glob("features/*/*.safetensors"))
    assert len(files) == 2
    again = score_json("cka", "--files", *files)
    assert {again["best"], out["best"]} == {out["best"]}
    # Features of different samples cannot be compared.
    cli("run", "--suite", "pocket-text", "--max-samples", "40", "--out", tmp_path / "small")
    small = next(p for p in isolated_cache.glob("features/glove-6b-50d/*.safetensors") if p not in files)
    bad = cli("score", "cka", "--files", files[0], small)
    assert bad.exit_code == 2 and "different samples" in bad.stderr
    assert cli("score", "nope", "--files", *files).exit_code == 2


def test_cross_modal_suite_on_image_caption_pairs(tmp_path: Path) -> None:
    """Each model reads its own modality of the same samples: photos for the CNN, captions for the text model."""
    _pairs, lines = caption_pairs(tmp_path, 8)
    write_yaml(
        tmp_path / "reg" / "pairs.yaml",
        f"""\
kind: dataset
id: tiny-pairs
version: 1
loader: image_captions
modality: vision-text
options: {{path: {tmp_path / "pairs.jsonl"}}}
""",
    )
    write_yaml(
        tmp_path / "reg" / "suite.yaml",
        """\
kind: suite
id: cross-modal
version: 1
dataset: tiny-pairs
models: [efficientnet-lite0, minilm-l6]
metrics: [{name: mutual_knn, k: 2}]
""",
    )
    out = cli_json("--registry", tmp_path / "reg", "run", "--suite", "cross-modal", "--out", tmp_path / "run")
    (pair,) = out["best"]
    assert {pair["model_x"], pair["model_y"]} == {"efficientnet-lite0", "minilm-l6"}
    assert 0 <= pair["score"] <= 1
    (tmp_path / "pairs.jsonl").write_text(lines[0] + '\n{"id": "x", "image": "missing.png", "text": "t"}\n')
    bad = cli("--registry", tmp_path / "reg", "run", "--suite", "cross-modal")
    assert bad.exit_code == 2 and "pairs.jsonl:2: expected" in bad.stderr
