"""Runs that survive faults: killed runs resume with nothing lost or recomputed, corrupt cache entries are
detected and recomputed, concurrent runs share one cache, a failing model leaves the others' results."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from prh_bench.cache_files import CorruptEntry, read_entry, write_entry
from prh_bench.features import FeatureCache, Features

from .conftest import cli, write_yaml

pytestmark = pytest.mark.slow  # runs models end to end, or kills, races or spawns processes

MODEL = """\
kind: model
id: {id}
version: 1
backend: timm
source: {source}
modality: vision
weights: {weights}
preprocess: {{input_size: [3, 64, 64]}}
tags: [faulty]
"""
SUITE = """\
kind: suite
id: faulty
version: 1
dataset: pocket-photos
models: {tags: [faulty]}
metrics: [{name: mutual_knn, k: 5}, {name: cka}, {name: cknna, k: 5}]
max_samples: 48
"""
SOURCES = {"f-resnet18": "resnet18", "f-lite0": "tf_efficientnet_lite0", "f-resnet10": "resnet10t"}


def registry(root: Path, models: dict[str, str] = SOURCES) -> Path:
    for i, (mid, source) in enumerate(models.items()):
        write_yaml(root / f"{mid}.yaml", MODEL.format(id=mid, source=source, weights=f"{{random: {i}}}"))
    write_yaml(root / "suite.yaml", SUITE)
    return root


def command(reg: Path, out: Path, *extra: str) -> list[str]:
    # A budget of 247 KB holds two models' CKA kernels (110 KB each) but puts each in its own CKA group: 6 tiles for
    # CKA, one for the smaller kNN and CKNNA summaries; 3 pair entries per metric, 9 in all.
    return [
        sys.executable,
        "-c",
        "from prh_bench.cli import main; main()",
        "--quiet",
        "--registry",
        str(reg),
        "run",
        "--suite",
        "faulty",
        "--out",
        str(out),
        "--memory-budget",
        "2.3e-4",
        "--json",
        *extra,
    ]


def run_to_end(reg: Path, out: Path, cache: Path, *extra: str) -> dict:
    env = os.environ | {"PRH_BENCH_CACHE": str(cache)}
    done = subprocess.run(command(reg, out, *extra), env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def run_and_kill(reg: Path, out: Path, cache: Path, when: str) -> None:
    """Start a run and SIGKILL it as soon as the cache holds its first file of kind `when`."""
    env = os.environ | {"PRH_BENCH_CACHE": str(cache)}
    proc = subprocess.Popen(command(reg, out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not [p for p in cache.glob(f"{when}/*/*.safetensors") if not p.name.startswith(".tmp-")]:
        assert proc.poll() is None, "the run ended before the kill point"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def entries(cache: Path) -> dict[str, tuple[int, int]]:
    """Every finished cache file with its inode and mtime: a recomputed entry is a new file (atomic rename)."""
    return {
        str(p.relative_to(cache)): (p.stat().st_ino, p.stat().st_mtime_ns)
        for p in cache.glob("*/*/*.safetensors")
        if not p.name.startswith(".tmp-")
    }  # a file being written when the kill came is not finished


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("uninterrupted")
    reg = registry(root / "reg")
    run_to_end(reg, root / "run", root / "cache")
    return reg, (root / "run" / "scores.csv").read_text()


@pytest.mark.parametrize("when", ["features", "pairs"])
def test_killed_run_resumes_without_recomputing_and_gives_identical_scores(
    tmp_path: Path, uninterrupted: tuple[Path, str], when: str
) -> None:
    reg, expected = uninterrupted
    cache = tmp_path / "cache"
    run_and_kill(reg, tmp_path / "killed", cache, when)
    survived = entries(cache)
    assert survived and not (tmp_path / "killed" / "run.json").exists()
    resumed = run_to_end(reg, tmp_path / "resumed", cache)
    after = entries(cache)
    assert {k: after[k] for k in survived} == survived  # nothing finished before the kill was rewritten
    kept = {Path(k).parts[1] for k in survived if k.startswith("features")}
    assert {o["model"] for o in resumed["runs"] if o["status"] == "cached"} >= kept
    assert len([k for k in after if k.startswith("pairs")]) == 9
    assert (tmp_path / "resumed" / "scores.csv").read_text() == expected  # bitwise, as if never interrupted
    assert not list(cache.rglob(".tmp*"))


def test_kill_during_a_cache_write_leaves_no_corrupt_entry(tmp_path: Path) -> None:
    """A writer SIGKILLed while its file is half written: the final name never exists, and the next write in
    that folder removes the orphan."""
    target = tmp_path / "features" / "m" / "entry.safetensors"
    script = (
        "import sys, torch; from pathlib import Path; from prh_bench.cache_files import write_entry;"
        "write_entry(Path(sys.argv[1]), {'x': torch.randn(150_000_000)}, {})"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(target)])
    deadline = time.monotonic() + 120
    # safetensors 0.8 writes into a temporary file of its own (.tmpXXXXXX) and renames it onto ours (.tmp-...)
    while not [p for p in target.parent.glob(".tmp*") if p.exists() and p.stat().st_size > 0]:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not target.exists() and list(target.parent.glob(".tmp*"))
    write_entry(target, {"x": torch.arange(4.0)}, {})
    assert torch.equal(read_entry(target)[0]["x"], torch.arange(4.0))
    assert not list(target.parent.glob(".tmp*"))


def features(n: int = 12) -> Features:
    g = torch.Generator().manual_seed(0)
    return Features(["a", "b"], [torch.randn(n, 8, generator=g), torch.randn(n, 5, generator=g)])


@pytest.mark.parametrize("damage", ["flip", "truncate", "foreign"])
def test_corrupt_or_truncated_entry_is_detected(tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture) -> None:
    cache = FeatureCache(tmp_path)
    path = cache.save("m", "k" * 64, features(), {})
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[-7] ^= 0x10  # a bit inside the last tensor's data
    elif damage == "truncate":
        data = data[: len(data) // 2]
    else:  # a safetensors file without a checksum (e.g. an older prh-bench or another tool)
        from safetensors.torch import save_file

        save_file({"layer000": torch.zeros(2, 2)}, str(path), metadata={"key": "k" * 64, "layers": '["a"]'})
        data = bytearray(path.read_bytes())
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptEntry):
        read_entry(path)
    assert cache.load("m", "k" * 64) is None
    assert "corrupt" in caplog.text and str(path) in caplog.text


def test_corrupt_entry_in_a_run_is_recomputed_with_identical_scores(tmp_path: Path, caplog) -> None:
    reg = registry(tmp_path / "reg")
    first = run_to_end(reg, tmp_path / "r1", tmp_path / "cache")
    victim = next((tmp_path / "cache" / "features" / "f-lite0").glob("*.safetensors"))
    data = bytearray(victim.read_bytes())
    data[-100] ^= 0xFF
    victim.write_bytes(bytes(data))
    pairs = sorted((tmp_path / "cache" / "pairs").rglob("*.safetensors"))
    pairs[0].write_bytes(pairs[0].read_bytes()[:-10])  # a truncated pair entry too
    second = run_to_end(reg, tmp_path / "r2", tmp_path / "cache")
    assert {o["model"]: o["status"] for o in second["runs"]} == {
        "f-resnet18": "cached",
        "f-lite0": "extracted",
        "f-resnet10": "cached",
    }
    assert (tmp_path / "r1" / "scores.csv").read_text() == (tmp_path / "r2" / "scores.csv").read_text()
    assert first["best"] == second["best"]


def test_two_runs_sharing_a_cache_extract_each_model_once(tmp_path: Path) -> None:
    reg = registry(tmp_path / "reg")
    env = os.environ | {"PRH_BENCH_CACHE": str(tmp_path / "cache")}
    procs = [
        subprocess.Popen(
            command(reg, tmp_path / f"r{i}"), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e for _, e in outs]
    runs = [json.loads(o) for o, _ in outs]
    for mid in SOURCES:
        assert sorted(o["status"] for r in runs for o in r["runs"] if o["model"] == mid) == ["cached", "extracted"]
    assert (tmp_path / "r0" / "scores.csv").read_text() == (tmp_path / "r1" / "scores.csv").read_text()
    assert len(list((tmp_path / "cache" / "pairs").rglob("*.safetensors"))) == 9


def test_two_runs_from_empty_caches_are_bitwise_identical(tmp_path: Path, uninterrupted: tuple[Path, str]) -> None:
    reg, expected = uninterrupted
    run_to_end(reg, tmp_path / "run", tmp_path / "cache")
    assert (tmp_path / "run" / "scores.csv").read_text() == expected


def test_nan_features_fail_one_model_and_the_leaderboard_marks_it(tmp_path: Path) -> None:
    import timm

    model = timm.create_model("resnet10t", pretrained=False)
    state = {k: (v.fill_(float("nan")) if k == "conv1.0.weight" else v) for k, v in model.state_dict().items()}
    ckpt = tmp_path / "nan.pth"
    torch.save(state, ckpt)
    digest = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    reg = registry(tmp_path / "reg", {"f-resnet18": "resnet18", "f-lite0": "tf_efficientnet_lite0"})
    write_yaml(
        reg / "nan.yaml", MODEL.format(id="f-nan", source="resnet10t", weights=f"{{path: {ckpt}, sha256: {digest}}}")
    )
    result = cli("--registry", reg, "run", "--suite", "faulty", "--out", tmp_path / "run")
    assert result.exit_code == 1 and "1 failed: f-nan" in result.stderr
    assert "NaN or infinite" in result.stdout
    scores = pd.read_csv(tmp_path / "run" / "scores.csv")
    assert set(scores.model_x) | set(scores.model_y) == {"f-resnet18", "f-lite0"}
    assert "**failed**: f-nan" in (tmp_path / "run" / "ranking_mutual_knn.md").read_text()
    board = cli(
        "--registry", reg, "leaderboard", "--suite", "faulty", "--run", tmp_path / "run", "--out", tmp_path / "lb"
    )
    assert board.exit_code == 0, board.output
    table = pd.read_csv(tmp_path / "lb" / "leaderboard.csv").set_index("model")
    assert table.loc["f-nan", "status"] == "failed" and (table.drop("f-nan").status == "ok").all()


def test_manifests_cannot_run_code(tmp_path: Path) -> None:
    """yaml.safe_load only: a Python tag in a manifest is an error, and the code never runs."""
    marker = tmp_path / "pwned"
    bad = write_yaml(tmp_path / "evil.yaml", f'kind: model\nid: !!python/object/apply:os.system ["touch {marker}"]\n')
    result = cli("validate", bad)
    assert result.exit_code == 2 and "not valid YAML" in result.stderr and "python/object/apply" in result.stderr
    assert not marker.exists()


def test_checkpoints_are_loaded_without_pickle_code(tmp_path: Path) -> None:
    """torch.load(weights_only=True): a checkpoint that carries an object to unpickle is refused."""
    import timm

    from prh_bench.errors import BadInput
    from prh_bench.weights import read_state_dict

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    state = timm.create_model("resnet10t", pretrained=False).state_dict() | {"evil": Evil()}
    torch.save(state, tmp_path / "evil.pth")
    with pytest.raises(BadInput, match="holds Python objects besides tensors, refused"):
        read_state_dict(tmp_path / "evil.pth")
    assert not marker.exists()


def test_a_refused_open_clip_checkpoint_fails_that_model_not_the_run(tmp_path: Path) -> None:
    """open_clip loads a local checkpoint itself (weights_only=True): its UnpicklingError escaped and aborted
    the whole run. Now that model fails with the checkpoint named, and the others' results are kept."""
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"evil": Evil()}, tmp_path / "clip.pt")
    reg = registry(tmp_path / "reg", {"f-resnet18": "resnet18", "f-lite0": "tf_efficientnet_lite0"})
    write_yaml(
        reg / "clip.yaml",
        "kind: model\nid: f-clip\nversion: 1\nbackend: open_clip\nsource: ViT-B-32\n"
        f"modality: vision\nweights: {{path: {tmp_path / 'clip.pt'}}}\ntags: [faulty]\n",
    )
    result = cli("--registry", reg, "run", "--suite", "faulty", "--out", tmp_path / "run", "--max-samples", "12")
    assert result.exit_code == 1 and "1 failed: f-clip" in result.stderr, result.output
    assert "clip.pt holds Python objects besides tensors, refused" in result.stdout + result.stderr
    scores = pd.read_csv(tmp_path / "run" / "scores.csv")
    assert set(scores.model_x) | set(scores.model_y) == {"f-resnet18", "f-lite0"} and not marker.exists()
