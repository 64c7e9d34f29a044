"""A vision78-sized zoo end to end: the full matrix, adding model 79, and the leaderboard, side by side.

    python benchmarks/bench_zoo.py              # 78 + 1 models, N = 1000 (about 10 min on 2 CPU cores)
    python benchmarks/bench_zoo.py --quick      # 20 + 1 models, N = 500

The 78 models have the layer counts and widths of the vision78 suite's models (their backends report them
without weights: a forward pass on the meta device). Their features are random (a shared latent seen through
random maps plus noise, float32) and are written into a throwaway cache under the exact keys `prh-bench run`
computes for them, so the run reads them as cached extractions. Model 79 has the widths of a ViT-B/16 (12 x 768).

Each step runs `prh-bench` itself in a fresh process (its CLI, as a user types it) and the table gives its wall
time, its peak memory (max RSS of that process) and what it computed, counted from the run's record:

1. run the 78-model suite (mutual_knn, k = 10, nulls of the reference's pairs, R = 20) from a cache holding
   only the features;
2. run the 79-model suite on the same cache: one model's pairs and nulls to compute;
3. `prh-bench leaderboard` of the 79-model run: tables, heatmap, MDS map, page.

Then, through the engine's API on the same features, where the full matrix's time goes: preparation (clamp and
L2 normalisation), per-layer summaries, and the pair stage.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from fresh_process import in_fresh_process

ADDED = [768] * 12  # model 79: a ViT-B/16's twelve blocks


def vision78_widths() -> dict[str, list[int]]:
    from prh_bench.manager import load_plugins
    from prh_bench.manifest import SuiteManifest
    from prh_bench.plan import feature_widths
    from prh_bench.registry import Registry

    reg = Registry.load(load_plugins())
    suite = reg.get("vision78", SuiteManifest)
    return {m.id: feature_widths(reg, m) or [] for m in reg.suite_models(suite)}


def write_registry(root: Path, widths: list[list[int]], n: int) -> None:
    """Manifests of the synthetic zoo: a noise data set of n samples, one model per width list (random weights:
    nothing is ever loaded, the features are in the cache), and the suites of the first 78 and of all."""
    root.mkdir(parents=True)
    (root / "data.yaml").write_text(
        f"kind: dataset\nid: zoo-noise\nversion: 1\nloader: noise_images\nmodality: vision\n"
        f"options: {{count: {n}, size: 8, seed: 0}}\n"
    )
    for i in range(len(widths)):
        tag = "[zoo-all]" if i == len(widths) - 1 else "[zoo-all, zoo-first]"
        (root / f"z{i:02d}.yaml").write_text(
            f"kind: model\nid: z{i:02d}\nversion: 1\nbackend: timm\nsource: resnet18\n"
            f"modality: vision\nweights: {{random: {i}}}\ntags: {tag}\n"
        )
    for suite, tag in (("zoo-first", "zoo-first"), ("zoo-all", "zoo-all")):
        (root / f"{suite}.yaml").write_text(
            f"kind: suite\nid: {suite}\nversion: 1\ndataset: zoo-noise\nmodels: {{tags: [{tag}]}}\n"
            "metrics: [{name: mutual_knn, k: 10}]\nreference: z00\ncalibrate: {permutations: 20, pairs: reference}\n"
        )


def write_features(registry_dir: Path, cache_root: Path, widths: list[list[int]]) -> None:
    """Random features for every model, stored under the key a run computes for it."""
    from prh_bench.context import load_samples
    from prh_bench.features import FeatureCache, Features, model_feature_key
    from prh_bench.manager import load_plugins
    from prh_bench.registry import Registry

    reg = Registry.load(load_plugins(), [registry_dir])
    ds = reg.get("zoo-noise")
    samples = load_samples(reg, ds, None)
    n = len(samples)
    latent = torch.randn(n, 64, generator=torch.Generator().manual_seed(0))
    cache = FeatureCache(cache_root)
    for i, ws in enumerate(widths):
        m = reg.get(f"z{i:02d}")
        key, doc = model_feature_key(reg.plugins.backends[m.backend], m, ds, samples)
        g = torch.Generator().manual_seed(i + 1)
        layers = [torch.relu(latent @ torch.randn(64, w, generator=g) + torch.randn(n, w, generator=g)) for w in ws]
        cache.save(m.id, key, Features([f"layer{j}" for j in range(len(ws))], layers), doc)


def cli_step(registry_dir: str, cache_root: str, args: list[str]) -> tuple[float, float]:
    """Seconds and peak RSS (MiB) of one prh-bench command in this (fresh) process."""
    import contextlib
    import io

    os.environ["PRH_BENCH_CACHE"] = cache_root
    from prh_bench.cli import main

    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # the tables it prints; errors still show
        main(["--quiet", "--registry", registry_dir, *args], standalone_mode=False)
    return time.perf_counter() - t0, peak_rss_mib()


def peak_rss_mib() -> float:
    """This process's high-water resident memory (VmHWM: unlike ru_maxrss it does not carry over the
    spawning parent's peak across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed_matrix(
    feats: dict[str, list[torch.Tensor]], metric: str, clock: Callable[[], float] = time.perf_counter
) -> dict[str, float]:
    """Seconds of preparation, summaries and pair stage of every model pair through the engine's API, features
    in memory (`clock` synchronises a GPU first where there is one)."""
    from prh_bench.align import get_metric, prepare, summarize_layers
    from prh_bench.align.pair_batches import score_pairs

    m = get_metric(metric)
    p = m.params(**({"k": 10} if metric == "mutual_knn" else {}))
    t0 = clock()
    prepared = {k: prepare(v) for k, v in feats.items()}
    t1 = clock()
    summaries = {k: summarize_layers(m, v, **p) for k, v in prepared.items()}
    t2 = clock()
    ids = list(summaries)
    score_pairs(m, summaries, [(a, b) for i, a in enumerate(ids) for b in ids[i + 1 :]], p)
    t3 = clock()
    return {"prepare": t1 - t0, "summaries": t2 - t1, "pairs": t3 - t2}


def engine_split(registry_dir: str, cache_root: str, n_models: int) -> dict[str, float]:
    """`timed_matrix` of the cached zoo, mutual_knn."""
    from prh_bench.features import FeatureCache

    cache = FeatureCache(Path(cache_root))
    feats = {}
    for i in range(n_models):
        entry = next((Path(cache_root) / "features" / f"z{i:02d}").glob("*.safetensors"))
        feats[f"z{i:02d}"] = cache.load(f"z{i:02d}", entry.stem).tensors
    return timed_matrix(feats, "mutual_knn")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="20 + 1 models, N = 500")
    ap.add_argument("--keep", type=Path, help="Keep the registry, cache and run folders here.")
    args = ap.parse_args()
    widths = list(vision78_widths().values())
    n = 1000
    if args.quick:
        widths, n = widths[::4][:20], 500
    zoo = [*widths, ADDED]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; {len(widths)} models with vision78's layer "
        f"widths ({sum(map(len, widths))} layers, {sum(map(sum, widths)) * n * 4 / 2**30:.2f} GiB of float32 "
        f"features at N = {n}), then model {len(zoo)} ({len(ADDED)} x {ADDED[0]})\n"
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        reg, cache = root / "registry", root / "cache"
        write_registry(reg, zoo, n)
        t0 = time.perf_counter()
        write_features(reg, cache, zoo)
        print(f"features written to the cache in {time.perf_counter() - t0:.0f} s\n")
        steps = [
            ("full matrix, 78 models", ["run", "--suite", "zoo-first", "--out", str(root / "run78")], root / "run78"),
            ("add model 79", ["run", "--suite", "zoo-all", "--out", str(root / "run79")], root / "run79"),
            (
                "leaderboard and page",
                ["leaderboard", "--suite", "zoo-all", "--run", str(root / "run79"), "--out", str(root / "board")],
                None,
            ),
        ]
        rows = []
        for name, cmd, run_dir in steps:
            seconds, peak = in_fresh_process(cli_step, str(reg), str(cache), cmd)
            work, split = "", ""
            if run_dir is not None:
                side = json.loads((run_dir / "run.json").read_text())
                w, t = side["pair_work"][0], side["seconds"]
                work = (
                    f"{w['pairs_computed']} of {w['pairs']} pairs, {w['nulls_computed']} of {w['nulls']} nulls computed"
                )
                split = (
                    f"data {t['load_data']:.1f}, features {t['features']:.1f}, scoring {t['scoring']:.1f}, rest "
                    f"(imports, run folder) {seconds - sum(t.values()):.1f}"
                )
            rows.append((name, seconds, peak, work, split))
        print(f"{'step':26s} {'seconds':>8s} {'peak MiB':>9s}  work")
        for name, seconds, peak, work, split in rows:
            print(f"{name:26s} {seconds:8.1f} {peak:9.0f}  {work}" + (f"\n{'':46s}seconds: {split}" if split else ""))
        print(
            f"\nadd one model / full matrix: {rows[1][1] / rows[0][1]:.3f} (1/{rows[0][1] / rows[1][1]:.0f}) end to end"
        )
        page = root / "board" / "index.html"
        print(
            f"page: {page.stat().st_size / 1024:.0f} KiB; figures: "
            + ", ".join(f"{p.name} {p.stat().st_size / 1024:.0f} KiB" for p in sorted((root / "board").glob("*.png")))
        )
        split = in_fresh_process(engine_split, str(reg), str(cache), len(widths))
        total = sum(split.values())
        print(
            f"\nfull matrix through the engine's API, features in memory: {total:.1f} s = "
            + ", ".join(f"{k} {v:.1f} s ({v / total:.0%})" for k, v in split.items())
        )


if __name__ == "__main__":
    main()
