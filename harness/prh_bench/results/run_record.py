"""The typed record of a run (run.json): what ran (the suite, its conditions, the models with their outcomes,
metric versions), where and how long. The report writes it, every reader loads it through `read_run_record`:
one schema with a format version, and a migration for records written before it had one."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from ..errors import BadInput
from ..manifest import DatasetManifest, ModelManifest, SuiteManifest
from .documents import first_problem, read_json
from .run_folder import RUN_RECORD

#: 1: no format field (before 2026-12); 2: the format field and the pair work of each job
RUN_FORMAT = 2


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelRun(_Record):
    condition: str
    status: Literal["cached", "extracted", "sliced", "failed"]
    cache_key: str = ""
    layers: int = 0
    widths: list[int] = []  # each layer's feature width (a run before 2026-12-02 lacks them)
    seconds: float = 0.0
    error: str = ""


class ModelEntry(_Record):
    manifest_id: str | None = None  # the registry id ('ID' of a revision sweep's 'ID@REVISION'); format 1 lacks it
    manifest_version: int
    revision: str | None = None
    weights: str = ""
    runs: list[ModelRun] = []

    @classmethod
    def of(cls, manifest: ModelManifest, runs: list[ModelRun] | None = None) -> ModelEntry:
        """A model's entry from its manifest (and what its runs did)."""
        return cls(
            manifest_id=manifest.manifest_id,
            manifest_version=manifest.version,
            revision=manifest.revision,
            weights=manifest.weights_label,
            runs=runs or [],
        )

    def run_under(self, condition: str) -> ModelRun | None:
        return next((r for r in self.runs if r.condition == condition), None)


class ConditionEntry(_Record):
    label: str
    dataset: DatasetManifest
    transform: str | None = None
    level: float | None = None
    k: int | None = None  # a sweep of k's value here
    samples: int | None = None  # a sweep of N's value here
    n_samples: int | None = None


class MetricEntry(_Record):
    version: int


class HarnessEntry(_Record):
    prh_bench: str
    python: str = ""
    platform: str = ""
    torch_threads: int | None = None  # CPU scores depend on it in the last bits


class PairWork(_Record):
    """One condition and metric of a run: its model pairs and permutation nulls, and how many were computed
    (the rest were read from the cache)."""

    condition: str
    metric: str
    pairs: int
    pairs_computed: int
    nulls: int
    nulls_computed: int


class LayerRecall(_Record):
    """With `search: ivf`: a layer's recall of the exact neighbours on the rows its summary searched exactly."""

    condition: str
    metric: str
    model: str
    layer: str
    rows: int
    recall: float


class ApproximatePair(_Record):
    """With `search: ivf`: a pair's score at its best layer pair, and on the exactly searched rows its score
    from the approximate and from the exact neighbour lists."""

    condition: str
    metric: str
    model_x: str
    model_y: str
    layer_x: str
    layer_y: str
    score: float
    rows: int
    rows_approximate: float
    rows_exact: float


class ApproximateSearch(_Record):
    recall: list[LayerRecall] = []
    pairs: list[ApproximatePair] = []


class RunRecord(_Record):
    """run.json. A record built from a results store instead of a run names the store in `source`."""

    format: int = RUN_FORMAT
    created: str | None = None
    harness: HarnessEntry | None = None
    libraries: dict[str, str] = {}
    suite: SuiteManifest
    conditions: list[ConditionEntry]
    models: dict[str, ModelEntry]
    metrics: dict[str, MetricEntry]
    device: str = ""
    pair_work: list[PairWork] = []
    approximate_search: ApproximateSearch = ApproximateSearch()
    seconds: dict[str, float] = {}
    source: str | None = None
    max_samples: int | None = None  # the run's --max-samples, if given

    @property
    def suite_id(self) -> str:
        return self.suite.id

    def n_samples(self, condition: str) -> int | None:
        return next((c.n_samples for c in self.conditions if c.label == condition), None)


def migrate(doc: dict[str, Any]) -> dict[str, Any]:
    """A record of an older format as the current one."""
    if "format" not in doc:  # format 1: the same fields, no pair work
        doc = {**doc, "format": RUN_FORMAT}
    return doc


def read_run_record(run_dir: Path) -> RunRecord:
    path = run_dir / RUN_RECORD
    if not path.is_file():
        raise BadInput(f"{run_dir}: not a run folder (no {RUN_RECORD}); give a folder written by `prh-bench run`")
    doc = read_json(path, "run record")
    if not isinstance(doc, dict):
        raise BadInput(f"{path}: not a run record (a JSON object is expected)")
    if isinstance(doc.get("format"), int) and doc["format"] > RUN_FORMAT:
        raise BadInput(
            f"{path}: run record format {doc['format']} is newer than this prh-bench reads ({RUN_FORMAT}); "
            "upgrade prh-bench"
        )
    try:
        return RunRecord.model_validate(migrate(doc))
    except ValidationError as exc:
        raise BadInput(f"{path}: {first_problem(exc)}") from None


def write_run_record(run_dir: Path, record: RunRecord) -> Path:
    path = run_dir / RUN_RECORD
    path.write_text(record.model_dump_json(indent=2), encoding="utf-8")
    return path
