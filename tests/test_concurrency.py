"""Writers that share a cache: real processes writing real safetensors entries into one folder, two runs of
different suites on one warm cache, and Ray tile tasks running two at a time. Each finishes, loses nothing and
gives the scores a serial run gives."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from prh_bench.cache_files import read_entry

from .conftest import write_yaml
from .test_cache import TINY

pytestmark = pytest.mark.slow  # runs models end to end, or kills, races or spawns processes

WRITER = """
import sys, torch
from pathlib import Path
from prh_bench.cache_files import write_entry
folder, who, count = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
for i in range(count):
    write_entry(folder / f"w{who}-{i}.safetensors", {"x": torch.full((64,), float(who * 10_000 + i))}, {"who": str(who)})
"""


def test_concurrent_writers_into_one_folder_all_succeed(tmp_path: Path) -> None:
    """Each writer's temporary file is replaced by safetensors (a new inode); no writer's sweep may delete
    another's. Before the fix, 6 x 400 writes lost 1715."""
    procs, count = 4, 150
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path), str(w), str(count)], stderr=subprocess.PIPE, text=True
        )
        for w in range(procs)
    ]
    errors = [p.communicate(timeout=600)[1] for p in runs]
    assert [p.returncode for p in runs] == [0] * procs, "\n".join(e[-2000:] for e in errors)
    entries = sorted(tmp_path.glob("w*.safetensors"))
    assert len(entries) == procs * count
    for path in entries:
        who, i = map(int, path.stem[1:].split("-"))
        tensors, meta = read_entry(path)
        assert torch.equal(tensors["x"], torch.full((64,), float(who * 10_000 + i))) and meta["who"] == str(who)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]


def two_suite_registry(root: Path) -> Path:
    for mid, source in [
        ("tiny-a", "resnet18"),
        ("tiny-b", "tf_efficientnet_lite0"),
        ("tiny-c", "mobilenetv3_small_050"),
    ]:
        write_yaml(root / f"{mid}.yaml", TINY.format(id=mid, source=source, size=64))
    for suite, models in [("suite-ab", "[tiny-a, tiny-b]"), ("suite-abc", "[tiny-a, tiny-b, tiny-c]")]:
        write_yaml(
            root / f"{suite}.yaml",
            f"kind: suite\nid: {suite}\nversion: 1\ndataset: pocket-photos\n"
            f"models: {models}\nmetrics: [{{name: mutual_knn, k: 3}}, {{name: cka}}]\nmax_samples: 24\n"
            "calibrate: {permutations: 20}\n",
        )
    return root


def cli_process(reg: Path, cache: Path, suite: str, out: Path, *extra: str) -> subprocess.Popen:
    env = os.environ | {"PRH_BENCH_CACHE": str(cache), "OMP_NUM_THREADS": "1", "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}
    cmd = [
        sys.executable,
        "-m",
        "prh_bench",
        "--quiet",
        "--registry",
        str(reg),
        "run",
        "--suite",
        suite,
        "--out",
        str(out),
        *extra,
    ]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> None:
    _out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]


def same_scores(run: Path, serial: Path) -> None:
    """The serial run's scores: kNN ones exactly; CKA's to rounding (a pair computed in another tile of pairs
    sums in another order, as the pair store allows: results.pairs.SCORE_ATOL)."""
    a, b = (pd.read_csv(p / "scores.csv", dtype={"params": str}) for p in (run, serial))
    keys = ["condition", "model_x", "model_y", "layer_x", "layer_y", "metric", "params"]
    assert a[keys].equals(b[keys])
    knn = a["metric"] == "mutual_knn"
    assert a["score"][knn].equals(b["score"][knn]) and knn.sum() > 0
    np.testing.assert_allclose(a["score"], b["score"], rtol=0, atol=1e-12)


def test_two_runs_of_different_suites_on_one_warm_cache(tmp_path: Path) -> None:
    """Both write pair entries into the same pair-store folders at once; both must finish with the serial
    run's scores."""
    reg = two_suite_registry(tmp_path / "reg")
    cache = tmp_path / "cache"
    finish(cli_process(reg, cache, "suite-ab", tmp_path / "warm"))  # features and some pairs cached
    serial = tmp_path / "serial-cache"
    for suite in ("suite-ab", "suite-abc"):
        finish(cli_process(reg, serial, suite, tmp_path / f"serial-{suite}"))
    for attempt in range(2):
        shutil.rmtree(cache / "pairs")  # features warm, every pair and null to compute by both runs at once
        procs = {s: cli_process(reg, cache, s, tmp_path / f"{s}-{attempt}") for s in ("suite-ab", "suite-abc")}
        for proc in procs.values():
            finish(proc)
        for suite in procs:
            same_scores(tmp_path / f"{suite}-{attempt}", tmp_path / f"serial-{suite}")
    assert not list(cache.rglob(".tmp*"))
