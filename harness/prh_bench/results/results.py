"""A run's results as one object of pandas tables: what `prh_bench.run` and `prh_bench.load` return.

    import prh_bench
    res = prh_bench.run("pocket")               # or prh_bench.load("prh-runs/pocket/<time>")
    res.scores                                  # one row per condition, metric, model pair and layer pair
    res.matrix()                                # model x model, best over layer pairs (the first metric)
    res.layers("efficientnet-lite2", "mobilenet-v2")       # that pair's layer x layer scores
    res.by_depth("efficientnet-lite2", "mobilenet-v2")     # per layer of the first: its best match in the second
    res.plot_layers("efficientnet-lite2", "mobilenet-v2")  # both as one figure
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from ..errors import BadInput
from .report import alignment_matrix, best_pairs
from .run_folder import RUN_RECORD, RunRecord, read_run_record, read_run_table

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass(frozen=True)
class Results:
    """The tables of one run folder, read once and checked against its record (run.json)."""

    folder: Path
    record: RunRecord
    scores: pd.DataFrame  # condition, metric, params (a dict), model_x, model_y, layer_x, layer_y, score
    calibration: pd.DataFrame  # per condition, metric and model pair: the permutation null, when the suite has one
    model_scores: pd.DataFrame  # per condition and model: means of per-sample scores (bits per byte)
    probes: pd.DataFrame  # per probe task and model: its score

    @property
    def suite(self) -> str:
        return self.record.suite_id

    @property
    def metrics(self) -> list[str]:
        return list(dict.fromkeys(self.scores.metric))

    @property
    def conditions(self) -> list[str]:
        return [c.label for c in self.record.conditions]

    @property
    def models(self) -> pd.DataFrame:
        """One row per model and condition: weights, manifest version, status, layers, widest layer, seconds."""
        return pd.DataFrame([{"model": mid, "weights": m.weights, "manifest_version": m.manifest_version,
                              "condition": r.condition, "status": r.status, "layers": r.layers,
                              "widest": max(r.widths) if r.widths else None, "seconds": r.seconds, "error": r.error}
                             for mid, m in self.record.models.items() for r in m.runs])

    def _scores(self, metric: str | None, condition: str | None) -> pd.DataFrame:
        metric = metric or self.metrics[0]
        condition = condition or self.conditions[0]
        for name, value, known in (("metric", metric, self.metrics), ("condition", condition, self.conditions)):
            if value not in known:
                raise BadInput(f"{self.folder}: no {name} {value!r}; it has {known}")
        return self.scores[(self.scores.metric == metric) & (self.scores.condition == condition)]

    def matrix(self, metric: str | None = None, condition: str | None = None) -> pd.DataFrame:
        """Model x model: each pair's best score over layer pairs (entry [a, b] is metric(b, a), the PRH code's
        orientation); the first metric and condition unless named."""
        return alignment_matrix(best_pairs(self._scores(metric, condition)), metric or self.metrics[0],
                                list(self.record.models))

    def layers(self, x: str, y: str, metric: str | None = None, condition: str | None = None) -> pd.DataFrame:
        """x's layers (rows, in network order) x y's layers (columns): metric(x layer, y layer). A symmetric
        metric stores a pair once; asked the other way round, its table is transposed."""
        table = self._scores(metric, condition)
        pair = table[(table.model_x == x) & (table.model_y == y)]
        swapped = pair.empty
        if swapped:
            pair = table[(table.model_x == y) & (table.model_y == x)]
        if pair.empty:
            raise BadInput(f"{self.folder}: no scores of {x} x {y}; models with scores: "
                           f"{sorted(set(table.model_x) | set(table.model_y))}")
        grid = pair.pivot(index="layer_x", columns="layer_y", values="score")
        grid = grid.loc[list(dict.fromkeys(pair.layer_x)), list(dict.fromkeys(pair.layer_y))]
        if swapped:
            grid = grid.T
        grid.index.name, grid.columns.name = x, y
        return grid

    def by_depth(self, x: str, y: str, metric: str | None = None, condition: str | None = None) -> pd.DataFrame:
        """Per layer of x, in network order: its relative depth (0 first, 1 last), its best score over y's
        layers and the layer of y that gives it: where in x the alignment with y lives."""
        grid = self.layers(x, y, metric, condition)
        depth = [i / max(1, len(grid) - 1) for i in range(len(grid))]
        return pd.DataFrame({"layer": grid.index, "depth": depth, "best_score": grid.max(axis=1).to_numpy(),
                             "best_layer_of_" + y: grid.idxmax(axis=1).to_numpy()})

    def plot_layers(self, x: str, y: str, metric: str | None = None, condition: str | None = None) -> Figure:
        """The pair's layer x layer heatmap beside its alignment by depth of x (a matplotlib Figure, made without
        pyplot: a notebook shows it, `fig.savefig(path)` writes it, no backend is switched)."""
        from matplotlib.figure import Figure

        grid, depth = self.layers(x, y, metric, condition), self.by_depth(x, y, metric, condition)
        fig = Figure(figsize=(11, 4.5), layout="tight")
        left, right = fig.subplots(1, 2)
        image = left.imshow(grid.to_numpy(float), aspect="auto", cmap="viridis")
        fig.colorbar(image, ax=left)
        left.set_yticks(range(len(grid)), grid.index, fontsize=6)
        left.set_xticks(range(len(grid.columns)), grid.columns, fontsize=6, rotation=90)
        left.set_ylabel(x)
        left.set_xlabel(y)
        right.plot(depth.depth, depth.best_score, marker="o")
        right.set_xlabel(f"relative depth in {x}")
        right.set_ylabel(f"best {metric or self.metrics[0]} over {y}'s layers")
        fig.suptitle(f"{self.suite}: {x} x {y}, {metric or self.metrics[0]} on {condition or self.conditions[0]}")
        return fig


def load(source: str | Path, suite: str | None = None, registry_dirs: tuple[str | Path, ...] = ()) -> Results:
    """A run folder's results; or a results store's (`prh-bench merge`) for `suite`: its first condition, the
    suite's models and those verifications added to it."""
    source = Path(source)
    if not (source / RUN_RECORD).is_file():
        if suite is None:
            raise BadInput(f"{source}: not a run folder (no {RUN_RECORD}); a results store needs suite=...")
        from ..manager import load_plugins
        from ..manifest import SuiteManifest
        from ..registry import Registry
        from .pairs import run_folder_from_store

        registry = Registry.load(load_plugins(), [Path(d) for d in registry_dirs])
        source = run_folder_from_store(registry, registry.get(suite, SuiteManifest), source,
                                       Path(tempfile.mkdtemp(prefix="prh-results-")) / suite)
    record = read_run_record(source)
    tables = {}
    for name in ("scores", "model_scores", "probes"):
        table = read_run_table(source, name, record)
        tables[name] = pd.DataFrame() if table is None else table
    if "params" in tables["scores"]:
        tables["scores"]["params"] = [json.loads(p) for p in tables["scores"]["params"]]
    calibration = source / "calibration.csv"
    return Results(source, record, tables["scores"],
                   pd.read_csv(calibration) if calibration.exists() else pd.DataFrame(), tables["model_scores"],
                   tables["probes"])


def run(suite: str, *, registry_dirs: tuple[str | Path, ...] = (), cache: str | Path | None = None,
        out: str | Path | None = None, progress: bool = False, **options: Any) -> Results:
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
    result = run_suite(Registry.load(load_plugins(), dirs), suite, FeatureCache(Path(cache) if cache else cache_root()),
                       progress=progress, registry_dirs=dirs, **options)
    folder = Path(out) if out is not None else new_run_dir(suite_runs(suite))
    write_run(result, folder)
    return load(folder)
