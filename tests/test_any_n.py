"""Alignment at any N: the blocked exact kNN search and the kNN family's pair stage hold no N x N tensor, and
give exactly the lists and counts of the definition (ties to the lower index)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from prh_bench.align import get_metric, score_layers, summarize_layers
from prh_bench.align.knn import Neighbours, _counts_by_search, _counts_by_table, contains
from prh_bench.align.search import knn_search

pytestmark = pytest.mark.slow  # runs models end to end, or kills, races or spawns processes


def reference_knn(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The definition, slowly: each row's full similarity row, self excluded, stably sorted."""
    sims = x.double() @ x.double().T if x.dtype == torch.float64 else x @ x.T
    sims.fill_diagonal_(-torch.inf)
    top = sims.sort(dim=1, descending=True, stable=True)
    return top.values[:, :k], top.indices[:, :k]


def features(kind: str, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if kind == "ties":  # small integers: every product is exact and most similarities tie
        return torch.randint(-1, 2, (n, 3), generator=g).float()
    if kind == "float64":
        return torch.randn(n, 12, generator=g, dtype=torch.float64)
    return torch.randn(n, 16, generator=g)


@pytest.mark.parametrize("kind", ["randn", "ties", "float64"])
@pytest.mark.parametrize(("n", "block"), [(37, 1), (37, 5), (300, 7), (300, 64), (300, 128), (300, None)])
@pytest.mark.parametrize("k", [1, 4, 10])
def test_blocked_search_equals_a_stable_sort_of_full_rows(kind: str, n: int, block: int | None, k: int) -> None:
    # blocks of 64 and 128 (multiples of 8) take the grouped prefilter, 5 and 7 the plain mask, 300 one block
    x = features(kind, n, seed=n + k)
    vals, idx = knn_search(x, k, block=block)
    ref_vals, ref_idx = reference_knn(x, k)
    assert torch.equal(idx, ref_idx)
    torch.testing.assert_close(vals, ref_vals.to(vals.dtype), rtol=0, atol=1e-5)


def test_every_other_sample_when_k_is_n_minus_1() -> None:
    x = features("ties", 23, seed=3)
    assert torch.equal(knn_search(x, 22, block=4)[1], reference_knn(x, 22)[1])
    with pytest.raises(Exception, match=r"k must be in \[1, N-1\] = \[1, 22\]"):
        knn_search(x, 23)


def reference_counts(sx: list[torch.Tensor], sy: list[torch.Tensor]) -> torch.Tensor:
    return torch.tensor(
        [[sum(len(set(a[i].tolist()) & set(b[i].tolist())) for i in range(a.shape[0])) for b in sy] for a in sx]
    )


def test_shared_counts_by_table_and_by_search_equal_set_intersections(monkeypatch: pytest.MonkeyPatch) -> None:
    g = torch.Generator().manual_seed(4)
    n, k = 200, 6
    lists = [torch.stack([torch.randperm(n, generator=g)[:k] for _ in range(n)]) for _ in range(5)]
    sx, sy = [Neighbours(i) for i in lists[:2]], [Neighbours(i) for i in lists[2:]]
    ref = reference_counts(lists[:2], lists[2:])
    assert torch.equal(_counts_by_search(sx, sy), ref)
    assert torch.equal(_counts_by_table(sx, sy), ref)
    monkeypatch.setattr("prh_bench.align.knn.TABLE_BYTES", 3 * n * 2)  # the table three rows at a time
    assert torch.equal(_counts_by_table(sx, sy), ref)
    rows = torch.arange(n)[:, None].expand(n, k)
    member = torch.tensor([[int(j) in set(lists[0][i].tolist()) for j in lists[1][i]] for i in range(n)])
    assert torch.equal(contains(sx[0], rows, lists[1]), member)


@pytest.mark.parametrize("name", ["mutual_knn", "cycle_knn", "lcs_knn", "edit_distance_knn"])
def test_scores_do_not_depend_on_the_blocking(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    g = torch.Generator().manual_seed(5)
    x = [torch.randn(400, 8, generator=g) for _ in range(2)]
    y = [torch.tanh(x[0] @ torch.randn(8, 8, generator=g)), torch.randn(400, 4, generator=g)]
    whole = score_layers(name, x, y, k=7).matrix
    monkeypatch.setattr("prh_bench.align.search.BLOCK_BYTES", 4 * 64 * 64)
    monkeypatch.setattr("prh_bench.align.knn.TABLE_BYTES", 4096)
    assert torch.equal(score_layers(name, x, y, k=7).matrix, whole)


MEMORY_PROBE = """
import json, resource, sys, time
import torch
from prh_bench.align import get_metric, summarize_layers
n = int(sys.argv[1])
g = torch.Generator().manual_seed(0)
x = torch.randn(n, 16, generator=g)
y = x + 0.3 * torch.randn(n, 16, generator=g)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
out = {}
for name in ("mutual_knn", "cycle_knn", "lcs_knn"):
    m = get_metric(name)
    p = m.params(k=10)
    sx, sy = summarize_layers(m, [x], **p), summarize_layers(m, [y], **p)
    out[name] = m.pair_scores(sx, sy, **p).item()
    m.pair_scores(sx, [m.permute(s, torch.randperm(n, generator=g)) for s in sy], **p)  # a null draw
out["grew"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
print(json.dumps(out))
"""


def test_the_knn_family_at_an_n_where_n_by_n_would_not_fit() -> None:
    """N = 40,000: an N x N float32 matrix is 6.4 GB, a boolean one 1.6 GB; the whole kNN family (summaries,
    pair stage, a null draw) must stay within 0.5 GiB above the features, in a process of its own."""
    n = 40_000
    done = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, str(n)], capture_output=True, text=True, timeout=900, check=False
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["grew"] < 2**29 < n * n, out
    # y is x plus noise: far above chance (k / (N-1) = 0.00025), and an LCS never exceeds the shared count
    assert 0.3 < out["mutual_knn"] < 1 and 0.1 < out["cycle_knn"] < 1 and 0.1 < out["lcs_knn"] <= out["mutual_knn"]


@pytest.mark.parametrize("name", ["cka", "unbiased_cka"])
@pytest.mark.parametrize("eps", [0.0, 1e-6])
def test_linear_cka_in_feature_space_equals_the_kernel_route(
    name: str, eps: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past KERNEL_MAX_N linear CKA is scored from the features, in float64 from the start: the scores of the
    kernel route on float64 copies of the features (its float32 kernels differ by ~1e-8), nulls included."""
    from prh_bench.align.feature_cka import CentredFeatures

    g = torch.Generator().manual_seed(6)
    n = 300
    x = [torch.randn(n, 5, generator=g) + 3, torch.randn(n, 40, generator=g, dtype=torch.float64)]
    y = [torch.tanh(x[0] @ torch.randn(5, 7, generator=g)), torch.randn(n, 3, generator=g).half()]
    m = get_metric(name)
    p = m.params(eps=eps)
    perm = torch.randperm(n, generator=g)
    x64, y64 = [t.double() for t in x], [t.double() for t in y]
    kernel = (
        score_layers(name, x64, y64, eps=eps).matrix,
        m.pair_scores(summarize_layers(m, x64, **p), [m.permute(s, perm) for s in summarize_layers(m, y64, **p)], **p),
    )
    monkeypatch.setattr("prh_bench.align.kernels.KERNEL_MAX_N", 100)
    monkeypatch.setattr("prh_bench.align.feature_cka.CROSS_BYTES", 8 * 5 * 8)  # y layers one or two at a time
    sx, sy = summarize_layers(m, x, **p), summarize_layers(m, y, **p)
    assert all(isinstance(s, CentredFeatures) for s in sx + sy)
    assert m.summary_nbytes(n, 40, **p) == 8 * n * 41
    features = (score_layers(name, x, y, eps=eps).matrix, m.pair_scores(sx, [m.permute(s, perm) for s in sy], **p))
    for a, b in zip(kernel, features, strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-12)
    with pytest.raises(Exception, match="constant"):
        summarize_layers(m, [torch.ones(n, 3)], **p)


def test_a_metric_that_needs_n_by_n_is_refused_past_the_budget_naming_the_n_that_fits(tmp_path: Path) -> None:
    from prh_bench.errors import BadInput
    from prh_bench.manifest import Prepare
    from prh_bench.score_job import ScoreJob

    from .test_scale import synthetic_cache

    _, members = synthetic_cache(tmp_path, [2, 3])  # N = 50, widths 16
    rbf = get_metric("cka")
    params = rbf.params(kernel="rbf")
    need = (2 + 3) * rbf.summary_nbytes(50, 16, **params)  # both models' kernels, one per layer
    job = ScoreJob(rbf, params, 1, Prepare(), None, tuple(members), budget=need)
    job.check_fits()  # exactly fits
    small = ScoreJob(rbf, params, 1, Prepare(), None, tuple(members), budget=need - 1)
    with pytest.raises(
        BadInput, match=r"cka: the summaries of two models at N=50 take .* at most N=(\d+) samples"
    ) as e:
        small.check_fits()
    fits = int(e.value.args[0].split("at most N=")[1].split()[0])
    assert small.least_nbytes(fits) <= need - 1 < small.least_nbytes(fits + 1)
    knn = get_metric("mutual_knn")  # summaries of N x k: a tiny budget only splits the groups
    ScoreJob(knn, knn.params(k=3), 1, Prepare(), None, tuple(members), budget=1).check_fits()


def test_a_suite_sweeps_n_over_nested_subsets_with_nulls_and_chance_levels(
    tmp_path: Path, isolated_cache: Path
) -> None:
    """sweep.samples: each N is the first N of one seeded order of the data set, so the smaller sets lie inside
    the larger ones; conditions, nulls and the sweep plot (alignment against N, chance k/(N-1) drawn) follow."""
    import pandas as pd

    from .conftest import cli_json, write_yaml

    write_yaml(
        tmp_path / "reg" / "suite.yaml",
        """\
kind: suite
id: n-sweep
version: 1
dataset: glove-words
models: [minilm-l6, glove-6b-50d, minilm-l6-random]
metrics: [{name: mutual_knn, k: 5}]
reference: glove-6b-50d
calibrate: {permutations: 20, pairs: reference}
sweep: {samples: [40, 120, 300], seed: 3}
""",
    )
    out = cli_json("--registry", tmp_path / "reg", "run", "--suite", "n-sweep", "--out", tmp_path / "run")
    side = json.loads((tmp_path / "run" / "run.json").read_text())
    assert [(c["label"], c["n_samples"]) for c in side["conditions"]] == [
        ("glove-words n=40", 40),
        ("glove-words n=120", 120),
        ("glove-words n=300", 300),
    ]
    sweep = pd.read_csv(out["files"]["sweep_mutual_knn"])
    assert list(sweep.n_samples) == [40, 120, 300]
    assert sweep.chance.tolist() == pytest.approx([5 / 39, 5 / 119, 5 / 299])
    assert (tmp_path / "run" / "sweep_mutual_knn.png").stat().st_size > 0
    cal = pd.read_csv(out["files"]["calibration"])
    assert set(cal.condition) == set(sweep.condition) and cal.permutations.eq(20).all()
    # Nested: the words of N = 40 are the first 40 of N = 120's, which are the first 120 of N = 300's.
    from prh_bench.context import RunContext, RunSpec, Target

    ctx = RunContext(RunSpec("n-sweep", str(isolated_cache), (str(tmp_path / "reg"),)))
    ids = [[s.id for s in ctx.samples(Target(condition=i))[1].samples] for i in range(3)]
    assert ids[0] == ids[1][:40] and ids[1] == ids[2][:120] and sorted(ids[2]) != ids[2]  # shuffled, then cut
    assert sorted(ids[2]) == sorted(s.id for s in ctx.dataset(ctx.conditions[2].dataset, None).samples)
    # One extraction serves every N: the smaller points are the first rows of N = 300's features, whose
    # batches held other words too; a text model's features then differ from a direct extraction in the last bits.
    runs = {(mid, r["condition"]): r for mid, m in side["models"].items() for r in m["runs"]}
    for mid in ("minilm-l6", "glove-6b-50d", "minilm-l6-random"):
        # n=40 comes first and extracts n=300 to slice it; n=300 then finds its features stored
        assert [runs[mid, f"glove-words n={n}"]["status"] for n in (40, 120, 300)] == ["sliced", "sliced", "cached"]
    big = ctx.features("minilm-l6", runs["minilm-l6", "glove-words n=300"]["cache_key"])
    small = ctx.features("minilm-l6", runs["minilm-l6", "glove-words n=40"]["cache_key"])
    assert all(torch.equal(s, b[:40]) for s, b in zip(small.tensors, big.tensors, strict=True))
    from prh_bench.features import extract

    m = ctx.models["minilm-l6"]
    direct = extract(
        ctx.registry.plugins.backends[m.backend].load(m, torch.device("cpu")),
        ctx.samples(Target(condition=0))[1],
        m.batch_size,
        progress=False,
    )
    for s, d in zip(small.tensors, direct.tensors, strict=True):
        torch.testing.assert_close(s, d, rtol=1e-4, atol=1e-5)
    again = cli_json("--registry", tmp_path / "reg", "plan", "--suite", "n-sweep")
    assert {r["status"] for r in again["rows"]} == {"cached"}


@pytest.mark.parametrize(
    ("sweep", "message"),
    [
        ("{samples: [40, 40]}", "each entry must be distinct"),
        ("{samples: [3]}", "greater than or equal to 4"),
        ("{samples: [40, 301]}", "sweep.samples: N=301 exceeds the 300 samples of data set 'glove-words'"),
        ("{samples: [5, 40]}", "k must be in [1, N-1] = [1, 4]"),
    ],
)
def test_bad_n_sweeps_are_refused(tmp_path: Path, sweep: str, message: str) -> None:
    from .conftest import cli, write_yaml

    write_yaml(
        tmp_path / "reg" / "suite.yaml",
        f"""\
kind: suite
id: bad-sweep
version: 1
dataset: glove-words
models: [glove-6b-50d, minilm-l6-random]
metrics: [{{name: mutual_knn, k: 5}}]
sweep: {sweep}
""",
    )
    result = cli("--registry", tmp_path / "reg", "run", "--suite", "bad-sweep", "--out", tmp_path / "run")
    assert result.exit_code != 0 and message in result.output, result.output


def test_k_is_a_sweep_axis_and_a_metric_used_twice_is_refused(tmp_path: Path) -> None:
    import pandas as pd

    from .conftest import cli, cli_json, write_yaml

    suite = """\
kind: suite
id: k-sweep
version: 1
dataset: glove-words
models: [glove-6b-50d, minilm-l6-random]
metrics: {metrics}
sweep: {{samples: [100, 300], k: [5, 20]}}
"""
    write_yaml(tmp_path / "reg" / "suite.yaml", suite.format(metrics="[{name: mutual_knn}]"))
    out = cli_json("--registry", tmp_path / "reg", "run", "--suite", "k-sweep", "--out", tmp_path / "run")
    sweep = pd.read_csv(out["files"]["sweep_mutual_knn"])
    assert list(zip(sweep.n_samples, sweep.k, strict=True)) == [(100, 5), (100, 20), (300, 5), (300, 20)]
    assert sweep.chance.tolist() == pytest.approx([5 / 99, 20 / 99, 5 / 299, 20 / 299])
    long = pd.read_csv(tmp_path / "run" / "scores.csv")
    assert {c: json.loads(p)["k"] for c, p in zip(long.condition, long.params, strict=True)} == {
        "glove-words n=100 k=5": 5,
        "glove-words n=100 k=20": 20,
        "glove-words n=300 k=5": 5,
        "glove-words n=300 k=20": 20,
    }
    # Two uses of one metric would write the same files: refused, pointing at the sweep.
    write_yaml(
        tmp_path / "reg" / "suite.yaml", suite.format(metrics="[{name: mutual_knn, k: 5}, {name: mutual_knn, k: 10}]")
    )
    result = cli("--registry", tmp_path / "reg", "run", "--suite", "k-sweep", "--out", tmp_path / "run2")
    assert result.exit_code != 0 and "each metric may appear once; repeated: mutual_knn" in result.output
    write_yaml(tmp_path / "reg" / "suite.yaml", suite.format(metrics="[{name: cka}]"))
    result = cli("--registry", tmp_path / "reg", "run", "--suite", "k-sweep", "--out", tmp_path / "run3")
    assert result.exit_code != 0 and "cka: unknown parameter 'k'" in result.output and "(sweep.k)" in result.output


def test_plan_times_a_large_n_at_small_n_and_extrapolates(monkeypatch: pytest.MonkeyPatch) -> None:
    """`plan` at N = 100,000 must not run the metric at 100,000: it times N = 1,024 and 2,048 and extrapolates each
    stage along the power of N it showed, clamped to linear..quadratic."""
    from prh_bench import plan

    timed = []

    def fake(metric: object, params: dict, n: int, width: int, layers: int) -> plan.Rates:
        timed.append((n, layers))
        return plan.Rates(summary=n**3 * 1e-12, pair=n * 1e-6, null=n**1.5 * 1e-9)  # cubic, linear, 1.5

    monkeypatch.setattr(plan, "_timed_rates", fake)
    rates = plan.measured_rates(get_metric("mutual_knn"), json.dumps({"k": 10}), 100_000, 256, 8)
    assert timed == [(1024, 4), (2048, 4)]
    grow = 100_000 / 2048
    assert rates.summary == pytest.approx(2048**3 * 1e-12 * grow**2)  # clamped to quadratic
    assert rates.pair == pytest.approx(2048 * 1e-6 * grow * 4)  # linear, times (8 / 4)^2 layer pairs
    assert rates.null == pytest.approx(2048**1.5 * 1e-9 * grow**1.5 * 4)


def test_approximate_search_is_an_option_that_leaves_exact_runs_keys_alone(caplog: pytest.LogCaptureFixture) -> None:
    """search: ivf (faiss) is an optional parameter: absent from the parameters (and the stored scores' keys) of
    every run that does not ask for it; its recall against exact search is logged; with nprobe = nlist it scans
    every cell and is exact (up to ties)."""
    import logging

    from prh_bench.align.search import approximate_knn, recall

    m = get_metric("mutual_knn")
    assert m.params() == {"k": 10} and m.params(search="ivf", nprobe=4) == {"k": 10, "search": "ivf", "nprobe": 4}
    with pytest.raises(Exception, match="parameter 'search' must be one of 'exact', 'ivf'"):
        m.params(search="hnsw")
    g = torch.Generator().manual_seed(7)
    x = torch.nn.functional.normalize(torch.randn(2000, 16, generator=g), dim=1)
    y = torch.nn.functional.normalize(x + 0.5 * torch.randn(2000, 16, generator=g), dim=1)
    full = approximate_knn(x, 10, nlist=8, nprobe=8)
    assert recall(x, full) == 1.0 and torch.equal(full.sort(1).values, knn_search(x, 10)[1].sort(1).values)
    coarse = approximate_knn(x, 10, nlist=40, nprobe=1)
    assert 0.2 < recall(x, coarse) < 1.0
    exact = score_layers("mutual_knn", [x], [y], k=10).best
    with caplog.at_level(logging.INFO, logger="prh_bench.progress"):
        approx = score_layers("mutual_knn", [x], [y], k=10, search="ivf", nlist=8, nprobe=8).best
    assert approx == exact
    assert "approximate neighbours (ivf) of a layer of N=2000, D=16: recall 1.0000" in caplog.text
    with pytest.raises(Exception, match="found fewer than k\\+1 = 11 candidates"):
        approximate_knn(x[:200], 10, nlist=100, nprobe=1)


def test_an_approximate_runs_record_holds_its_recall_and_its_effect_on_each_score(tmp_path: Path) -> None:
    """With search: ivf the run record gives each layer's recall on rows searched exactly, and each pair's score
    on those rows from the approximate and the exact lists. At N = 300 the probe is every row, so the first is
    the run's score and the second the exact run's score of the same layer pair."""
    import pandas as pd

    from .conftest import cli_json, write_yaml

    for name, search in (("approx", ", search: ivf, nlist: 7, nprobe: 1"), ("exact", "")):
        write_yaml(
            tmp_path / "reg" / f"{name}.yaml",
            f"""\
kind: suite
id: {name}
version: 1
dataset: glove-words
models: [minilm-l6, glove-6b-50d, minilm-l6-random]
metrics: [{{name: mutual_knn, k: 5{search}}}]
""",
        )
    runs = {
        name: cli_json("--registry", tmp_path / "reg", "run", "--suite", name, "--out", tmp_path / name)
        for name in ("approx", "exact")
    }
    record = {name: json.loads((tmp_path / name / "run.json").read_text())["approximate_search"] for name in runs}
    assert record["exact"] == {"recall": [], "pairs": []}
    recall = pd.DataFrame(record["approx"]["recall"])
    assert len(recall) == 7 + 1 + 7 and recall.rows.eq(300).all()
    assert recall.recall.between(0.2, 1).all() and recall.recall.lt(1).any()  # 1 of 7 cells scanned
    exact = pd.read_csv(runs["exact"]["files"]["scores"]).set_index(["model_x", "model_y", "layer_x", "layer_y"]).score
    pairs = pd.DataFrame(record["approx"]["pairs"])
    assert len(pairs) == 3
    for p in pairs.itertuples():
        assert p.rows == 300 and p.rows_approximate == pytest.approx(p.score, abs=1e-12)
        assert p.rows_exact == pytest.approx(exact[p.model_x, p.model_y, p.layer_x, p.layer_y], abs=1e-12)
    assert (pairs.rows_approximate != pairs.rows_exact).any()


@pytest.mark.parametrize(
    ("suite", "sizes"),
    [("glove-n-scaling", [1000, 4000, 16000, 64000, 100000]), ("glove-n-scaling-lm", [1000, 4000, 16000])],
)
def test_the_n_scaling_suites_can_run_here(suite: str, sizes: list[int]) -> None:
    """The study suites take 25 and 9 minutes (README), too long for CI: their plan proves that every model's
    weights and the 100,000 words are here and every condition resolves; the n-sweep test above runs the same
    machinery on the same models."""
    from .conftest import cli_json

    plan = cli_json("plan", "--suite", suite)
    conditions = [f"glove-words-100k n={n}" for n in sizes]
    assert list(dict.fromkeys(r["condition"] for r in plan["rows"])) == conditions
    largest = f"glove-words-100k n={sizes[-1]}"
    for r in plan["rows"]:  # one extraction, at the largest N; the others are its first rows
        assert r["status"] in (
            {"to extract", "cached"} if r["condition"] == largest else {f"to slice from {largest}", "cached"}
        )
    assert [w["condition"] for w in plan["scoring"]] == conditions and all(w["pairs"] >= 3 for w in plan["scoring"])
