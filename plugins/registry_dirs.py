"""The harness's own manifests: the top-level registry/ folder (installed as prh_bench/registry)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from prh_bench.plugin import hookimpl


def builtin_registry() -> Path:
    spec = importlib.util.find_spec("prh_bench.registry")
    if spec is not None and spec.submodule_search_locations:  # a wheel install
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(importlib.util.find_spec("prh_bench").origin).resolve().parents[2] / "registry"  # a source checkout


@hookimpl
def prh_manifest_dirs() -> list[Path]:
    return [builtin_registry()]
