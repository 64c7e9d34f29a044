"""One run's results as one typed object of pandas tables: what a run writes, what a run folder and a results
store load into, and what the leaderboard, baselines, report and figures read. It is also the Python front
door's return value (`prh_bench.run`, `prh_bench.load`):

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
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from ..errors import BadInput
from .consistency import consistency
from .matrices import alignment_matrix, best_pairs, params_keys
from .run_folder import read_table, write_table
from .run_record import RunRecord, read_run_record, write_run_record

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ..align.metric import Metric

#: the tables of a run folder, each NAME.csv (or NAME.parquet when long); `scores` is always written
TABLES = ("scores", "calibration", "model_scores", "probes", "sample_terms")


def _empty() -> pd.DataFrame:
    return pd.DataFrame()


@dataclass(frozen=True)
class Results:
    """A run's record (run.json) and tables. `source` is the run folder, or the results store they were read
    from (then `record.source` names it too)."""

    source: Path
    record: RunRecord
    #: condition, model_x, model_y, layer_x, layer_y, metric, params (a dict: one object per metric and
    #: parameters, shared by its rows), score
    scores: pd.DataFrame
    #: per condition, metric and model pair: its permutation null (empty unless the suite asks for them)
    calibration: pd.DataFrame = field(default_factory=_empty)
    model_scores: pd.DataFrame = field(default_factory=_empty)  # per condition and model: per-sample score means
    probes: pd.DataFrame = field(default_factory=_empty)  # per probe task, data set and model: its score
    #: per condition, metric and sample: each model's term of its score with the reference (uncertainty.py)
    sample_terms: pd.DataFrame = field(default_factory=_empty)

    @classmethod
    def read(cls, folder: str | Path, metrics: Mapping[str, Metric] | None = None) -> Results:
        """A run folder's results, each table checked against its record: conditions with their sample counts,
        and each metric's parameters a JSON object its plugin (in `metrics`, when given) accepts. A table from
        another run or edited by hand is bad input here, not a traceback in a reader."""
        folder = Path(folder)
        record = read_run_record(folder)
        tables = {name: _read_checked(folder, name, record) for name in TABLES}
        scores = tables.pop("scores")
        if scores is None:
            raise BadInput(f"{folder}: no scores table; give a folder written by `prh-bench run`")
        cal = tables["calibration"]
        if cal is not None and not cal.empty and "alpha" not in cal:
            # written before the calibrated score followed calibrated-similarity: not comparable
            raise BadInput(
                f"{folder}: permutation nulls without the calibrated-similarity score (an older run); "
                "run the suite again"
            )
        scores = scores.assign(params=_parsed_params(folder, scores, metrics))
        return cls(folder, record, scores, **{k: _empty() if v is None else v for k, v in tables.items()})

    def write(self, folder: Path) -> dict[str, str]:
        """The run folder's tables and run.json (parameters written as canonical JSON text); their paths."""
        folder.mkdir(parents=True, exist_ok=True)
        files = {}
        for name in TABLES:
            table = getattr(self, name)
            if name == "scores":
                table = table.assign(params=params_keys(table.params))
            elif table.empty:
                continue
            files[name] = str(write_table(table, folder, name))
        files["sidecar"] = str(write_run_record(folder, self.record))
        return files

    @property
    def suite(self) -> str:
        return self.record.suite_id

    @property
    def metrics(self) -> list[str]:
        return list(dict.fromkeys(self.scores.metric))

    @property
    def conditions(self) -> list[str]:
        return [c.label for c in self.record.conditions]

    def n_samples(self, condition: str) -> int:
        n = self.record.n_samples(condition)
        if n is None:
            raise BadInput(
                f"{self.source}: run.json gives no sample count of condition '{condition}'; run the suite again"
            )
        return n

    def params(self, metric: str) -> dict[str, Any]:
        """The parameters `metric` was scored with."""
        rows = self.scores.params[self.scores.metric == metric]
        return dict(rows.iloc[0]) if len(rows) else {}

    @property
    def models(self) -> pd.DataFrame:
        """One row per model and condition: weights, manifest version, status, layers, widest layer, seconds."""
        return pd.DataFrame(
            [
                {
                    "model": mid,
                    "weights": m.weights,
                    "manifest_version": m.manifest_version,
                    "condition": r.condition,
                    "status": r.status,
                    "layers": r.layers,
                    "widest": max(r.widths) if r.widths else None,
                    "seconds": r.seconds,
                    "error": r.error,
                }
                for mid, m in self.record.models.items()
                for r in m.runs
            ]
        )

    def best(self, metric: str | None = None, condition: str | None = None) -> pd.DataFrame:
        """Per model pair: its best layer pair and score (every metric and condition unless named)."""
        rows = self.scores
        if metric is not None or condition is not None:
            rows = self._scores(metric, condition)
        return best_pairs(rows)

    def _scores(self, metric: str | None, condition: str | None) -> pd.DataFrame:
        metric = metric or self.metrics[0]
        condition = condition or self.conditions[0]
        for name, value, known in (("metric", metric, self.metrics), ("condition", condition, self.conditions)):
            if value not in known:
                raise BadInput(f"{self.source}: no {name} {value!r}; it has {known}")
        return self.scores[(self.scores.metric == metric) & (self.scores.condition == condition)]

    def matrix(
        self, metric: str | None = None, condition: str | None = None, models: list[str] | None = None
    ) -> pd.DataFrame:
        """Model x model: each pair's best score over layer pairs (entry [a, b] is metric(b, a), the PRH code's
        orientation); the first metric and condition unless named, every model of the run unless `models`."""
        return alignment_matrix(
            self.best(metric or self.metrics[0], condition),
            metric or self.metrics[0],
            list(self.record.models) if models is None else models,
        )

    def consistency(self, metric: str) -> pd.DataFrame:
        """With several conditions: how alike each one's matrix and ranking is to the first's and the previous
        one's (consistency.py); empty with one condition."""
        if len(self.conditions) < 2:
            return pd.DataFrame()
        return consistency({c: self.matrix(metric, c) for c in self.conditions}, metric, self.record.suite.reference)

    def layers(self, x: str, y: str, metric: str | None = None, condition: str | None = None) -> pd.DataFrame:
        """x's layers (rows, in network order) x y's layers (columns): metric(x layer, y layer). A symmetric
        metric stores a pair once; asked the other way round, its table is transposed."""
        table = self._scores(metric, condition)
        pair = table[(table.model_x == x) & (table.model_y == y)]
        swapped = pair.empty
        if swapped:
            pair = table[(table.model_x == y) & (table.model_y == x)]
        if pair.empty:
            raise BadInput(
                f"{self.source}: no scores of {x} x {y}; models with scores: "
                f"{sorted(set(table.model_x) | set(table.model_y))}"
            )
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
        return pd.DataFrame(
            {
                "layer": grid.index,
                "depth": depth,
                "best_score": grid.max(axis=1).to_numpy(),
                "best_layer_of_" + y: grid.idxmax(axis=1).to_numpy(),
            }
        )

    def plot_layers(self, x: str, y: str, metric: str | None = None, condition: str | None = None) -> Figure:
        """The pair's layer x layer heatmap beside its alignment by depth of x (a matplotlib Figure, made without
        pyplot: a notebook shows it, `fig.savefig(path)` writes it, no backend is switched)."""
        from .figures import layer_pair_figure

        metric, condition = metric or self.metrics[0], condition or self.conditions[0]
        return layer_pair_figure(
            self.layers(x, y, metric, condition),
            self.by_depth(x, y, metric, condition),
            f"{self.suite}: {x} x {y}, {metric} on {condition}",
            metric,
        )


def _read_checked(folder: Path, name: str, record: RunRecord) -> pd.DataFrame | None:
    """A table of the folder whose conditions are all run.json's (with a sample count); None when absent."""
    table = read_table(folder, name)
    if table is None or "condition" not in table:
        return table
    known = {c.label for c in record.conditions if c.n_samples is not None}
    if unknown := sorted(set(table.condition.astype(str)) - known):
        raise BadInput(
            f"{folder / 'run.json'}: field 'conditions': no entry with n_samples for condition "
            f"{unknown[0]!r} of the {name} table (it lists {sorted(known)}); the run folder is incomplete "
            "or mixed: run the suite again"
        )
    return table


def _parsed_params(folder: Path, scores: pd.DataFrame, metrics: Mapping[str, Metric] | None) -> list[dict[str, Any]]:
    """The scores table's parameter column as dicts, each text parsed once and checked by its metric."""
    parsed: dict[tuple[str, str], dict[str, Any]] = {}
    for metric, text in scores[["metric", "params"]].drop_duplicates().itertuples(index=False):
        where = f"{folder}: scores table, field 'params' of metric '{metric}'"
        try:
            params = json.loads(text)
        except (TypeError, ValueError, RecursionError):
            params = None
        if not isinstance(params, dict):
            raise BadInput(f"{where}: expected a JSON object of parameters, got {str(text)[:80]!r}")
        if metrics is not None and metric in metrics:
            try:
                metrics[metric].params(**params)
            except BadInput as exc:
                raise BadInput(f"{where}: {exc}") from None
        parsed[(metric, text)] = params
    return [parsed[key] for key in zip(scores.metric, scores.params, strict=True)]
