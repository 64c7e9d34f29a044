"""Merges that cannot lose or lie: one writer at a time, all or nothing (a write error undoes the merge, a killed
merge is completed by the next reader), paths that stay inside the store, nulls compared and validated, and
hostile records refused before anything is written."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from prh_bench.cache_files import CacheUnwritable
from prh_bench.errors import BadInput
from prh_bench.results.journal import JOURNAL
from prh_bench.results.merge import merge
from prh_bench.results.pair_records import record_path, scan

from .conftest import cli


def record(x: str = "x", y: str = "y", label: str = "d", score: float = 0.25, **extra) -> dict:
    return {
        "format": 1,
        "condition": {
            "label": label,
            "dataset": "d",
            "dataset_version": 1,
            "dataset_revision": None,
            "transform": None,
            "level": None,
            "n_samples": 10,
        },
        "metric": "cka",
        "params": {},
        "metric_version": 1,
        "prepare": {},
        "code_sha256": "c",
        "torch": "t",
        "prh_bench": "v",
        "scores": [[score, 0.5]],
        "model_x": {"id": x, "revision": None, "manifest_version": 1, "features_sha256": "a" * 64, "layers": ["l"]},
        "model_y": {
            "id": y,
            "revision": None,
            "manifest_version": 1,
            "features_sha256": "b" * 64,
            "layers": ["l1", "l2"],
        },
        **extra,
    }


def null(x: str = "x", y: str = "y", p: float = 0.1) -> dict:
    return {
        "model_x": x,
        "model_y": y,
        "metric": "cka",
        "observed": 0.5,
        "p_value": p,
        "calibrated": 0.3,
        "tau": 0.2,
        "alpha": 0.05,
        "null_normalized": 0.4,
        "null_mean": 0.1,
        "null_std": 0.01,
        "null_q95": 0.19,
        "permutations": 9,
    }


def source(root: Path, *records: dict) -> Path:
    """A store holding the records, one file per pair as merge writes them."""
    for rec in records:
        path = record_path(root, rec["condition"]["label"], rec["model_x"]["id"], rec["model_y"]["id"])
        path.parent.mkdir(parents=True, exist_ok=True)
        old = json.loads(path.read_text()) if path.exists() else []
        path.write_text(json.dumps([*old, rec]))
    return root


def files(store: Path) -> dict[str, bytes]:
    return {
        p.relative_to(store).as_posix(): p.read_bytes()
        for p in sorted(store.rglob("*"))
        if p.is_file() and not p.name.startswith(".")
    }


def many(prefix: str, n: int, score: float = 0.25) -> list[dict]:
    return [record(f"{prefix}{i}", f"y{i}", score=score) for i in range(n)]


MERGER = (
    "import sys; from pathlib import Path; from prh_bench.results.merge import merge; "
    "print(merge([Path(sys.argv[1])], Path(sys.argv[2])))"
)


def test_two_merges_into_one_store_at_once_lose_nothing_and_refuse_a_conflict(tmp_path: Path) -> None:
    """Before the merge lock: 799 of 800 records kept, and a conflicting record replaced the other's."""
    a = source(tmp_path / "a", *many("a", 200), record("x", "y", score=0.25))
    b = source(tmp_path / "b", *many("b", 200), record("x", "y", score=0.75))
    store = tmp_path / "store"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", MERGER, str(s), str(store)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for s in (a, b)
    ]
    outs = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    assert sorted(rc for rc, _, _ in outs) == [0, 1]  # one merged, the other found the conflict
    refused = next(err for rc, _, err in outs if rc)
    assert "refusing to merge: 1 record(s) disagree" in refused and "x x y" in refused
    kept = scan(store)
    winner = "a" if outs[0][0] == 0 else "b"
    assert len(kept) == 201 and {k[2][0] for k in kept} == {winner, "x"}
    ((rec, _),) = [v for k, v in kept.items() if k[2] == "x"]
    assert rec.scores[0][0] == (0.25 if winner == "a" else 0.75)


def test_a_write_error_undoes_the_whole_merge(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import prh_bench.results.journal as merging

    store = source(tmp_path / "store", *many("s", 3))
    src = source(tmp_path / "src", *many("n", 50), record("s0", "y0", score=0.25))  # one already present
    before = files(store)
    real, calls = merging._write, []

    def full_disk_after_20(path: Path, text: str) -> None:
        calls.append(path)
        if len(calls) == 21:
            raise CacheUnwritable(f"cannot write the results file {path}: the disk is full")
        real(path, text)

    monkeypatch.setattr(merging, "_write", full_disk_after_20)
    with pytest.raises(CacheUnwritable, match="the disk is full; the merge was undone"):
        merge([src], store)
    assert files(store) == before and not (store / JOURNAL).exists()
    monkeypatch.setattr(merging, "_write", real)
    assert merge([src], store)["added"] == 50 and len(scan(store)) == 53


def test_a_file_where_a_folder_is_needed_is_refused_before_writing(tmp_path: Path) -> None:
    store = source(tmp_path / "store", *many("s", 2))
    (store / "d" / "n7").write_text("not a folder")
    before = files(store)
    with pytest.raises(BadInput, match=r"n7 is a file where the results folder .* needs a folder; nothing was written"):
        merge([source(tmp_path / "src", *many("n", 20))], store)
    assert files(store) == before


KILLED = """
import os, sys
from pathlib import Path
import prh_bench.results.journal as merging
from prh_bench.results.merge import merge
real, done = merging._write, []
def write(path, text):
    if path.name != merging.JOURNAL and len(done) == 10:
        os._exit(137)  # as a SIGKILL would leave it: no cleanup, no rollback
    done.append(path)
    real(path, text)
merging._write = write
merge([Path(sys.argv[1])], Path(sys.argv[2]))
"""


def test_a_merge_killed_while_writing_leaves_the_store_as_after_for_every_reader(tmp_path: Path) -> None:
    store, expected = tmp_path / "store", tmp_path / "expected"
    for folder in (store, expected):
        merge([source(tmp_path / "first", *many("s", 3))], folder)
    src = source(tmp_path / "src", *many("n", 40))
    merge([src], expected)
    killed = subprocess.run([sys.executable, "-c", KILLED, str(src), str(store)], timeout=300, check=False)
    assert killed.returncode == 137 and (store / JOURNAL).exists()
    assert set(scan(store)) == set(scan(expected))  # the reader completed the merge first
    assert files(store) == files(expected) and not (store / JOURNAL).exists()


def test_record_paths_stay_inside_the_store(tmp_path: Path) -> None:
    store = tmp_path / "store"
    merge([source(tmp_path / "src", record(label=".."))], store)  # slug('..') was '..': one level up
    assert not (tmp_path / "x").exists() and len(scan(store)) == 1
    outside = tmp_path / "outside"
    outside.mkdir()
    (store / "e").mkdir()
    os.symlink(outside, store / "e" / "x")
    with pytest.raises(BadInput, match="is a link inside the results folder"):
        merge([source(tmp_path / "src2", record(label="e"))], store)
    assert not list(outside.iterdir())
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text("{}")
    with pytest.raises(BadInput, match="is a run folder: its results belong to its run"):
        merge([source(tmp_path / "src3", record())], run)


def test_permutation_nulls_are_compared_validated_and_added(tmp_path: Path) -> None:
    store = tmp_path / "store"
    merge([source(tmp_path / "plain", record())], store)
    done = merge([source(tmp_path / "calibrated", record(calibration=null()))], store)
    assert done == {"added": 0, "nulls_added": 1, "already_present": 0, "files": 1}
    ((rec, _),) = scan(store).values()
    assert rec.calibration is not None and rec.calibration.p_value == 0.1
    with pytest.raises(BadInput, match=r"calibration.p_value: differ by up to 0.1"):
        merge([source(tmp_path / "other-p", record(calibration=null(p=0.2)))], store)
    with pytest.raises(BadInput, match="field 'calibration': the cka null of x x z in a cka record of x x y"):
        merge([source(tmp_path / "wrong-pair", record(calibration=null(y="z")))], tmp_path / "s2")
    partial = {k: v for k, v in null().items() if k != "tau"}
    with pytest.raises(BadInput, match=r"field 'calibration.tau': Field required"):
        merge([source(tmp_path / "partial", record(calibration=partial))], tmp_path / "s3")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r["scores"][0].__setitem__(0, float("inf")), "an infinite score is no measurement"),
        (lambda r: r.update(params={"k": json.loads("[" * 600 + "]" * 600)}), "nested deeper than 4 levels"),
        (lambda r: r["model_x"]["layers"].__setitem__(0, "l\ud800"), "a lone surrogate"),
        (lambda r: r["condition"].update(label="d\x1b[2J"), "control characters"),
    ],
)
def test_hostile_records_are_refused_before_anything_is_written(tmp_path: Path, change, message: str) -> None:
    rec = copy.deepcopy(record())
    change(rec)
    src = tmp_path / "src" / "d" / "x" / "y.json"
    src.parent.mkdir(parents=True)
    src.write_text(json.dumps([rec]))
    done = cli("merge", tmp_path / "src", "--into", tmp_path / "store")
    assert done.exit_code == 2 and message in done.output and str(src) in done.output
    assert "\x1b" not in done.output
    assert not files(tmp_path / "store")


def test_special_files_as_sources_fail_at_once(tmp_path: Path) -> None:
    src = tmp_path / "src" / "d" / "x"
    src.mkdir(parents=True)
    os.symlink("/dev/zero", src / "y.json")
    done = cli("merge", tmp_path / "src", "--into", tmp_path / "store")
    assert done.exit_code == 2 and "not a regular file (a character device)" in done.output
    (src / "y.json").unlink()
    os.mkfifo(src / "y.json")  # reading it would block forever
    done = cli("merge", tmp_path / "src", "--into", tmp_path / "store")
    assert done.exit_code == 2 and "not a regular file (a FIFO)" in done.output
    manifest = tmp_path / "reg" / "m.yaml"
    manifest.parent.mkdir()
    manifest.write_text("include: _base.yaml\nid: m\n")
    os.mkfifo(tmp_path / "reg" / "_base.yaml")
    done = cli("--registry", tmp_path / "reg", "validate", manifest)
    assert done.exit_code == 2 and "_base.yaml: not a regular file (a FIFO)" in done.output
