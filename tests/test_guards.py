"""Caches and gates that cannot lie: every stored entry bound to its key and metadata, keys that cover the code
and checkpoint bytes behind a value, paths that stay inside their roots, bounded waits, and bad input that is
refused before any work."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from prh_bench.cache_files import WRITERS_LOCK, CorruptEntry, read_entry, sweep_temporaries, write_entry
from prh_bench.errors import BadInput, PrhBenchError
from prh_bench.features import FeatureCache, Features, feature_key

from .conftest import cli, write_yaml
from .test_cache import tiny_registry
from .test_faults import registry, run_to_end


def features() -> Features:
    g = torch.Generator().manual_seed(0)
    return Features(["a", "b"], [torch.randn(6, 4, generator=g), torch.randn(6, 3, generator=g)])


def rewrite_metadata(path: Path, change) -> None:
    """Edit a safetensors header in place (as a hand or another tool would), keeping the data."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    change(header["__metadata__"])
    new = json.dumps(header).encode()
    path.write_bytes(len(new).to_bytes(8, "little") + new + raw[8 + n :])


@pytest.mark.parametrize("edit", ["swap layer names", "invalid json", "drop the checksum"])
def test_edited_metadata_is_never_read(tmp_path: Path, edit: str, caplog: pytest.LogCaptureFixture) -> None:
    cache = FeatureCache(tmp_path)
    path = cache.save("m", "k" * 64, features(), {})
    change = {
        "swap layer names": lambda m: m.update(layers='["b", "a"]'),
        "invalid json": lambda m: m.update(layers="[not json"),
        "drop the checksum": lambda m: m.pop("sha256"),
    }[edit]
    rewrite_metadata(path, change)
    with pytest.raises(CorruptEntry):
        read_entry(path)
    with pytest.raises(CorruptEntry):
        cache.info("m", "k" * 64)
    assert cache.load("m", "k" * 64) is None and "corrupt" in caplog.text


def test_a_pair_entry_copied_under_another_key_is_recomputed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """k=5 must never be served from the k=3 entry: an entry names its key inside its checksum."""
    reg = registry(tmp_path / "reg")
    run_to_end(reg, tmp_path / "r1", tmp_path / "cache")
    entries = sorted((tmp_path / "cache" / "pairs" / "mutual_knn").glob("*.safetensors"))
    first, second = entries[0], entries[1]
    second.write_bytes(first.read_bytes())  # another key's content under this key
    with pytest.raises(CorruptEntry, match="stored under another key"):
        read_entry(second)
    again = run_to_end(reg, tmp_path / "r2", tmp_path / "cache")
    assert (tmp_path / "r1" / "scores.csv").read_text() == (tmp_path / "r2" / "scores.csv").read_text()
    assert again["best"]


def test_feature_keys_cover_the_extraction_code_and_unpinned_checkpoint_bytes(tmp_path: Path) -> None:
    from prh_bench.code_digest import module_files
    from prh_bench.manager import load_plugins
    from prh_bench.manifest import PathWeights
    from prh_bench.registry import Registry
    from prh_bench.samples import Sample, SampleSet
    from prh_bench.weights import unpinned_checkpoint_sha256

    reg = Registry.load(load_plugins())
    timm_backend = sys.modules[type(reg.plugins.backends["timm"]).__module__]
    assert {"timm_backend.py", "forward_hooks.py", "pooling.py"} <= {p.name for p in module_files(timm_backend)}
    m, ds = reg.get("resnet18-random"), reg.get("pocket-photos")
    s = SampleSet(tuple(Sample(id=f"t{i}", text=str(i)) for i in range(4)))
    base = feature_key(m, ("torch",), ds, s, code="a")[0]
    assert feature_key(m, ("torch",), ds, s, code="b")[0] != base
    assert feature_key(m, ("torch",), ds, s, code="a", weights="0" * 64)[0] != base
    ckpt = tmp_path / "w.pth"
    ckpt.write_bytes(b"one")
    unpinned = m.model_copy(update={"weights": PathWeights(path=str(ckpt))})
    first = unpinned_checkpoint_sha256(unpinned.weights, m.id)
    time.sleep(0.01)
    ckpt.write_bytes(b"two, replaced in place")
    assert unpinned_checkpoint_sha256(unpinned.weights, m.id) != first
    pinned = m.model_copy(update={"weights": PathWeights(path=str(ckpt), sha256="0" * 64)})
    assert unpinned_checkpoint_sha256(pinned.weights, m.id) is None  # a pinned file is checked on load instead


def test_score_keys_cover_the_preparation_and_calibration_code(monkeypatch: pytest.MonkeyPatch) -> None:
    import prh_bench.score_job as score_job
    from prh_bench.align import get_metric

    seen: list[Path] = []
    monkeypatch.setattr(score_job, "files_digest", lambda files: seen.extend(files) or "digest")
    score_job.metric_code_digest.cache_clear()
    try:
        score_job.metric_code_digest(type(get_metric("cknna")))
    finally:
        score_job.metric_code_digest.cache_clear()
    assert {"prepare.py", "calibrate.py", "kernels.py", "knn.py", "metric.py", "folds.py", "procrustes.py"} <= {
        p.name for p in seen
    }


def test_changing_the_clamp_mode_rescores_from_a_warm_cache(tmp_path: Path) -> None:
    reg = tiny_registry(tmp_path / "reg")
    suite = (reg / "suite.yaml").read_text()
    out1 = cli("--registry", reg, "run", "--suite", "tiny-suite", "--out", tmp_path / "r1", "--json")
    assert out1.exit_code == 0, out1.output
    cache = Path(__import__("os").environ["PRH_BENCH_CACHE"])
    before = set((cache / "pairs").rglob("*.safetensors"))
    write_yaml(reg / "suite.yaml", suite + "prepare: {clamp: paper}\n")
    out2 = cli("--registry", reg, "run", "--suite", "tiny-suite", "--out", tmp_path / "r2", "--json")
    assert out2.exit_code == 0, out2.output
    assert {o["status"] for o in json.loads(out2.stdout)["models"].values()} == {"cached"}
    after = set((cache / "pairs").rglob("*.safetensors"))
    assert before and len(after - before) == len(before)  # every pair scored anew under the new clamp


def test_temporary_files_of_live_writers_survive_the_sweep_whatever_their_name(tmp_path: Path) -> None:
    """A writer in another PID namespace may carry any PID, and safetensors replaces the writer's temporary
    file by a new inode: the sweep asks the kernel whether a writer holds the folder's writers lock."""
    held = tmp_path / ".tmp-held.safetensors"
    theirs = tmp_path / ".tmpX1y2Z3"  # safetensors' own temporary name
    held.write_bytes(b"x")
    theirs.write_bytes(b"x")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time; fd = os.open(sys.argv[1], "
            "os.O_RDWR | os.O_CREAT); fcntl.flock(fd, fcntl.LOCK_SH); print('held', flush=True); "
            "time.sleep(60)",
            str(tmp_path / WRITERS_LOCK),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert not sweep_temporaries(tmp_path)
        assert held.exists() and theirs.exists()
    finally:
        holder.kill()
        holder.wait()
    assert sweep_temporaries(tmp_path)  # the writer died: its files are orphans
    assert not held.exists() and not theirs.exists()


def test_a_lock_held_by_a_stopped_run_ends_in_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from prh_bench.cache_files import entry_lock

    target = tmp_path / "features" / "m" / "entry.safetensors"
    target.parent.mkdir(parents=True)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from filelock import FileLock; "
            "l = FileLock(sys.argv[1]); l.acquire(); print('held', flush=True); time.sleep(60)",
            str(target) + ".lock",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setenv("PRH_BENCH_LOCK_TIMEOUT", "6")
        start = time.monotonic()
        with (
            pytest.raises(PrhBenchError, match=r"gave up after 6 s waiting for .*entry.safetensors.lock"),
            entry_lock(target),
        ):
            pass
        assert 5 < time.monotonic() - start < 30
        assert "waiting for" in caplog.text and "another prh-bench run" in caplog.text
    finally:
        holder.kill()
        holder.wait()
    start = time.monotonic()
    with entry_lock(target):  # the holder died: the kernel released its lock, nothing is awaited
        assert time.monotonic() - start < 2


def test_paths_from_manifests_stay_inside_their_roots(tmp_path: Path) -> None:
    from prh_bench.weights import resolve_path

    with pytest.raises(BadInput, match="leaves the package 'numpy'"):
        resolve_path("pkg://numpy/../../../etc/passwd", "m")
    with pytest.raises(BadInput, match="would lead outside the cache folder"):
        FeatureCache(tmp_path).path("../../x", "k" * 64)
    write_yaml(
        tmp_path / "reg" / "suite.yaml",
        """\
kind: suite
id: escape
version: 1
dataset: pocket-photos
models: [resnet18-random]
metrics: [{name: mutual_knn}]
revisions: ["../../../../x"]
""",
    )
    result = cli("validate", tmp_path / "reg")
    assert result.exit_code == 2 and "field 'revisions.0'" in result.stderr and "should match pattern" in result.stderr


def test_a_yaml_alias_bomb_is_refused_quickly(tmp_path: Path) -> None:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [{','.join([f'*{prev}'] * 9)}]")
    bomb = write_yaml(tmp_path / "bomb.yaml", "\n".join(lines) + "\nkind: suite\n")
    assert bomb.stat().st_size < 1000
    start = time.monotonic()
    result = cli("validate", bomb)
    assert result.exit_code == 2 and "aliases expand to more than 100,000 nodes" in result.stderr
    assert time.monotonic() - start < 30


@pytest.mark.parametrize(
    ("metric", "message"),
    [
        ("{name: mutual_knn, kk: 10}", "unknown parameter 'kk' (did you mean 'k'?)"),
        ('{name: mutual_knn, k: "5"}', "parameter 'k' must be an integer"),
        ("{name: mutual_knn, k: 5.5}", "parameter 'k' must be an integer"),
        ("{name: mutual_knn, k: -1}", "parameter 'k' must be an integer in [1, "),
        ("{name: mutual_knn, k: 99999999999999999999999}", "parameter 'k' must be an integer in [1, "),
        ("{name: mutual_knn, k: 16}", "k must be in [1, N-1] = [1, 15], got k=16"),
        ("{name: mutual_knm}", "unknown metric 'mutual_knm'"),
    ],
)
def test_bad_metric_parameters_are_refused_before_any_work(tmp_path: Path, metric: str, message: str) -> None:
    reg = tiny_registry(tmp_path / "reg")
    write_yaml(
        reg / "suite.yaml", (reg / "suite.yaml").read_text().replace("[{name: mutual_knn, k: 3}]", f"[{metric}]")
    )
    checked = cli("validate", reg)
    assert checked.exit_code == 2 and message in checked.stderr and "field 'metrics.0" in checked.stderr
    ran = cli("--registry", reg, "run", "--suite", "tiny-suite", "--out", tmp_path / "run")
    assert ran.exit_code == 2 and message in ran.stderr
    assert not (tmp_path / "run").exists()
    assert not list(Path(__import__("os").environ["PRH_BENCH_CACHE"]).rglob("*.safetensors"))  # nothing extracted


@pytest.mark.parametrize(
    ("device", "message"), [("gpu", "expected auto, cpu, cuda, cuda:N or mps"), ("cuda:7", "CUDA device")]
)
def test_an_unusable_device_is_refused_before_any_work(tmp_path: Path, device: str, message: str) -> None:
    reg = tiny_registry(tmp_path / "reg")
    ran = cli("--registry", reg, "run", "--suite", "tiny-suite", "--device", device, "--out", tmp_path / "run")
    assert ran.exit_code == 2 and message in ran.stderr and not (tmp_path / "run").exists()


def test_a_full_disk_or_unwritable_cache_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    import safetensors.torch

    from prh_bench.cache_files import CacheUnwritable

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(CacheUnwritable, match=r"cannot write the cache entry .*e\.safetensors: the disk is full"):
        write_entry(tmp_path / "m" / "e.safetensors", {"x": torch.zeros(2)}, {})
    assert [p.name for p in (tmp_path / "m").iterdir()] == [WRITERS_LOCK]  # no temporary file left behind


def test_a_warm_cache_is_read_without_taking_locks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read-only cache (a shared, published one) serves stored entries: reading takes no lock file."""
    import prh_bench.executors as executors
    import prh_bench.pair_cache as pair_cache

    reg = tiny_registry(tmp_path / "reg")
    assert cli("--registry", reg, "run", "--suite", "tiny-suite", "--out", tmp_path / "r1").exit_code == 0

    def no_locks(*args, **kwargs):
        raise AssertionError("a lock was taken to read a stored entry")

    monkeypatch.setattr(FeatureCache, "lock", no_locks)
    monkeypatch.setattr(pair_cache.PairCache, "lock", no_locks)
    second = cli("--registry", reg, "run", "--suite", "tiny-suite", "--out", tmp_path / "r2")
    assert second.exit_code == 0, second.output
    assert (tmp_path / "r1" / "scores.csv").read_text() == (tmp_path / "r2" / "scores.csv").read_text()
    assert executors  # the executor reads through FeatureCache.load first


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04garbage"])
def test_a_weights_file_that_is_no_checkpoint_is_bad_input(tmp_path: Path, content: bytes) -> None:
    from prh_bench.weights import read_state_dict

    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    with pytest.raises(BadInput, match=f"checkpoint {path} is not a file torch.load can read"):
        read_state_dict(path)
    torch.save([torch.zeros(2)], path)
    with pytest.raises(BadInput, match="holds a list, not a state dict of tensors"):
        read_state_dict(path)


def test_a_truncated_image_in_an_image_folder_is_named(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    from prh_bench.manifest import DatasetManifest
    from prh_bench.plugins.datasets.images import image_folder

    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(tmp_path / "good.png")
    data = (tmp_path / "good.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.jpg").write_text("hello")
    m = DatasetManifest(
        kind="dataset",
        id="folder",
        version=1,
        loader="image_folder",
        modality="vision",
        options={"path": str(tmp_path)},
    )
    with pytest.raises(BadInput, match=r"dataset 'folder': .*(cut\.png|text\.jpg) is not a readable image"):
        image_folder(m)


@pytest.mark.parametrize(
    ("field", "value"),
    [("batch_size", 10**30), ("version", 10**30), ("params", "inf"), ("weights", "{random: 99999999999999999999999}")],
)
def test_huge_numbers_in_manifests_are_refused_by_validate(tmp_path: Path, field: str, value: object) -> None:
    text = f"kind: model\nid: big\nversion: 1\nbackend: timm\nsource: resnet18\nmodality: vision\n{field}: {value}\n"
    path = write_yaml(tmp_path / "big.yaml", text.replace("version: 1\n", "") if field == "version" else text)
    result = cli("validate", path)
    assert result.exit_code == 2 and "big.yaml: field" in result.stderr


def test_a_one_element_slice_with_a_non_unit_stride_is_stored_and_digested(tmp_path: Path) -> None:
    """Two one-layer models' scores taken from a transposed slice: a 1 x 1 tensor with stride (1, 2), which
    `contiguous()` leaves alone and `view(torch.uint8)` refuses (it crashed the pair store in pocket-colors)."""
    from prh_bench.cache_files import tensors_digest

    score = torch.arange(6.0).reshape(3, 2).t()[:1, :1]
    assert score.stride() == (1, 2) and score.is_contiguous()
    assert tensors_digest({"s": score}) == tensors_digest({"s": torch.tensor([[0.0]])})
    write_entry(tmp_path / "p.safetensors", {"s": score}, {})
    assert read_entry(tmp_path / "p.safetensors")[0]["s"].tolist() == [[0.0]]


def test_outputs_never_mix_with_an_earlier_runs(tmp_path: Path) -> None:
    import pandas as pd

    from prh_bench.results.run_folder import read_table

    reg = tiny_registry(tmp_path / "reg")
    old = tmp_path / "old-run"
    old.mkdir()
    (old / "calibration.csv").write_text("stale")
    ran = cli("--registry", reg, "run", "--suite", "tiny-suite", "--out", old)
    assert ran.exit_code == 2 and "the folder is not empty" in ran.output
    both = tmp_path / "both"
    both.mkdir()
    pd.DataFrame({"score": [0.5]}).to_csv(both / "scores.csv", index=False)
    pd.DataFrame({"score": [0.7]}).to_parquet(both / "scores.parquet")
    with pytest.raises(BadInput, match=r"holds both scores.csv and scores.parquet"):
        read_table(both, "scores")
    (both / "scores.csv").unlink()
    data = (both / "scores.parquet").read_bytes()
    (both / "scores.parquet").write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(BadInput, match=r"scores.parquet: not a readable scores table"):
        read_table(both, "scores")


def test_a_url_checkpoint_is_local_exactly_where_download_keeps_it(tmp_path: Path) -> None:
    """The weights status looked for any file of the same name anywhere under the cache's weights folder; it now
    looks where `download` keeps (and reads) that URL's file, so an offline run never starts a model whose file
    download would not find."""
    from prh_bench.manifest import ModelManifest
    from prh_bench.weights import checkpoint_status, download_path

    url = "https://example.org/ckpt/model.pth"
    m = ModelManifest.model_validate(
        {
            "kind": "model",
            "id": "u",
            "version": 1,
            "backend": "timm",
            "source": "resnet18",
            "modality": "vision",
            "weights": {"url": url},
        }
    )
    elsewhere = tmp_path / "weights" / ("0" * 64) / "model.pth"  # another URL's file of the same name
    elsewhere.parent.mkdir(parents=True)
    elsewhere.write_bytes(b"x")
    assert checkpoint_status(m, tmp_path).startswith(f"unavailable: {url} is not in the cache")  # tests run offline
    kept = download_path(url, None, tmp_path)
    kept.parent.mkdir(parents=True)
    kept.write_bytes(b"x")
    assert checkpoint_status(m, tmp_path) == "local"
