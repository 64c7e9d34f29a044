"""What a suite would do, without running it: per model and condition, cached or to extract, whether its
weights can be had here, and how much feature storage it needs."""

from __future__ import annotations

import pandas as pd

from .context import apply_transform, load_samples, suite_conditions
from .errors import BadInput, PrhBenchError
from .features import FeatureCache, model_feature_key
from .manifest import ModelManifest, SuiteManifest
from .registry import Registry


def weights_status(registry: Registry, m: ModelManifest) -> str:
    """'local', 'download' (hub or URL, not cached yet), or 'unavailable: why', from the backend when it can
    tell ('unknown' otherwise)."""
    check = getattr(registry.plugins.backends[m.backend], "weights_status", None)
    return check(m) if check is not None else "unknown"


def feature_widths(registry: Registry, m: ModelManifest) -> list[int] | None:
    widths = getattr(registry.plugins.backends[m.backend], "feature_widths", None)
    try:
        return widths(m) if widths is not None else None
    except Exception:  # a width estimate must never break a plan
        return None


def plan_suite(registry: Registry, suite_id: str, cache: FeatureCache, max_samples: int | None = None) -> pd.DataFrame:
    suite = registry.get(suite_id, SuiteManifest)
    assert isinstance(suite, SuiteManifest)
    models = registry.suite_models(suite)
    weights = {m.id: weights_status(registry, m) for m in models}
    widths = {m.id: feature_widths(registry, m) for m in models}
    rows = []
    for cond in suite_conditions(registry, suite):
        try:
            samples = apply_transform(load_samples(registry, cond.dataset, max_samples or suite.max_samples), cond)
            n, data_note = len(samples), ""
        except (BadInput, PrhBenchError) as exc:
            samples, data_note = None, f"dataset unavailable: {exc}"
            n = cond.dataset.options.get("limit") or cond.dataset.options.get("count")
        for m in models:
            if samples is not None:
                key, _ = model_feature_key(registry.plugins.backends[m.backend], m, cond.dataset, samples)
                cached = cache.path(m.id, key).exists()
                status = "cached" if cached else ("to extract" if not weights[m.id].startswith("unavailable")
                                                  else "weights unavailable here")
            else:
                status = "dataset unavailable"
            w = widths[m.id]
            mb = n * sum(w) * 4 / 2**20 if (w and n) else None
            rows.append({"condition": cond.label, "model": m.id, "status": status, "weights": weights[m.id],
                         "layers": len(w) if w else None, "feature_MiB": mb, "note": data_note})
    return pd.DataFrame(rows)
