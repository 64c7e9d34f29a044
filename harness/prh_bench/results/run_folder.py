"""Where a run's and a leaderboard's files live, and a run's tables on disk (CSV, or Parquet when long)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

from ..errors import BadInput, PrhBenchError
from ..lazy import pd

RUNS_ROOT = Path("prh-runs")  # run folders: RUNS_ROOT/SUITE/UTC-TIME
LEADERBOARDS_ROOT = Path("leaderboards")  # bundles: LEADERBOARDS_ROOT/SUITE, baselines: LEADERBOARDS_ROOT/baselines
RUN_RECORD = "run.json"  # the run's typed record (run_record.py)
RESULTS_DIR = "results"  # per-pair records inside a run folder (pair_records.py)
BUNDLE_INDEX = "index.html"
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
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S-%f")
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
        raise BadInput(
            f"no stored results of suite '{suite}' under {folder}; run `prh-bench run --suite {suite}` first"
        )
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


def read_table(run_dir: Path, name: str) -> pd.DataFrame | None:
    """A run's table from NAME.parquet or NAME.csv, or None. Only an empty CSV cell is missing: a model or layer
    named 'NA' or 'null' stays its name, parameters stay text. A folder holding both files is refused (readers
    would disagree on which is the run's), and so is a file that is no such table."""
    parquet, csv = run_dir / f"{name}.parquet", run_dir / f"{name}.csv"
    if parquet.exists() and csv.exists():
        raise BadInput(
            f"{run_dir} holds both {csv.name} and {parquet.name}; a run writes one. Remove the one that "
            "is not this run's"
        )
    path = parquet if parquet.exists() else csv if csv.exists() else None
    if path is None:
        return None
    try:
        if path is parquet:
            return pd.read_parquet(path)
        return pd.read_csv(path, dtype={"params": str}, keep_default_na=False, na_values=[""])
    except Exception as exc:  # noqa: BLE001 (pyarrow and the CSV parser fail on damaged files in many ways)
        raise BadInput(f"{path}: not a readable {name} table ({type(exc).__name__}: {str(exc)[:200]})") from None


def slug(text: str) -> str:
    """A file name's part from free text (a condition label like 'pocket-photos gaussian_noise=0.5')."""
    out = re.sub(r"[^A-Za-z0-9._=-]+", "_", text).strip("_")
    return out if out.strip(".") else "_" * max(1, len(out))  # never '', '.' or '..': a path part, not a way up
