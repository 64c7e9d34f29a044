"""Scale-out: scoring in memory-budgeted groups gives the scores of one group, summary-size estimates are
honest, and the Ray executor gives exactly the local executor's results."""

from __future__ import annotations

import dataclasses
import os
import subprocess
from pathlib import Path

import pytest
import torch

from prh_bench.align import METRICS, get_metric
from prh_bench.features import FeatureCache, Features
from prh_bench.manifest import Calibration, Prepare
from prh_bench.pair_cache import PairCache
from prh_bench.score_job import Member, ScoreJob
from prh_bench.scoring import collect, run_tiles

from .test_faults import command, registry

pytestmark = pytest.mark.slow  # runs models end to end, or kills, races or spawns processes


def nbytes(obj: object) -> int:
    """Bytes of the tensors inside a summary (dataclass fields, tuples of tensors)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, (tuple, list)):
        return sum(nbytes(o) for o in obj)
    if dataclasses.is_dataclass(obj):
        return sum(nbytes(getattr(obj, f.name)) for f in dataclasses.fields(obj))
    return 0


PARAMS = {"svcca": {"dims": 5}, "linear_regression": {"folds": 3}, "soft_matching": {}, "permutation": {}}


@pytest.mark.parametrize("name", METRICS)
def test_summary_size_estimate_is_within_2x_of_the_real_size(name: str) -> None:
    m = get_metric(name)
    params = m.params(**PARAMS.get(name, {}))
    n, d = 96, 40
    x = torch.nn.functional.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(0)), dim=1)
    real = nbytes(m.summarize(x, **params))
    assert 0.5 <= m.summary_nbytes(n, d, **params) / real <= 2.0


def synthetic_cache(root: Path, layers: list[int]) -> tuple[FeatureCache, list[Member]]:
    """Models with `layers[i]` layers of related features (a shared signal plus noise), stored in a cache."""
    cache, members = FeatureCache(root), []
    g = torch.Generator().manual_seed(1)
    base = torch.randn(50, 12, generator=g)
    for i, count in enumerate(layers):
        tensors = [
            base @ torch.randn(12, 16, generator=g) + 0.5 * torch.randn(50, 16, generator=g) for _ in range(count)
        ]
        key = f"{i:064d}"
        cache.save(f"m{i}", key, Features([f"l{j}" for j in range(count)], tensors), {})
        members.append(Member(f"m{i}", key, cache.info(f"m{i}", key)))
    return cache, members


@pytest.mark.parametrize("name", ["mutual_knn", "cka", "cknna", "linear_regression"])
def test_scores_in_many_small_groups_equal_those_of_one_group(tmp_path: Path, name: str) -> None:
    cache, members = synthetic_cache(tmp_path, [2, 3, 1, 2, 3])
    metric = get_metric(name)
    params = metric.params(**({"k": 5} if "knn" in name else {"folds": 3} if name == "linear_regression" else {}))
    jobs = {}
    loads = {}
    for budget in (2**30, 1):  # one group of five; five groups of one
        job = ScoreJob(metric, params, 1, Prepare(), Calibration(permutations=5), tuple(members), budget)
        store = PairCache(tmp_path / f"b{budget}")
        loads[budget] = []
        done = run_tiles(
            job, store, lambda m, seen=loads[budget]: seen.append(m.id) or cache.load(m.id, m.key), job.tiles()
        )
        assert done.computed == 10
        jobs[budget] = (job, collect(job, store))
    (one, big), (many, small) = jobs[2**30], jobs[1]
    assert len(one.groups) == 1 and len(many.groups) == 5 and len(many.tiles()) == 15
    # Features are read once per group per row that needs it, and a row's last group carries over to the next
    # row: 5 + 3 + 2 + 1 + 0 reads for five groups of one (15 without the carry-over). Metrics that keep their
    # summaries in the cache read each model's features once.
    assert len(loads[2**30]) == 5 and len(loads[1]) == (5 if name == "mutual_knn" else 11)
    pairs = [(a.id, b.id) for a, b in one.pairs()]
    assert pairs == [(a.id, b.id) for a, b in many.pairs()]
    assert len(pairs) == (20 if name in ("linear_regression", "cknna") else 10)
    for a, b in pairs:
        x, y = big.pair(a, b), small.pair(a, b)
        assert x.shape == y.shape and not x.isnan().any()
        if name.endswith("_knn"):  # neighbour counts are exact: equal whatever the batching
            assert torch.equal(x, y)
        else:  # float64 sums in another order
            torch.testing.assert_close(x, y, rtol=0, atol=1e-12)
    assert [(r["model_x"], r["model_y"]) for r in big.calibration()] == pairs


@pytest.mark.parametrize("name", ["mutual_knn", "cycle_knn", "cka", "cknna", "procrustes"])
def test_a_model_added_to_a_scored_suite_costs_its_own_pairs_only(tmp_path: Path, name: str) -> None:
    """Twelve models scored, then a thirteenth: 12 pairs computed, the rest read, and every score equal to a
    from-scratch run of all thirteen (bitwise for count metrics, within 1e-12 for float64 ones). Removing a
    model and running again computes nothing; nor does a suite with the same models in another order."""
    cache, members = synthetic_cache(tmp_path, [1, 2, 3, 2, 1, 3, 2, 1, 2, 3, 1, 2, 2])
    metric = get_metric(name)
    params = metric.params(**({"k": 5} if "knn" in name else {}))
    nulls = Calibration(permutations=4)

    def run(models: list[Member], root: Path, budget: int = 2**30) -> tuple[ScoreJob, object, object]:
        job = ScoreJob(metric, params, 1, Prepare(), nulls, tuple(models), budget)
        done = run_tiles(job, PairCache(root), lambda m: cache.load(m.id, m.key), job.tiles())
        return job, done, collect(job, PairCache(root))

    _, first, _ = run(members[:12], tmp_path / "grown")
    assert first.computed == 66
    job, added, grown = run(members, tmp_path / "grown", budget=20_000)  # the budget may regroup: no matter
    assert len(job.groups) > 1 and added.computed == 12
    assert added.nulls_computed == (12 if metric.symmetric else 24)
    _, scratch_done, scratch = run(members, tmp_path / "scratch")
    assert scratch_done.computed == 78
    for a, b in job.pairs():
        x, y = grown.pair(a.id, b.id), scratch.pair(a.id, b.id)
        if metric.name.endswith("_knn"):
            assert torch.equal(x, y), (a.id, b.id)
        else:
            torch.testing.assert_close(x, y, rtol=0, atol=1e-12)
    exact = 0 if metric.name.endswith("_knn") else 1e-12
    for x, y in zip(grown.calibration(), scratch.calibration(), strict=True):
        assert x.keys() == y.keys() and all(x[k] == pytest.approx(y[k], abs=exact) for k in x)
    _, removed, _ = run(members[1:], tmp_path / "grown")
    _, reordered, _ = run(members[::-1], tmp_path / "grown")
    assert removed.computed == 0 and reordered.computed == 0


def test_memory_budget_bounds_the_groups(tmp_path: Path) -> None:
    _, members = synthetic_cache(tmp_path, [3] * 6)
    cka = get_metric("cka")
    per_model = 3 * (cka.summary_nbytes(50, 16) + cka.work_nbytes(50, 16))
    job = ScoreJob(cka, cka.params(), 1, Prepare(), None, tuple(members), budget=2 * (2 * per_model))
    assert [len(g) for g in job.groups] == [2, 2, 2]  # half the budget per group: two groups in memory at once
    concat = dataclasses.replace(job, prepare=Prepare(concat_layers=True))
    assert concat.layers(members[0]) == 4 and concat.summary_nbytes(members[0]) == 4 * per_model / 3


def test_ray_executor_equals_the_local_executor(tmp_path: Path) -> None:
    """One torch thread per task: on 2 cores Ray runs two tile tasks at a time, writing into one pair-store
    folder at once (before the per-folder writers lock, a sweep deleted another task's file: no results)."""
    pytest.importorskip("ray")
    reg = registry(tmp_path / "reg")
    outs = {}
    for executor in ("local", "ray"):
        env = os.environ | {
            "PRH_BENCH_CACHE": str(tmp_path / f"cache-{executor}"),
            "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
            "OMP_NUM_THREADS": "1",
        }
        out = tmp_path / executor
        cmd = command(reg, out, "--executor", executor)  # the fault tests' run, on this executor
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
        assert done.returncode == 0, done.stderr
        outs[executor] = (out / "scores.csv").read_text()
        pairs = list((tmp_path / f"cache-{executor}" / "pairs").rglob("*.safetensors"))
        assert len(pairs) == 9  # three pairs per metric (CKA in 3 groups: 6 tiles, each a Ray task)
    assert outs["ray"] == outs["local"]


def test_pair_keys_change_with_everything_a_score_depends_on(tmp_path: Path) -> None:
    from prh_bench.align.knn import MutualKNN

    _, members = synthetic_cache(tmp_path, [1, 1])
    knn = get_metric("mutual_knn")
    job = ScoreJob(knn, knn.params(k=5), 1, Prepare(), None, tuple(members), 2**30)
    a, b = members
    key = job.pair_key(a, b)
    assert job.pair_key(b, a) == key

    class EditedKNN(MutualKNN):  # the same metric whose code lives elsewhere (as after an edit)
        pass

    other_features = dataclasses.replace(members[1], info=dataclasses.replace(members[1].info, digest="0" * 64))
    variants = [
        dataclasses.replace(job, params=knn.params(k=6)),
        dataclasses.replace(job, version=2),
        dataclasses.replace(job, prepare=Prepare(clamp_quantile=0.9)),
        dataclasses.replace(job, prepare=Prepare(clamp="paper")),
        dataclasses.replace(job, prepare=Prepare(clamp="paper_exact")),
        dataclasses.replace(job, metric=EditedKNN()),
    ]
    assert dataclasses.replace(job).pair_key(a, b) == key
    assert dataclasses.replace(job, reference="m0", calibrate=Calibration(permutations=3)).pair_key(a, b) == key
    keys = [v.pair_key(a, b) for v in variants] + [job.pair_key(a, other_features), key]
    assert len(set(keys)) == len(keys)
    calibrated = dataclasses.replace(job, calibrate=Calibration(permutations=3))
    null_keys = [
        calibrated.null_key(a, b),
        calibrated.null_key(b, a),
        calibrated.null_key(a, other_features),
        dataclasses.replace(calibrated, calibrate=Calibration(permutations=3, alpha=0.1)).null_key(a, b),
        dataclasses.replace(calibrated, calibrate=Calibration(permutations=4)).null_key(a, b),
        dataclasses.replace(calibrated, params=knn.params(k=6)).null_key(a, b),
    ]
    assert len(set(null_keys)) == len(null_keys)
