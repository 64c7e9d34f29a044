"""Results that merge: one JSON file per model pair and condition, in the style of MTEB's results repository.

    RESULTS/CONDITION/MODEL_X/MODEL_Y.json   # a list of records, one per metric (and parameters)

A record carries what a reader needs to trust and compare it without the run that made it: the two models'
ids, revisions, manifest versions and feature checksums (which bind the model, the data set, its samples and
the extraction code), the condition (data set, version, revision, N), the metric with its parameters, version
and code digest, the preparation, torch's and prh-bench's versions, the layer x layer scores (metric(x layer,
y layer)) and the pair's permutation null when the run computed one.

`prh-bench run` writes its records under RUN/results; `prh-bench merge` folds run folders or other stores into
one store (merge.py), refusing (and writing nothing) when two records of the same pair, condition, metric and
parameters disagree on any version, checksum, score or null; a store loads into Results (store_results.py),
from which `prh-bench leaderboard --results STORE` ranks a suite's models.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..errors import BadInput
from .documents import Finite, first_problem, parse_json, read_json
from .journal import locked, pending
from .matrices import params_key
from .run_folder import RESULTS_DIR, RUN_RECORD, slug

if TYPE_CHECKING:
    from ..align.metric import Metric
    from ..context import Condition
    from ..manifest import ModelManifest, SuiteManifest
    from ..registry import Registry
    from ..scoring import JobScores

RESULTS_FORMAT: Literal[1] = 1
RESULTS_FILE = "results file"
SCORE_ATOL = 1e-12  # two records of one pair from the same code and features agree to rounding


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


MAX_DEPTH = 4  # metric parameters and preparation are flat documents; deeper nesting is no record of ours
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _no_infinity(v: float) -> float:
    if math.isinf(v):
        raise ValueError("an infinite score is no measurement")
    return v


#: a score: finite, or NaN where the metric is undefined (e.g. CKA of a constant layer); never infinite
Score = Annotated[float, AfterValidator(_no_infinity)]


def _plain(value: Any, depth: int = 0) -> None:
    """Refuses what no record of ours holds and what would break a reader: nesting deeper than MAX_DEPTH,
    strings with control characters (a terminal escape in a printed message) or lone surrogates (no UTF-8)."""
    if depth > MAX_DEPTH:
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, str):
        if _CONTROL.search(value):
            raise ValueError(f"control characters in {value.encode('unicode_escape').decode()[:60]!r}")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("a lone surrogate (not UTF-8 text)") from None
    elif isinstance(value, dict):
        for k, v in value.items():
            _plain(k, depth + 1)
            _plain(v, depth + 1)
    elif isinstance(value, list):
        for v in value:
            _plain(v, depth + 1)


class ModelRef(_Record):
    id: str = Field(max_length=201, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]*$")  # a file name: ID@REVISION, 100 each
    revision: str | None
    manifest_version: int
    features_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    layers: list[str] = Field(min_length=1)


class CalibrationRef(_Record):
    """The pair's permutation null (align.calibrate.Calibrated.as_dict), named by the pair it belongs to."""

    model_x: str
    model_y: str
    metric: str
    observed: Finite
    p_value: Finite = Field(gt=0, le=1)
    calibrated: Finite
    tau: Finite
    alpha: Finite = Field(gt=0, lt=1)
    null_normalized: Finite
    null_mean: Finite
    null_std: float  # NaN for a null of one permutation
    null_q95: Finite
    permutations: int = Field(ge=1)
    exchange: Literal["free", "within_groups"] = "free"  # what its shuffles exchanged (free before groups existed)


class ConditionRef(_Record):
    label: str
    dataset: str
    dataset_version: int
    dataset_revision: str | None
    transform: str | None
    level: float | None
    n_samples: int = Field(ge=2)


class PairRecord(_Record):
    format: Literal[1]
    condition: ConditionRef
    metric: str
    params: dict[str, Any]
    metric_version: int
    prepare: dict[str, Any]
    code_sha256: str
    torch: str
    prh_bench: str
    model_x: ModelRef
    model_y: ModelRef
    scores: list[list[Score]]  # model_x's layers x model_y's: metric(x layer, y layer)
    calibration: CalibrationRef | None = None

    @model_validator(mode="before")
    @classmethod
    def _plain_document(cls, doc: Any) -> Any:
        _plain(doc)
        return doc

    def metric_key(self) -> tuple[str, str]:
        """The record's metric and parameters, as `suite_metrics` keys a suite's."""
        return self.metric, params_key(self.params)

    def identity(self) -> tuple[str, ...]:
        """What names a record: two records with it describe the same measurement."""
        return (
            self.condition.label,
            self.condition.dataset,
            self.model_x.id,
            self.model_y.id,
            self.metric,
            params_key(self.params),
            params_key(self.prepare),
        )

    def provenance(self) -> dict[str, Any]:
        """Everything two records of one measurement must share to be the same result."""
        return self.model_dump(exclude={"scores", "calibration", "prh_bench"})

    def check_shape(self, where: str) -> None:
        rows, cols = len(self.model_x.layers), len(self.model_y.layers)
        if len(self.scores) != rows or any(len(r) != cols for r in self.scores):
            raise BadInput(
                f"{where}: scores must be {rows} x {cols} (the layers of {self.model_x.id} x {self.model_y.id})"
            )
        cal = self.calibration
        if cal is not None and (cal.model_x, cal.model_y, cal.metric) != (
            self.model_x.id,
            self.model_y.id,
            self.metric,
        ):
            raise BadInput(
                f"{where}: field 'calibration': the {cal.metric} null of {cal.model_x} x {cal.model_y} in "
                f"a {self.metric} record of {self.model_x.id} x {self.model_y.id}"
            )


def record_path(root: Path, condition: str, model_x: str, model_y: str) -> Path:
    return root / slug(condition) / model_x / f"{model_y}.json"


def read_records(path: Path, text: str | None = None) -> list[PairRecord]:
    """The records of one file (of `text`, its content when already read); bad input naming the file and the
    field when it is not a list of records."""
    raw = read_json(path, RESULTS_FILE) if text is None else parse_json(path, RESULTS_FILE, text)
    if not isinstance(raw, list):
        raise BadInput(f"{path}: expected a list of pair records, got {type(raw).__name__}")
    out = []
    for i, item in enumerate(raw):
        try:
            rec = PairRecord.model_validate(item)
        except ValidationError as exc:
            raise BadInput(f"{path}: record {i}, {first_problem(exc)}") from None
        rec.check_shape(f"{path}: record {i}")
        out.append(rec)
    return out


def results_root(source: Path) -> Path:
    """A run folder's results, or a store itself."""
    return source / RESULTS_DIR if (source / RUN_RECORD).is_file() else source


def scan(source: Path) -> dict[tuple[str, ...], tuple[PairRecord, Path]]:
    """Every record under a run folder or a store, by identity; two files disagreeing inside one source are
    refused like any other conflict. A merge interrupted there is completed first (journal.recover)."""
    root = results_root(source)
    if not root.is_dir():
        raise BadInput(f"{source}: neither a run folder with results nor a results store")
    if pending(root):
        with locked(root):
            pass
    out: dict[tuple[str, ...], tuple[PairRecord, Path]] = {}
    # Hidden files are no records: a killed writer's temporary file, the merge journal.
    for path in sorted(p for p in root.rglob("*.json") if not p.name.startswith(".")):
        for rec in read_records(path):
            if (old := out.get(rec.identity())) is not None and (why := disagreement(old[0], rec)):
                raise BadInput(f"{source} holds two different results for {describe(rec)}: {why} ({old[1]}, {path})")
            out[rec.identity()] = (rec, path)
    return out


def disagreement(a: PairRecord, b: PairRecord) -> str:
    """Empty when two records of one measurement agree (their permutation nulls too, where both have one);
    else which field differs, with both values."""
    pa, pb = a.provenance(), b.provenance()
    for field in _diff(pa, pb):
        return f"{field}: {_get(pa, field)!r} vs {_get(pb, field)!r}"
    if why := _numbers_differ([x for r in a.scores for x in r], [y for r in b.scores for y in r]):
        return f"scores: {why}"
    if a.calibration is not None and b.calibration is not None:
        ca, cb = a.calibration.model_dump(), b.calibration.model_dump()
        for field in ca:
            if isinstance(ca[field], float) and (why := _numbers_differ([ca[field]], [cb[field]])):
                return f"calibration.{field}: {why}"
            if not isinstance(ca[field], float) and ca[field] != cb[field]:
                return f"calibration.{field}: {ca[field]!r} vs {cb[field]!r}"
    return ""


def _numbers_differ(xs: list[float], ys: list[float]) -> str:
    if any(math.isnan(x) != math.isnan(y) for x, y in zip(xs, ys, strict=True)):
        return "a NaN on one side only"
    worst = max((abs(x - y) for x, y in zip(xs, ys, strict=True) if not math.isnan(x)), default=0.0)
    if not worst <= SCORE_ATOL:
        return f"differ by up to {worst:.3g} (beyond rounding, {SCORE_ATOL:g})"
    return ""


def _diff(a: Any, b: Any, where: str = "") -> Iterable[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            yield from _diff(a.get(k), b.get(k), f"{where}.{k}" if where else k)
    elif a != b:
        yield where


def _get(doc: dict[str, Any], field: str) -> Any:
    value: Any = doc
    for part in field.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def describe(rec: PairRecord) -> str:
    return (
        f"{rec.model_x.id} x {rec.model_y.id}, {rec.metric} {params_key(rec.params)}, condition '{rec.condition.label}'"
    )


def job_records(
    scores: JobScores, cond: Condition, n: int, models: dict[str, ModelManifest], names: dict[str, list[str]]
) -> list[PairRecord]:
    """One record per ordered model pair a job reports."""
    from .. import __version__

    job = scores.job
    nulls = {(r["model_x"], r["model_y"]): r for r in scores.calibration()}
    condition = ConditionRef(
        label=cond.label,
        dataset=cond.dataset.id,
        dataset_version=cond.dataset.version,
        dataset_revision=cond.dataset.revision,
        transform=cond.transform,
        level=cond.level,
        n_samples=n,
    )

    def ref(m: Any) -> ModelRef:
        manifest = models[m.id]
        return ModelRef(
            id=m.id,
            revision=manifest.revision,
            manifest_version=manifest.version,
            features_sha256=m.info.digest,
            layers=names[m.id],
        )

    return [
        PairRecord(
            format=RESULTS_FORMAT,
            condition=condition,
            metric=job.metric.name,
            params=job.params,
            metric_version=job.version,
            prepare=job.scoring["prepare"],
            code_sha256=job.scoring["code"],
            torch=job.scoring["torch"],
            prh_bench=__version__,
            model_x=ref(a),
            model_y=ref(b),
            scores=scores.pair(a.id, b.id).tolist(),
            calibration=CalibrationRef.model_validate(nulls[(a.id, b.id)]) if (a.id, b.id) in nulls else None,
        )
        for a, b in job.pairs()
    ]


def suite_metrics(
    registry: Registry, suite: SuiteManifest, cond: Condition
) -> dict[tuple[str, str], tuple[Metric, dict[str, Any], int]]:
    """The measurements a record of the suite under `cond` may name: (metric, parameters as canonical text), as
    `PairRecord.metric_key` gives them, -> (the metric, its parameters (a sweep's k applied), its version)."""
    out = {}
    for use in suite.metrics:
        metric, params = registry.metric(use.name, cond.metric_params(use.params))
        out[(metric.name, params_key(params))] = (metric, params, registry.get(use.name).version)
    return out
