"""Where a run's and a leaderboard's files live, and the run's typed record (run.json) that the report writes and
every reader (baselines, leaderboards, the colour figure, stores) reads: one schema with a format version, and
a migration for records written before it had one."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import BadInput, PrhBenchError
from ..lazy import pd
from ..textfile import read_text

RUNS_ROOT = Path("prh-runs")  # run folders: RUNS_ROOT/SUITE/UTC-TIME
LEADERBOARDS_ROOT = Path("leaderboards")  # bundles: LEADERBOARDS_ROOT/SUITE, baselines: LEADERBOARDS_ROOT/baselines
RUN_RECORD = "run.json"
RESULTS_DIR = "results"  # per-pair records inside a run folder (pairs.py)
BUNDLE_INDEX = "index.html"
#: 1: no format field (before 2026-12); 2: the format field and the pair work of each job
RUN_FORMAT = 2
#: a long table with more rows than this is written as Parquet (a vision78 run has about 1.2 million per metric)
PARQUET_ROWS = 200_000


def suite_runs(suite: str, root: Path = RUNS_ROOT) -> Path:
    return root / suite


def leaderboard_bundle(suite: str, root: Path = LEADERBOARDS_ROOT) -> Path:
    return root / suite


def baseline_file(suite: str, root: Path = LEADERBOARDS_ROOT) -> Path:
    return root / "baselines" / f"{suite}.json"


def new_run_dir(folder: Path) -> Path:
    """A new folder named by the UTC time to the microsecond, created here: two runs started at once (in one
    process or several) never write into the same folder."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-%f")
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(1000):
        path = folder / (stamp if n == 0 else f"{stamp}-{n}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise PrhBenchError(f"cannot create a new run folder under {folder}")


def has_scores(run_dir: Path) -> bool:
    return (run_dir / "scores.csv").is_file() or (run_dir / "scores.parquet").is_file()


def latest_run(runs_root: Path, suite: str) -> Path:
    """The newest run folder of a suite under runs_root (names are UTC timestamps)."""
    folder = suite_runs(suite, runs_root)
    runs = sorted(p for p in folder.glob("*") if (p / RUN_RECORD).exists() and has_scores(p))
    if not runs:
        raise BadInput(f"no stored results of suite '{suite}' under {folder}; run `prh-bench run --suite {suite}` first")
    return runs[-1]


def write_table(table: pd.DataFrame, run_dir: Path, name: str) -> Path:
    """A run's table as NAME.csv, or NAME.parquet when it is long."""
    if len(table) > PARQUET_ROWS:
        path = run_dir / f"{name}.parquet"
        table.to_parquet(path, index=False)
    else:
        path = run_dir / f"{name}.csv"
        table.to_csv(path, index=False)
    return path


def read_table(run_dir: Path, name: str, keep_default_na: bool = True) -> pd.DataFrame | None:
    """A run's table from NAME.parquet or NAME.csv (metric parameters kept as text), or None. A folder holding
    both is refused (readers would disagree on which is the run's), and so is a file that is no such table."""
    parquet, csv = run_dir / f"{name}.parquet", run_dir / f"{name}.csv"
    if parquet.exists() and csv.exists():
        raise BadInput(f"{run_dir} holds both {csv.name} and {parquet.name}; a run writes one. Remove the one that "
                       "is not this run's")
    path = parquet if parquet.exists() else csv if csv.exists() else None
    if path is None:
        return None
    try:
        if path is parquet:
            return pd.read_parquet(path)
        return pd.read_csv(path, dtype={"params": str}, keep_default_na=keep_default_na)
    except Exception as exc:  # noqa: BLE001 (pyarrow and the CSV parser fail on damaged files in many ways)
        raise BadInput(f"{path}: not a readable {name} table ({type(exc).__name__}: {str(exc)[:200]})") from None


def slug(text: str) -> str:
    """A file name's part from free text (a condition label like 'pocket-photos gaussian_noise=0.5')."""
    out = re.sub(r"[^A-Za-z0-9._=-]+", "_", text).strip("_")
    return out if out.strip(".") else "_" * max(1, len(out))  # never '', '.' or '..': a path part, not a way up


#: a finite number in a stored record (a NaN tolerance would pass every comparison, an infinite score rank first)
Finite = Annotated[float, Field(strict=True, allow_inf_nan=False)]


class _Loose(BaseModel):
    model_config = ConfigDict(extra="allow")


class ModelRun(_Loose):
    condition: str
    status: str  # cached | extracted | sliced | failed
    cache_key: str = ""
    layers: int = 0
    widths: list[int] = []  # each layer's feature width (a run before 2026-12-02 lacks them)
    seconds: float = 0.0
    error: str = ""


class ModelEntry(_Loose):
    manifest_id: str | None = None  # the registry id ('ID' of a revision sweep's 'ID@REVISION'); format 1 lacks it
    manifest_version: int
    revision: str | None = None
    weights: str = ""
    runs: list[ModelRun] = []


class ConditionEntry(_Loose):
    label: str
    dataset: dict[str, Any]
    transform: str | None = None
    level: float | None = None
    n_samples: int | None = None


class RunRecord(_Loose):
    """run.json: what ran (suite, conditions, models with their outcomes, metric versions), where and how long."""

    format: int = RUN_FORMAT
    created: str | None = None
    harness: dict[str, Any] = {}
    libraries: dict[str, str] = {}
    suite: dict[str, Any]
    conditions: list[ConditionEntry]
    models: dict[str, ModelEntry]
    metrics: dict[str, dict[str, Any]]
    device: str = ""
    pair_work: list[dict[str, Any]] = []  # per condition and metric: pairs and nulls, computed or read
    #: with `search: ivf` (runner.SuiteRun.approximate_search): recall per layer, per pair the effect on its score
    approximate_search: dict[str, list[dict[str, Any]]] = {"recall": [], "pairs": []}
    seconds: dict[str, float] = {}
    source: str | None = None  # a results store the record was built from, instead of a run
    max_samples: int | None = None  # the run's --max-samples, if given

    @property
    def suite_id(self) -> str:
        return str(self.suite.get("id"))

    def n_samples(self, condition: str) -> int | None:
        return next((c.n_samples for c in self.conditions if c.label == condition), None)


def read_json(path: Path, what: str) -> Any:
    """A JSON file's document; bad input naming the file when it cannot be read or parsed."""
    try:
        text = read_text(path, what)
    except OSError as exc:
        raise BadInput(f"{path}: not a {what} ({type(exc).__name__}: {exc})") from None
    return parse_json(path, what, text)


def parse_json(path: Path, what: str, text: str) -> Any:
    """The document of a JSON file's text; bad input naming the file when it cannot be parsed."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise BadInput(f"{path}: not a {what} ({type(exc).__name__}: {exc})") from None


def first_problem(exc: ValidationError) -> str:
    """The first schema error, as "field 'a.b': what is wrong"."""
    err = exc.errors()[0]
    return f"field '{'.'.join(str(p) for p in err['loc'])}': {err['msg']}"


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
        raise BadInput(f"{path}: run record format {doc['format']} is newer than this prh-bench reads ({RUN_FORMAT}); "
                       "upgrade prh-bench")
    try:
        return RunRecord.model_validate(migrate(doc))
    except ValidationError as exc:
        raise BadInput(f"{path}: {first_problem(exc)}") from None


def write_run_record(run_dir: Path, record: RunRecord) -> Path:
    path = run_dir / RUN_RECORD
    path.write_text(record.model_dump_json(indent=2), encoding="utf-8")
    return path


def read_run_table(run_dir: Path, name: str, record: RunRecord, metrics: Mapping[str, Any] | None = None,
                   keep_default_na: bool = True) -> pd.DataFrame | None:
    """`read_table`, checked against the run's record: each condition of the table is one of run.json's, with
    its sample count, and each metric's parameters are a JSON object that its plugin (in `metrics`, when given)
    accepts. A table from another run or edited by hand is bad input here, not a traceback in a reader."""
    table = read_table(run_dir, name, keep_default_na)
    if table is None:
        return None
    known = {c.label for c in record.conditions if c.n_samples is not None}
    if "condition" in table and (unknown := sorted(set(table.condition.astype(str)) - known)):
        raise BadInput(f"{run_dir / RUN_RECORD}: field 'conditions': no entry with n_samples for condition "
                       f"{unknown[0]!r} of the {name} table (it lists {sorted(known)}); the run folder is incomplete "
                       "or mixed: run the suite again")
    if "params" in table:
        for metric, text in table[["metric", "params"]].drop_duplicates().itertuples(index=False):
            where = f"{run_dir}: {name} table, field 'params' of metric '{metric}'"
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
    return table
