"""A contributor's model from one YAML to a verified leaderboard row: run beside a zoo, submit, verify, merge,
publish; and the tampered submissions verify must catch (an edited score, swapped features, a wrong manifest
version), with an honest one passing."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from prh_bench.cache_files import read_entry, write_entry
from prh_bench.errors import BadInput
from prh_bench.results.submission import CLAIM, unpack
from prh_bench.results.verify import pass_probability

from .conftest import cli, cli_json, write_yaml

pytestmark = pytest.mark.slow  # runs models end to end, or kills, races or spawns processes

SUITE = """kind: suite
id: mini
version: 1
dataset: pocket-photos
max_samples: 40
models: [efficientnet-lite0-random, resnet18-random]
metrics: [{name: mutual_knn, k: 5}, {name: cka}]
calibrate: {permutations: 20}
reference: resnet18-random
"""
MODEL = """kind: model
id: my-net
version: 1
backend: timm
source: mobilenetv3_small_050
modality: vision
weights: {random: 1}
params: 1.6e6
"""


@pytest.fixture
def contribution(tmp_path: Path) -> dict[str, Path]:
    """The maintainers' suite (zoo/), a contributor's model (mine/), the contributor's run and submission."""
    zoo, mine = tmp_path / "zoo", tmp_path / "mine"
    write_yaml(zoo / "mini.yaml", SUITE)
    write_yaml(mine / "my-net.yaml", MODEL)
    run = tmp_path / "run"
    ran = cli("--registry", zoo, "--registry", mine, "run", "--suite", "mini", "--add-model", "my-net", "--out", run)
    assert ran.exit_code == 0, ran.output
    sub = tmp_path / "sub.zip"
    packed = cli("--registry", zoo, "--registry", mine, "submit", run, "--model", "my-net", "--out", sub)
    assert packed.exit_code == 0 and "1 feature files" in packed.output, packed.output
    return {"zoo": zoo, "mine": mine, "run": run, "sub": sub, "tmp": tmp_path}


def verify(c: dict[str, Path], sub: Path, *more: object) -> tuple[int, dict]:
    result = cli_json("--registry", c["zoo"], "--registry", c["mine"], "verify", sub, "--all", *more)
    return (0 if result["passed"] else 1), result


def failed(result: dict) -> dict[str, str]:
    return {f["check"]: f["detail"] for f in result["findings"] if not f["ok"]}


def tampered(src: Path, dst: Path, edit: Callable[[str, bytes], bytes], refresh_claim: bool = True) -> Path:
    """A copy of a submission with members edited; with refresh_claim, the claim's sha256 and sizes follow the
    edit (a deliberate forger, not a damaged download)."""
    with zipfile.ZipFile(src) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    members = {n: edit(n, data) for n, data in sorted(members.items(), key=lambda m: m[0] == CLAIM)}  # claim last
    if refresh_claim:
        claim = json.loads(members[CLAIM])
        for f in claim["files"]:
            f["sha256"], f["bytes"] = hashlib.sha256(members[f["path"]]).hexdigest(), len(members[f["path"]])
        members[CLAIM] = json.dumps(claim).encode()
    with zipfile.ZipFile(dst, "w") as zf:
        for n, data in members.items():
            zf.writestr(n, data)
    return dst


def records_of(name: str) -> bool:
    return name.startswith("results/") and name.endswith("/my-net.json")


def test_an_honest_submission_passes_and_tampered_ones_are_caught(contribution: dict[str, Path]) -> None:
    c = contribution
    rc, honest = verify(c, c["sub"])
    assert rc == 0 and honest["records"] == 4 and honest["recomputed"] == 4, honest
    assert honest["max_deviation"] == 0.0  # the same features through the same code: the same bits

    def edit_score(name: str, data: bytes) -> bytes:
        if not name.endswith("efficientnet-lite0-random/my-net.json"):
            return data
        recs = json.loads(data)
        flat = [x for row in recs[0]["scores"] for x in row]
        i = flat.index(min(flat))  # not the best score, which the record's null repeats
        recs[0]["scores"][i // len(recs[0]["scores"][0])][i % len(recs[0]["scores"][0])] += 0.01
        return json.dumps(recs).encode()

    rc, result = verify(c, tampered(c["sub"], c["tmp"] / "score.zip", edit_score))
    assert rc == 1 and "claims" in failed(result)["scores"] and "its features give" in failed(result)["scores"]
    assert failed(result).keys() == {"scores"}
    # Edited without fixing the claim: the file itself no longer matches.
    rc, result = verify(c, tampered(c["sub"], c["tmp"] / "careless.zip", edit_score, refresh_claim=False))
    assert rc == 1 and "(altered)" in failed(result)["files"]

    # Swapped features: the random EfficientNet's entry re-signed under my-net's name.
    def swap(name: str, data: bytes) -> bytes:
        if not name.startswith("features/my-net/"):
            return data
        mine, forged = c["tmp"] / "mine" / Path(name).name, c["tmp"] / "swap" / Path(name).name
        forged.parent.mkdir(exist_ok=True)
        mine.write_bytes(data)
        _, meta = read_entry(mine)
        theirs, _ = read_entry(feature_entry("efficientnet-lite0-random"))
        layers = json.loads(meta["layers"])  # my-net's layer names over the other model's features
        write_entry(
            forged,
            {f"layer{i:03d}": theirs["layer000"].clone() for i in range(len(layers))},
            {k: meta[k] for k in ("key", "layers", "extras", "key_doc")},
        )
        return forged.read_bytes()

    rc, result = verify(c, tampered(c["sub"], c["tmp"] / "swap.zip", swap))
    assert rc == 1 and "is not the" in failed(result)["features"] and "swapped" in failed(result)["features"]

    # ... and with the records' checksums changed to match: the scores give it away.
    def swap_and_rename(name: str, data: bytes) -> bytes:
        return rename_checksums(swap(name, data) if name.startswith("features/") else data, name, c)

    rc, result = verify(c, tampered(c["sub"], c["tmp"] / "swap2.zip", swap_and_rename))
    assert rc == 1 and "scores" in failed(result), result

    # A wrong manifest version, claimed or in the records; or the registry's manifest moved on.
    def claim_v2(name: str, data: bytes) -> bytes:
        if not records_of(name):
            return data
        recs = json.loads(data)
        for r in recs:
            r["model_y"]["manifest_version"] = 2
        return json.dumps(recs).encode()

    rc, result = verify(c, tampered(c["sub"], c["tmp"] / "v2.zip", claim_v2))
    assert rc == 1 and "'my-net' manifest version 2, the registry's is 1" in failed(result)["records"]
    write_yaml(c["mine"] / "my-net.yaml", MODEL.replace("version: 1", "version: 2"))
    rc, result = verify(c, c["sub"])
    assert rc == 1 and "ran manifest version 1, the registry's is 2" in failed(result)["manifests"]
    write_yaml(c["mine"] / "my-net.yaml", MODEL.replace("{random: 1}", "{random: 2}"))
    rc, result = verify(c, c["sub"])
    assert rc == 1 and "differs from the registry's in fields that change features" in failed(result)["manifests"]


def feature_entry(model: str) -> Path:
    return next(Path(os.environ["PRH_BENCH_CACHE"]).glob(f"features/{model}/*.safetensors"))


def rename_checksums(data: bytes, name: str, c: dict[str, Path]) -> bytes:
    """The feature checksum of my-net in its records and the claim replaced by the swapped entry's."""
    new = read_entry(next((c["tmp"] / "swap").glob("*.safetensors")))[1][
        "sha256"
    ]  # written first: features/ < results/
    with zipfile.ZipFile(c["sub"]) as zf:
        old = json.loads(zf.read(CLAIM))["features"][0]["features_sha256"]
    return data.replace(old.encode(), new.encode()) if records_of(name) or name == CLAIM else data


def test_the_sample_bounds_what_a_tampered_submission_gets_past(contribution: dict[str, Path]) -> None:
    """C(M - t, s) / C(M, s): by hand for M = 4."""
    assert pass_probability(4, 1, 1) == pytest.approx(3 / 4)
    assert pass_probability(4, 2, 1) == pytest.approx(3 / 6)
    assert pass_probability(4, 4, 1) == 0.0 and pass_probability(100, 20, 5) == pytest.approx(
        1 * 0.8 * 0.7979798 * 0.7959184 * 0.7938144 * 0.7916667, rel=1e-6
    )
    c = contribution
    verify_two = ("--registry", c["zoo"], "--registry", c["mine"], "verify", c["sub"], "--sample", "2")
    result = cli_json(*verify_two, "--seed", "3")
    assert result["passed"] and result["recomputed"] == 2 and result["seed"] == 3
    assert result["pass_probability"] == [{"tampered": 1, "pass_probability": 0.5}]
    # Unless given, the seed is drawn anew: a submitter cannot know which records will be recomputed.
    seeds = {cli_json(*verify_two)["seed"] for _ in range(2)}
    assert len(seeds) == 2


def test_the_contributor_path_ends_in_verified_and_unverified_rows(contribution: dict[str, Path]) -> None:
    c = contribution
    store, board = c["tmp"] / "store", c["tmp"] / "board"
    ran = cli("--registry", c["zoo"], "run", "--suite", "mini", "--out", c["tmp"] / "zoo-run")
    assert ran.exit_code == 0, ran.output
    assert cli("merge", c["tmp"] / "zoo-run", "--into", store).exit_code == 0  # the maintainers' own run
    bad = tampered(
        c["sub"], c["tmp"] / "bad.zip", lambda n, d: d.replace(b'"manifest_version": 1', b'"manifest_version": 3')
    )
    refused = cli("--registry", c["zoo"], "--registry", c["mine"], "verify", bad, "--into", store)
    assert refused.exit_code == 1 and "NOT verified" in refused.output and not (store / "verifications.jsonl").exists()
    done = cli("--registry", c["zoo"], "--registry", c["mine"], "verify", c["sub"], "--into", store)
    assert done.exit_code == 0 and "4 records added" in done.output, done.output
    ledger = [json.loads(x) for x in (store / "verifications.jsonl").read_text().splitlines()]
    assert [e["models"] for e in ledger] == [["my-net"]] and ledger[0]["recomputed"] == 4
    shown = cli(
        "--registry",
        c["zoo"],
        "--registry",
        c["mine"],
        "leaderboard",
        "--suite",
        "mini",
        "--results",
        store,
        "--out",
        board,
    )
    assert shown.exit_code == 0, shown.output
    table = pd.read_csv(board / "leaderboard.csv").set_index("model")
    assert table.verification.to_dict() == {
        "resnet18-random": "unverified",
        "efficientnet-lite0-random": "unverified",
        "my-net": "verified (4 of 4 records recomputed)",
    }
    page = (board / "index.html").read_text()
    assert "<td>verified (4 of 4 records recomputed)</td>" in page and "<td>unverified</td>" in page
    assert "recomputed s of its M pair records from the features within tolerance" in page
    assert f"Results of {store}" in page and not (board / "from-results").exists()  # the store, read in place
    assert set(table.status) == {"ok"}


def test_an_archive_that_is_no_honest_submission_is_refused_before_anything_is_read(tmp_path: Path) -> None:
    def archive(claim: dict, members: dict[str, bytes]) -> Path:
        path = tmp_path / "x.zip"
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr(CLAIM, json.dumps(claim))
            for n, d in members.items():
                zf.writestr(n, d)
        return path

    body = b"x" * 100_000
    claim = {
        "format": 1,
        "suite": "s",
        "suite_version": 1,
        "created": "now",
        "prh_bench": "0",
        "max_samples": None,
        "models": [{"id": "m", "manifest_version": 1, "manifest_sha256": "0" * 64}],
        "features": [],
        "files": [{"path": "results/d/m/y.json", "sha256": hashlib.sha256(body).hexdigest(), "bytes": 10}],
    }
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(BadInput, match="holds more than the 10 bytes"):  # a bomb stops at its declared size
        unpack(archive(claim, {"results/d/m/y.json": body}), dest)
    claim["files"][0]["path"] = "results/../../evil.json"
    with pytest.raises(BadInput, match=r"field 'files.0.path'"):
        unpack(archive(claim, {}), dest)
    claim["files"][0] |= {"path": "results/d/m/y.json", "bytes": len(body)}
    _, problems = unpack(archive(claim, {"results/d/m/y.json": body, "../outside.json": b"{}"}), dest)
    assert problems == [f"../outside.json: in the archive but not in {CLAIM}'s file list"]
    assert not (tmp_path / "outside.json").exists()
    (tmp_path / "junk.zip").write_bytes(b"PK not really")
    with pytest.raises(BadInput, match="not a submission"):
        unpack(tmp_path / "junk.zip", dest)


def test_the_python_front_door_reads_the_run_and_the_store(contribution: dict[str, Path]) -> None:
    import prh_bench

    c = contribution
    res = prh_bench.load(str(c["run"]))
    assert (res.suite, res.metrics, res.conditions) == ("mini", ["mutual_knn", "cka"], ["pocket-photos"])
    assert res.scores.params.iloc[0] == {"k": 5}  # parameters as data
    scores = res.scores[
        (res.scores.metric == "cka") & (res.scores.model_x == "resnet18-random") & (res.scores.model_y == "my-net")
    ]
    grid = res.layers("resnet18-random", "my-net", metric="cka")
    assert grid.shape == (scores.layer_x.nunique(), scores.layer_y.nunique())
    for r in scores.itertuples():  # every cell is its row of the long table
        assert grid.loc[r.layer_x, r.layer_y] == r.score
    assert res.layers("my-net", "resnet18-random", metric="cka").equals(grid.T)  # symmetric: stored once
    assert res.matrix("cka").loc["my-net", "resnet18-random"] == scores.score.max()
    depth = res.by_depth("resnet18-random", "my-net", metric="cka")
    assert depth.best_score.tolist() == grid.max(axis=1).tolist() and depth.depth.iloc[[0, -1]].tolist() == [0.0, 1.0]
    fig = res.plot_layers("resnet18-random", "my-net")
    fig.savefig(c["tmp"] / "pair.png")
    assert (c["tmp"] / "pair.png").stat().st_size > 10_000
    with pytest.raises(BadInput, match="no metric 'rsa'"):
        res.matrix("rsa")
    with pytest.raises(BadInput, match="no scores of my-net x nobody"):
        res.layers("my-net", "nobody")

    store = c["tmp"] / "store"
    assert cli("--registry", c["zoo"], "--registry", c["mine"], "verify", c["sub"], "--into", store).exit_code == 0
    with pytest.raises(BadInput, match="a results store needs suite="):
        prh_bench.load(store)
    files = sorted(store.rglob("*"))
    merged = prh_bench.load(store, suite="mini", registry_dirs=(c["zoo"], c["mine"]))
    assert sorted(store.rglob("*")) == files  # read into memory, no run folder made up beside the store
    assert merged.record.source == str(store) and merged.conditions == ["pocket-photos"]
    assert merged.matrix("cka").loc["my-net", "resnet18-random"] == scores.score.max()
    # The store's records are the run's rows of my-net's pairs, parameters as data in both.
    keys = ["condition", "metric", "model_x", "model_y", "layer_x", "layer_y"]
    mine = res.scores[(res.scores.model_x == "my-net") | (res.scores.model_y == "my-net")]
    both = mine.merge(merged.scores, on=keys, suffixes=("_run", "_store"))
    assert len(both) == len(mine) == len(merged.scores)
    assert (both.score_run == both.score_store).all() and (both.params_run == both.params_store).all()
    assert merged.models.empty  # no runs in the store: nothing invented about how each model ran


def test_features_of_a_model_the_submission_does_not_claim_are_refused(contribution: dict[str, Path]) -> None:
    """A forger who could ship the zoo's features too would make up both sides of a pair; only the claimed
    models' features are read from a submission, every other model's are the verifier's own."""
    c = contribution
    zoo_entry = feature_entry("efficientnet-lite0-random")
    member = f"features/efficientnet-lite0-random/{zoo_entry.name}"
    with zipfile.ZipFile(c["sub"]) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    members[member] = zoo_entry.read_bytes()
    claim = json.loads(members[CLAIM])
    claim["features"].append(
        {
            **claim["features"][0],
            "model": "efficientnet-lite0-random",
            "path": member,
            "features_sha256": read_entry(zoo_entry)[1]["sha256"],
        }
    )
    claim["files"].append(
        {"path": member, "sha256": hashlib.sha256(members[member]).hexdigest(), "bytes": len(members[member])}
    )
    members[CLAIM] = json.dumps(claim).encode()
    forged = c["tmp"] / "zoo-features.zip"
    with zipfile.ZipFile(forged, "w") as zf:
        for n, d in members.items():
            zf.writestr(n, d)
    rc, result = verify(c, forged)
    assert (
        rc == 1
        and "features of 'efficientnet-lite0-random', which the submission does not claim" in failed(result)["features"]
    )
    # And one without records claims nothing.
    empty = tampered(c["sub"], c["tmp"] / "empty.zip", lambda n, d: b"[]" if n.startswith("results/") else d)
    rc, result = verify(c, empty)
    assert rc == 1 and "no pair records" in failed(result)["records"]


def test_without_submitted_features_verify_extracts_the_model_here(contribution: dict[str, Path]) -> None:
    """Features are optional in a submission: where the weights can be had (here, a seeded random init), verify
    extracts the claimed model itself; --reextract does so even when features were sent, and compares them."""
    c = contribution
    bare = c["tmp"] / "bare.zip"
    packed = cli(
        "--registry",
        c["zoo"],
        "--registry",
        c["mine"],
        "submit",
        c["run"],
        "--model",
        "my-net",
        "--out",
        bare,
        "--no-features",
    )
    assert packed.exit_code == 0 and "0 feature files" in packed.output
    with zipfile.ZipFile(bare) as zf:
        assert not [n for n in zf.namelist() if n.startswith("features/")]
    shutil.rmtree(Path(os.environ["PRH_BENCH_CACHE"]) / "features" / "my-net")  # the verifier's machine has none
    rc, result = verify(c, bare)
    assert rc == 0 and result["recomputed"] == 4 and result["max_deviation"] == 0.0, result
    rc, result = verify(c, c["sub"], "--reextract")
    assert rc == 0 and result["recomputed"] == 4, result
