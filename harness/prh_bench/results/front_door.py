"""The Python front door: run a suite or load stored results, as Results (results.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import BadInput
from .results import Results
from .run_folder import RUN_RECORD


def load(source: str | Path, suite: str | None = None, registry_dirs: tuple[str | Path, ...] = ()) -> Results:
    """A run folder's results; or a results store's (`prh-bench merge`) for `suite`: its first condition, the
    suite's models and those verifications added to it."""
    source = Path(source)
    if (source / RUN_RECORD).is_file():
        return Results.read(source)
    if suite is None:
        raise BadInput(f"{source}: not a run folder (no {RUN_RECORD}); a results store needs suite=...")
    from ..manager import load_plugins  # a store needs the registry (a run folder does not)
    from ..manifest import SuiteManifest
    from ..registry import Registry
    from .store_results import store_results

    registry = Registry.load(load_plugins(), [Path(d) for d in registry_dirs])
    return store_results(registry, registry.get(suite, SuiteManifest), source)


def run(
    suite: str,
    *,
    registry_dirs: tuple[str | Path, ...] = (),
    cache: str | Path | None = None,
    out: str | Path | None = None,
    progress: bool = False,
    **options: Any,
) -> Results:
    """Run a suite as `prh-bench run` does (features from the cache or extracted, every pair scored), write its
    run folder (`out`, default prh-runs/SUITE/TIME) and return its results. `options`: device, max_samples,
    force, budget_gib, extra_models (models beside the suite's own)."""
    from ..features import FeatureCache, cache_root
    from ..manager import load_plugins
    from ..registry import Registry
    from ..runner import run_suite
    from .report import write_run
    from .run_folder import new_run_dir, suite_runs

    dirs = tuple(Path(d) for d in registry_dirs)
    result = run_suite(
        Registry.load(load_plugins(), dirs),
        suite,
        FeatureCache(Path(cache) if cache else cache_root()),
        progress=progress,
        registry_dirs=dirs,
        **options,
    )
    folder = Path(out) if out is not None else new_run_dir(suite_runs(suite))
    write_run(result, folder)
    return Results.read(folder)
