"""Built-in alignment metrics (their kernels live in prh_bench.align)."""

from __future__ import annotations

from prh_bench.plugin import METRICS, Metric, get_metric, hookimpl


@hookimpl
def prh_metrics() -> dict[str, Metric]:
    return {name: get_metric(name) for name in METRICS}
