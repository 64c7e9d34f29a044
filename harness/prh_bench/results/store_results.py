"""A results store (`prh-bench merge`) loaded as one suite's Results: its first condition's records under the
suite's metrics, parameters and preparation, of the suite's models and those verifications added to it, checked
against the registry's versions. Nothing is written: the leaderboard reads them as it reads a run's."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from ..errors import BadInput
from ..manifest import SuiteManifest
from ..registry import Registry
from .ledger import verified_models
from .matrices import params_key
from .pair_records import ModelRef, scan, suite_metrics
from .results import Results
from .run_record import ConditionEntry, MetricEntry, ModelEntry, RunRecord


def store_results(registry: Registry, suite: SuiteManifest, store: Path, extra: Iterable[str] = ()) -> Results:
    """The suite's results in `store`: its first condition, its models, those verified for it (the store's
    ledger) and the `extra` ones. A model without records in the store has no runs in the record."""
    from ..context import suite_conditions

    cond = suite_conditions(registry, suite)[0]
    models = {m.id: m for m in registry.suite_models(suite, [*verified_models(store, suite.id), *extra])}
    wanted = suite_metrics(registry, suite, cond)
    prepare = params_key(suite.prepare.model_dump(mode="json"))
    rows, nulls, seen = [], [], dict[str, ModelRef]()
    n_samples = None
    for rec, path in scan(store).values():
        key = rec.metric_key()
        if (
            rec.condition.label != cond.label
            or rec.condition.dataset != cond.dataset.id
            or key not in wanted
            or params_key(rec.prepare) != prepare
            or not {rec.model_x.id, rec.model_y.id} <= set(models)
        ):
            continue
        _, params, version = wanted[key]
        if rec.metric_version != version:
            raise BadInput(f"{path}: {rec.metric} version {rec.metric_version}, but the registry's is {version}")
        if rec.condition.dataset_version != cond.dataset.version:
            raise BadInput(
                f"{path}: dataset {cond.dataset.id} version {rec.condition.dataset_version}, but the "
                f"registry's is {cond.dataset.version}"
            )
        for ref in (rec.model_x, rec.model_y):
            if (old := seen.setdefault(ref.id, ref)) != ref:
                raise BadInput(
                    f"{store} holds results of '{ref.id}' from different features or manifest versions "
                    f"({old.features_sha256[:12]} v{old.manifest_version} vs {ref.features_sha256[:12]} "
                    f"v{ref.manifest_version}); merge results of one version only"
                )
            if ref.manifest_version != models[ref.id].version:
                raise BadInput(
                    f"{path}: '{ref.id}' manifest version {ref.manifest_version}, but the registry's is "
                    f"{models[ref.id].version}"
                )
        n_samples = rec.condition.n_samples
        rows += [
            {
                "condition": cond.label,
                "model_x": rec.model_x.id,
                "model_y": rec.model_y.id,
                "layer_x": lx,
                "layer_y": ly,
                "metric": rec.metric,
                "params": params,
                "score": rec.scores[i][j],
            }
            for i, lx in enumerate(rec.model_x.layers)
            for j, ly in enumerate(rec.model_y.layers)
        ]
        if rec.calibration is not None:
            nulls.append({**rec.calibration.model_dump(), "condition": cond.label})
    if not rows:
        raise BadInput(
            f"{store} holds no results of suite '{suite.id}' (condition '{cond.label}', its metrics, "
            "preparation and models)"
        )
    record = RunRecord(
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        source=str(store),
        suite=suite,
        conditions=[ConditionEntry(label=cond.label, dataset=cond.dataset, n_samples=n_samples)],
        models={mid: ModelEntry.of(m) for mid, m in models.items()},
        metrics={u.name: MetricEntry(version=registry.get(u.name).version) for u in suite.metrics},
    )
    return Results(store, record, pd.DataFrame(rows), calibration=pd.DataFrame(nulls))
