"""The `prh-bench` command. Exit codes: 0 ok, 2 bad input, 1 failure."""

from __future__ import annotations

import difflib
import functools
import json
import logging
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import click
import yaml
from tabulate import tabulate

from .errors import BadInput, ManifestError, PrhBenchError
from .lazy import pd
from .results.run_folder import (
    BUNDLE_INDEX,
    LEADERBOARDS_ROOT,
    RUNS_ROOT,
    baseline_file,
    leaderboard_bundle,
    new_run_dir,
    suite_runs,
)


class ToleranceType(click.ParamType):
    """A finite number >= 0: NaN would pass every comparison, so it is refused like a negative one."""

    name = "tolerance"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            x = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not (math.isfinite(x) and x >= 0):
            self.fail(f"{value!r}: a tolerance is a finite number >= 0", param, ctx)
        return x


KIND_NAMES = {"models": "model", "datasets": "dataset", "metrics": "metric", "suites": "suite", "scores": "scores"}
DEFAULT_SUITE = "pocket"


class Ctx:
    def __init__(self, registry_dirs: tuple[Path, ...], quiet: bool):
        self.registry_dirs, self.quiet = registry_dirs, quiet

    @property
    def progress(self) -> bool:
        """Progress bars only for a person at a terminal: a log or a pipe gets no escape codes."""
        return not self.quiet and sys.stderr.isatty()

    @functools.cached_property
    def registry(self):
        from .manager import load_plugins
        from .registry import Registry

        registry = Registry.load(load_plugins(), self.registry_dirs)
        if registry.invalid:  # set aside, not fatal: a command that needs one of them says why
            click.echo(
                f"warning: {len(registry.invalid)} invalid manifest(s) skipped: "
                f"{', '.join(sorted(registry.invalid))} (prh-bench validate shows why)",
                err=True,
            )
        return registry


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except BadInput as exc:
            click.echo(
                f"error: {exc}"
                if not isinstance(exc, ManifestError)
                else "error: invalid manifests:\n" + "\n".join(f"  {p}" for p in exc.problems),
                err=True,
            )
            sys.exit(2)
        except PrhBenchError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)

    return wrapper


GLOBAL_FLAGS = ("--quiet", "-q", "--offline")
GLOBAL_WITH_VALUE = ("--registry",)


class GlobalOptionsAnywhere(click.Group):
    """Global options are accepted after the verb too (`prh-bench run --quiet`), as people type them: they are
    moved in front of it before parsing. Arguments after `--` are left alone."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        front, rest, i = [], [], 0
        while i < len(args):
            arg = args[i]
            if arg == "--":
                rest += args[i:]
                break
            if arg in GLOBAL_FLAGS or arg.startswith(tuple(f"{o}=" for o in GLOBAL_WITH_VALUE)):
                front.append(arg)
            elif arg in GLOBAL_WITH_VALUE and i + 1 < len(args):
                front += args[i : i + 2]
                i += 1
            else:
                rest.append(arg)
            i += 1
        return super().parse_args(ctx, front + rest)


@click.group(cls=GlobalOptionsAnywhere, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="prh-bench", prog_name="prh-bench")
@click.option(
    "--registry",
    "registry_dirs",
    multiple=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Extra folder of manifests (repeatable).",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@click.option(
    "--offline",
    is_flag=True,
    envvar="PRH_BENCH_OFFLINE",
    help="Never contact model hubs: missing weights fail at once (env PRH_BENCH_OFFLINE=1).",
)
@click.pass_context
def main(ctx: click.Context, registry_dirs: tuple[Path, ...], quiet: bool, offline: bool) -> None:
    """prh-bench: representational alignment across model zoos."""
    # Idle OpenMP threads sleep instead of spinning on CPUs other processes need (a shared node: pocket's scoring
    # took 89 s beside two busy processes with torch's default, 30 s so; 19 s and 22 s alone; bench_threads.py).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported, which reads it once
    if offline:  # before any hub library is imported: they read these at import time
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    ctx.obj = Ctx(registry_dirs, quiet)
    progress_log = logging.getLogger("prh_bench.progress")
    progress_log.handlers.clear()  # this invocation's stderr (tests invoke main many times in one process)
    progress_log.propagate = False
    if not quiet and not sys.stderr.isatty():  # a log file gets a line per finished model and stage, not bars
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        progress_log.addHandler(handler)
    progress_log.setLevel(logging.INFO if progress_log.handlers else logging.WARNING)
    if not ctx.obj.progress:  # the libraries' own bars (transformers' "Loading weights") follow ours
        os.environ.setdefault("TQDM_DISABLE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


@main.command()
@click.option("--suite", default=DEFAULT_SUITE, show_default=True, help="Suite id (see `prh-bench ls suites`).")
@click.option("--force", is_flag=True, help="Recompute features even when cached.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, ...")
@click.option(
    "--max-samples",
    type=click.IntRange(min=4),
    help="Use N samples drawn with a fixed seed across the data set, each group (photograph) its share.",
)
@click.option(
    "--out", type=click.Path(file_okay=False, path_type=Path), help="Run folder (default ./prh-runs/SUITE/TIME)."
)
@click.option(
    "--executor",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="Where extraction and scoring run: this process, or Ray tasks (the cache must be shared).",
)
@click.option("--address", help="Ray cluster address (with --executor ray; default: start a local Ray instance).")
@click.option(
    "--memory-budget",
    "budget_gib",
    type=click.FloatRange(min=0, min_open=True),
    help="GiB of per-layer summaries that scoring may hold; models are scored in groups that fit [4].",
)
@click.option(
    "--threads",
    type=click.IntRange(1, 4096),
    help="torch threads of extraction and scoring (and of each Ray task); default: one per CPU this "
    "process may use. Scores may differ in the last bits between thread counts.",
)
@click.option(
    "--add-model",
    "extra_models",
    multiple=True,
    metavar="ID",
    help="Run this model beside the suite's own, under the suite's data, metrics and preparation "
    "(repeatable): how a contributor scores a new model against a zoo (see `submit`).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the written paths and the scores as JSON.")
@click.pass_obj
@handle_errors
def run(
    obj: Ctx,
    suite: str,
    force: bool,
    device: str,
    max_samples: int | None,
    out: Path | None,
    executor: str,
    address: str | None,
    budget_gib: float | None,
    threads: int | None,
    extra_models: tuple[str, ...],
    as_json: bool,
) -> None:
    """Extract features (or reuse the cache) and score every model pair of a suite."""
    if address and executor != "ray":
        raise BadInput("--address needs --executor ray")
    if out is not None and out.exists() and any(out.iterdir()):
        raise BadInput(
            f"--out {out}: the folder is not empty (a previous run's files would mix with this run's); "
            "give a new folder or remove it"
        )
    if threads is not None:
        from .lazy import torch

        torch.set_num_threads(threads)  # before a Ray executor takes its tasks' thread count from it
    result, run_dir, written = _run_suite(
        obj,
        suite,
        progress=obj.progress and not as_json,
        out=out,
        device=device,
        force=force,
        max_samples=max_samples,
        executor=executor,
        address=address,
        budget_gib=budget_gib,
        extra_models=extra_models,
    )
    if as_json:
        click.echo(
            json.dumps(
                {
                    "suite": suite,
                    "run_dir": str(run_dir),
                    **written,
                    "models": {o.model: {"status": o.status, "error": o.error} for o in result.outcomes},
                    "runs": [vars(o) for o in result.outcomes],
                },
                indent=2,
            )
        )
    else:
        for o in result.outcomes:
            where = f" [{o.condition}]" if len(result.conditions) > 1 else ""
            click.echo(f"  {o.status:9s} {o.model}{where} ({o.seconds:.1f} s){'  ' + o.error if o.error else ''}")
        for w in result.pair_work:
            where = f" [{w['condition']}]" if len(result.conditions) > 1 else ""
            nulls = f"; nulls: {w['nulls_computed']} of {w['nulls']} computed" if w["nulls"] else ""
            click.echo(
                f"  {w['metric']}{where}: {w['pairs_computed']} of {w['pairs']} model pairs computed, "
                f"{w['pairs'] - w['pairs_computed']} read from the cache{nulls}"
            )
        for name, path in written["files"].items():
            if name.startswith("ranking"):  # its list of failures repeats the reasons printed just above
                text = Path(path).read_text(encoding="utf-8")
                click.echo("\n" + "\n".join(x for x in text.splitlines() if not x.startswith("- **failed**")))
        click.echo(f"run folder: {run_dir}")
        for name, path in written["files"].items():
            click.echo(f"  {name}: {path}")
    if result.failures:
        click.echo(f"error: {len(result.failures)} failed: {', '.join(o.model for o in result.failures)}", err=True)
        sys.exit(1)


def _run_suite(
    obj: Ctx,
    suite: str,
    progress: bool,
    out: Path | None = None,
    executor: str = "local",
    address: str | None = None,
    **options: Any,
) -> tuple[Any, Path, dict[str, Any]]:
    """Run a suite and write its run folder: (the SuiteRun, the folder, what write_run returned)."""
    from .features import FeatureCache, cache_root
    from .results.report import write_run
    from .runner import run_suite

    runner = None
    if executor == "ray":
        from .executors import RayExecutor

        runner = RayExecutor(address)
    result = run_suite(
        obj.registry,
        suite,
        FeatureCache(cache_root()),
        progress=progress,
        executor=runner,
        registry_dirs=obj.registry_dirs,
        **options,
    )
    run_dir = out or new_run_dir(suite_runs(suite))
    return result, run_dir, write_run(result, run_dir)


@main.command()
@click.option(
    "--baseline",
    "baseline_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A baseline JSON file (leaderboards/baselines/SUITE.json).",
)
@click.option(
    "--run",
    "run_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Check this run folder (default: run the baseline's suite now, reusing the cache).",
)
@click.option("--atol", type=ToleranceType(), help="Absolute tolerance (default: the baseline's).")
@click.option("--rtol", type=ToleranceType(), help="Relative tolerance (default: the baseline's).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
@handle_errors
def check(
    obj: Ctx, baseline_file: Path, run_dir: Path | None, atol: float | None, rtol: float | None, as_json: bool
) -> None:
    """Compare a run's scores with a baseline; exit 1 listing what moved, what is missing and what changed version."""
    from .results.baseline import compare, describe, measured, read_baseline, tolerances
    from .results.results import Results

    base = read_baseline(baseline_file)
    tol = tolerances(base, atol, rtol)
    if run_dir is None:
        result, run_dir, _ = _run_suite(obj, base.suite, progress=obj.progress and not as_json)
        if result.failures:
            click.echo(
                f"note: {len(result.failures)} model run(s) failed: "
                + ", ".join(f"{o.model} ({o.error})" for o in result.failures),
                err=True,
            )
    res = compare(base, measured(Results.read(run_dir)), tol)
    if as_json:
        click.echo(json.dumps({"ok": res.ok, "run_dir": str(run_dir), "tolerances": tol, **vars(res)}, indent=2))
    else:
        click.echo(f"checking {run_dir} against {baseline_file}")
        click.echo(describe(res, tol))
    if not res.ok:
        sys.exit(1)


@main.command()
@click.option("--suite", required=True, help="Suite id.")
@click.option(
    "--run",
    "run_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="A run folder (default: the newest under --runs).",
)
@click.option("--runs", "runs_root", default=RUNS_ROOT, show_default=True, type=click.Path(path_type=Path))
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Baseline file (default: leaderboards/baselines/SUITE.json).",
)
@click.option("--atol", type=ToleranceType(), help="Default absolute tolerance stored in the baseline.")
@click.option("--rtol", type=ToleranceType(), help="Default relative tolerance stored in the baseline.")
@handle_errors
def baseline(
    suite: str, run_dir: Path | None, runs_root: Path, out: Path | None, atol: float | None, rtol: float | None
) -> None:
    """Write or update a suite's baseline from stored results (a run folder)."""
    from .results.baseline import DEFAULT_TOLERANCE, measured, write_baseline
    from .results.results import Results
    from .results.run_folder import latest_run

    run_dir = run_dir or latest_run(runs_root, suite)
    run = measured(Results.read(run_dir))
    if run.suite != suite:
        raise BadInput(f"{run_dir} is a run of suite '{run.suite}', not '{suite}'")
    tol = {
        "atol": DEFAULT_TOLERANCE["atol"] if atol is None else atol,
        "rtol": DEFAULT_TOLERANCE["rtol"] if rtol is None else rtol,
    }
    path = out or baseline_file(suite)
    doc = write_baseline(run, path, tol)
    click.echo(
        f"wrote {path} from {run_dir} (tolerance atol={tol['atol']:g} rtol={tol['rtol']:g}, "
        f"{len(doc['versions']['models'])} models)"
    )


@main.command()
@click.option("--suite", required=True, help="Suite id.")
@click.option("--max-samples", type=click.IntRange(min=4), help="As for run.")
@click.option(
    "--memory-budget",
    "budget_gib",
    type=click.FloatRange(min=0, min_open=True),
    default=4.0,
    show_default=True,
    help="As for run: GiB of summaries the pair stage may hold.",
)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
@handle_errors
def plan(obj: Ctx, suite: str, max_samples: int | None, budget_gib: float, as_json: bool) -> None:
    """Without running: each model's status (cached / to extract / weights unavailable here) and feature storage,
    and per metric the model pairs stored / to compute with an estimate of their time and memory."""
    from .features import FeatureCache, cache_root
    from .plan import plan_suite

    table, work = plan_suite(obj.registry, suite, FeatureCache(cache_root()), max_samples, budget_gib)
    total = table.feature_MiB.sum(min_count=1)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "suite": suite,
                    "rows": json.loads(table.to_json(orient="records")),
                    "feature_MiB": None if pd.isna(total) else float(total),
                    "scoring": json.loads(work.to_json(orient="records")),
                },
                indent=2,
            )
        )
        return
    shown = table.drop(columns="note").assign(weights=table.weights.str.slice(0, 60))  # `show ID` has the rest
    click.echo(tabulate(shown, headers="keys", showindex=False, floatfmt=".1f"))
    for note in dict.fromkeys(n for n in table.note if n):
        click.echo(f"note: {note}")
    counts = table.status.value_counts().to_dict()
    click.echo(
        f"{len(table)} model runs: "
        + ", ".join(f"{v} {k}" for k, v in counts.items())
        + (f"; estimated features {total:.0f} MiB" if not pd.isna(total) else "")
    )
    if not work.empty:
        click.echo("\n" + tabulate(work, headers="keys", showindex=False, floatfmt=".1f"))
        todo, secs = int(work.pairs_to_compute.sum()), work.est_seconds.sum(min_count=1)
        click.echo(
            f"{int(work.pairs_cached.sum())} model pairs stored, {todo} to compute"
            + (
                f"; estimated {secs:.0f} s of scoring on this machine (measured on random features of the suite's N)"
                if todo and not pd.isna(secs)
                else ""
            )
        )


@main.command()
@click.option("--suite", required=True, help="Suite id.")
@click.option("--reference", help="Model to rank against (default: the suite's reference).")
@click.option("--metric", help="Metric of the suite's results to rank by (default: its first).")
@click.option(
    "--run",
    "run_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="A run folder (default: the newest under --runs).",
)
@click.option(
    "--runs",
    "runs_root",
    default=RUNS_ROOT,
    show_default=True,
    type=click.Path(path_type=Path),
    help="Where `run` wrote its folders.",
)
@click.option(
    "--results",
    "store",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="A results store (`prh-bench merge`) instead of a run folder: the suite's models, metrics and "
    "first condition are read from it.",
)
@click.option(
    "--add-model",
    "extra_models",
    multiple=True,
    metavar="ID",
    help="With --results: rank this model of the store too (repeatable); models a verification added to "
    "the suite join without it.",
)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Default: leaderboards/SUITE.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
@handle_errors
def leaderboard(
    obj: Ctx,
    suite: str,
    reference: str | None,
    metric: str | None,
    run_dir: Path | None,
    runs_root: Path,
    store: Path | None,
    extra_models: tuple[str, ...],
    out: Path | None,
    as_json: bool,
) -> None:
    """Rank models by alignment to a reference and correlate with downstream scores, from stored results."""
    from .features import FeatureCache, cache_root
    from .manifest import SuiteManifest
    from .results.color_figure import color_figure
    from .results.leaderboard import build
    from .results.publish import write_leaderboard
    from .results.results import Results
    from .results.run_folder import latest_run
    from .results.store_results import store_results
    from .results.verify import verification_labels

    out = out or leaderboard_bundle(suite)
    verification = None
    if store is not None:
        if run_dir is not None:
            raise BadInput("give --run or --results, not both")
        # Models verified for the suite join its own.
        res = store_results(obj.registry, obj.registry.get(suite, SuiteManifest), store, extra_models)
        verification = verification_labels(store, res.record.models)
    elif extra_models:
        raise BadInput("--add-model goes with --results (a run folder's models are the ones it ran)")
    else:
        res = Results.read(run_dir or latest_run(runs_root, suite), obj.registry.plugins.metrics)
    lb = build(obj.registry, suite, res, reference, metric, verification)
    more = None
    if store is None and "colors" in lb.suite.figures:  # the colour study's: every model's colours in CIELAB
        more = functools.partial(color_figure, lb, res, FeatureCache(cache_root()))
    files = write_leaderboard(lb, out, more)
    if as_json:
        click.echo(
            json.dumps(
                {"files": files, "correlations": json.loads(lb.correlations.to_json(orient="records"))}, indent=2
            )
        )
        return
    click.echo(Path(files["leaderboard.md"]).read_text(encoding="utf-8"))
    click.echo(f"leaderboard folder: {Path(files[BUNDLE_INDEX]).parent}")


@main.command()
@click.argument("sources", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--into",
    "store",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The results store to fold them into (created when absent).",
)
@handle_errors
def merge(sources: tuple[Path, ...], store: Path) -> None:
    """Fold the per-pair results of run folders or other stores (SOURCES) into one store. All or nothing: a
    record whose versions, feature checksums or scores disagree with one already there is refused."""
    from .results.merge import merge as merge_results

    done = merge_results(list(sources), store)
    nulls = f", {done['nulls_added']} permutation nulls added" if done["nulls_added"] else ""
    click.echo(
        f"{store}: {done['added']} records added ({done['files']} files){nulls}, {done['already_present']} "
        "already present"
    )


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--model",
    "models",
    multiple=True,
    required=True,
    metavar="ID",
    help="A model the submission adds (repeatable): its records with every other model are packed.",
)
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="The zip file to write.")
@click.option(
    "--features/--no-features",
    default=True,
    show_default=True,
    help="Pack the models' features, so that a verifier without their weights can recompute scores.",
)
@click.pass_obj
@handle_errors
def submit(obj: Ctx, run_dir: Path, models: tuple[str, ...], out: Path, features: bool) -> None:
    """Pack a run's results for models you add (and their features) as one checksummed submission file."""
    from .features import cache_root
    from .results.submission import pack

    claim = pack(obj.registry, run_dir, list(models), out, cache_root(), features)
    size = out.stat().st_size / 2**20
    click.echo(
        f"{out}: {len(claim.files)} files ({size:.1f} MiB): suite {claim.suite} v{claim.suite_version}, models "
        f"{', '.join(m.id for m in claim.models)}, {len(claim.features)} feature files. Check it with "
        f"`prh-bench verify {out}`"
    )


@main.command()
@click.argument("submission", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--sample",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="Records to recompute, drawn at random with --seed.",
)
@click.option("--all", "every", is_flag=True, help="Recompute every record.")
@click.option(
    "--seed",
    type=click.IntRange(min=0, max=2**63 - 1),
    help="Seed of the sample (default: drawn at random, and reported, so a submitter cannot know it).",
)
@click.option("--atol", type=ToleranceType(), default=2e-3, show_default=True, help="Absolute tolerance of a score.")
@click.option("--rtol", type=ToleranceType(), default=0.0, show_default=True, help="Relative tolerance of a score.")
@click.option("--device", default="cpu", show_default=True, help="Where features are extracted, when they are.")
@click.option(
    "--reextract",
    is_flag=True,
    help="Extract the claimed models here too (their weights must be available) and compare with the "
    "submitted features.",
)
@click.option(
    "--into",
    "store",
    type=click.Path(file_okay=False, path_type=Path),
    help="When it passes, merge its records into this results store, marked verified.",
)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
@handle_errors
def verify(
    obj: Ctx,
    submission: Path,
    sample: int,
    every: bool,
    seed: int | None,
    atol: float,
    rtol: float,
    device: str,
    reextract: bool,
    store: Path | None,
    as_json: bool,
) -> None:
    """Check a submission: files, manifests, feature checksums, and a random sample of its scores recomputed.
    Exit 1 when a check fails (nothing is merged)."""
    import shutil

    from .features import cache_root
    from .results.ledger import LEDGER, ledger_line
    from .results.merge import merge as merge_results
    from .results.verify import verify as check_submission

    v, scratch = check_submission(
        obj.registry,
        submission,
        cache_root(),
        sample=10**9 if every else sample,
        seed=seed,
        atol=atol,
        rtol=rtol,
        device=device,
        registry_dirs=obj.registry_dirs,
        reextract=reextract,
        progress=obj.progress and not as_json,
    )
    try:
        merged = (
            merge_results([scratch / "results"], store, (LEDGER, ledger_line(v.ledger_entry())))
            if store is not None and v.passed
            else None
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if as_json:
        click.echo(json.dumps({**v.as_dict(), "merged": merged}, indent=2))
    else:
        for f in v.findings:
            click.echo(f"  {'ok  ' if f.ok else 'FAIL'} {f.check}: {f.detail}")
        for row in v.pass_probability:
            click.echo(
                f"  a submission with {row['tampered']} of its {v.records} records edited beyond tolerance "
                f"passes this check with probability {row['pass_probability']:.3g}"
            )
        click.echo(f"{'verified' if v.passed else 'NOT verified'}: {submission}")
        if merged is not None:
            click.echo(
                f"{store}: {merged['added']} records added, {merged['already_present']} already present; "
                f"marked verified in {LEDGER}"
            )
    if not v.passed:
        sys.exit(1)


@main.command()
@click.option("--suite", required=True)
@click.option("--to", "dest", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--from", "src_root", default=LEADERBOARDS_ROOT, show_default=True, type=click.Path(path_type=Path))
@handle_errors
def publish(suite: str, dest: Path, src_root: Path) -> None:
    """Copy a suite's leaderboard bundle (tables, figures, index.html) to DIR."""
    from .results.site import publish as copy_bundle

    src = leaderboard_bundle(suite, src_root)
    if not (src / BUNDLE_INDEX).exists():
        raise BadInput(f"no leaderboard at {src}; run `prh-bench leaderboard --suite {suite}` first")
    click.echo(f"published: {copy_bundle(src, dest)}")


@main.command("ls")
@click.argument("what", type=click.Choice([*KIND_NAMES, "plugins"]))
@click.option("--suite", help="Only the models of this suite.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
@handle_errors
def ls(obj: Ctx, what: str, suite: str | None, as_json: bool) -> None:
    """List models, datasets, metrics, suites or plugins."""
    from .manifest import ModelManifest, SuiteManifest

    reg = obj.registry
    if what == "plugins":
        rows = reg.plugins.plugin_rows()
    else:
        kind = KIND_NAMES[what]
        entries = [m for m in reg.entries.values() if m.kind == kind]
        if suite is not None:
            s = reg.get(suite, SuiteManifest)
            if kind == "model":  # as the suite runs them (revision sweeps make ID@REVISION)
                entries = list(reg.suite_models(s))
            else:
                keep = {s.dataset, *(s.sweep.datasets or [] if s.sweep else []), *(u.name for u in s.metrics)}
                entries = [m for m in entries if m.id in keep]
        rows = []
        for m in entries:
            row: dict[str, Any] = {"id": m.id, "version": m.version}
            if isinstance(m, ModelManifest):
                row |= {
                    "backend": m.backend,
                    "modality": m.modality,
                    "revision": m.revision or "",
                    "weights": m.weights_label,
                }
            row["tags"] = ",".join(m.tags)
            rows.append(row)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        click.echo(tabulate(rows, headers="keys") if rows else f"no {what}")


@main.command()
@click.argument("manifest_id")
@click.option(
    "--check-weights",
    is_flag=True,
    help="Also look for a model's library-pretrained weights in the library's cache (imports the library).",
)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
@handle_errors
def show(obj: Ctx, manifest_id: str, check_weights: bool, as_json: bool) -> None:
    """A manifest and its resolved details (file, providing plugin, suite members, weights here)."""
    from .features import cache_root
    from .manifest import DatasetManifest, MetricManifest, ModelManifest, SuiteManifest
    from .weights import checkpoint_status

    reg = obj.registry
    m = reg.get(manifest_id)
    doc: dict[str, Any] = {"manifest": m.model_dump(mode="json"), "file": str(reg.paths[m.id])}
    if isinstance(m, ModelManifest):
        doc["provided_by"] = reg.plugins.provider[("backend", m.backend)]
        doc["libraries"] = list(reg.plugins.backends[m.backend].libraries)
        # Files are checked here; a library's pretrained weights only on request (timm, open_clip and
        # torchvision import torch: seconds and most of a GB, for a command that reads YAML).
        doc["weights_here"] = checkpoint_status(m, cache_root()) or (
            reg.plugins.backends[m.backend].weights_status(m)
            if check_weights
            else "pretrained: not checked (--check-weights, or `prh-bench plan`, looks in the library's cache)"
        )
        if note := getattr(m.weights, "source_note", ""):
            doc["weights_source"] = note
    elif isinstance(m, DatasetManifest):
        doc["provided_by"] = reg.plugins.provider[("loader", m.loader)]
    elif isinstance(m, MetricManifest):
        doc["resolved_params"] = reg.metric(m.id)[1]
        doc["provided_by"] = reg.plugins.provider[("metric", m.name)]
    elif isinstance(m, SuiteManifest):
        doc["models"] = [x.id for x in reg.suite_models(m)]
        doc["metrics"] = [{"name": u.name, **reg.metric(u.name, u.params)[1]} for u in m.metrics]
    click.echo(json.dumps(doc, indent=2) if as_json else yaml.safe_dump(doc, sort_keys=False))


@main.command()
@click.argument("paths", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.pass_obj
@handle_errors
def validate(obj: Ctx, paths: tuple[Path, ...]) -> None:
    """Check the registry, or the given manifest files/folders, against the schema and the known plugins."""
    from .manifest_reader import load_manifest, manifest_files

    reg = obj.registry
    problems: list[str] = [] if paths else reg.problems()
    files = manifest_files(paths)
    checked = []
    for path in files:  # load all first, so files may refer to each other
        try:
            m = load_manifest(path)
        except ManifestError as exc:
            problems.extend(exc.problems + reg.plugin_problems(exc.data, path))
            continue
        if m.id in reg.entries and reg.paths[m.id].resolve() != path.resolve():
            problems.append(f"{path}: field 'id': '{m.id}' is already defined in {reg.paths[m.id]}")
            continue
        reg.entries[m.id], reg.paths[m.id] = m, path
        checked.append(m.id)
    problems.extend(reg.reference_problems(only=checked))
    if problems:
        raise ManifestError(list(dict.fromkeys(problems)))
    click.echo(f"ok: {len(files) if paths else len(reg.entries)} manifest(s) valid")


def _parse_params(pairs: tuple[str, ...]) -> dict[str, Any]:
    params = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise BadInput(f"--param expects NAME=VALUE, got {pair!r}")
        params[key] = yaml.safe_load(value)
    return params


@main.command()
@click.argument("metric")
@click.option(
    "--files",
    nargs=2,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Two cached feature files (safetensors written by prh-bench).",
)
@click.option("--suite", help="Score two models of this suite on its dataset (extracting them if not cached).")
@click.option("--models", nargs=2, help="The two model ids, with --suite.")
@click.option("--param", "param_pairs", multiple=True, help="Metric parameter NAME=VALUE (repeatable), e.g. k=10.")
@click.option(
    "--prepare/--no-prepare",
    "do_prepare",
    default=True,
    show_default=True,
    help="Clamp at the 0.95 quantile and L2-normalise first (the paper's preparation).",
)
@click.option("--concat-layers", is_flag=True, help="Add all layers concatenated as one more layer.")
@click.option(
    "--clamp",
    "clamp_mode",
    type=click.Choice(["per_layer", "paper", "paper_exact"]),
    help="Clamp mode of the preparation (default: the suite's with --suite, else per_layer).",
)
@click.option(
    "--permutations",
    default=0,
    show_default=True,
    type=click.IntRange(min=0),
    help="Permutation null of the best score, with p-value and calibrated score.",
)
@click.pass_obj
@handle_errors
def score(
    obj: Ctx,
    metric: str,
    files: tuple[Path, Path] | None,
    suite: str | None,
    models: tuple[str, str] | None,
    param_pairs: tuple[str, ...],
    do_prepare: bool,
    concat_layers: bool,
    clamp_mode: str | None,
    permutations: int,
) -> None:
    """Score every layer pair of two models' features with one metric; print JSON."""
    from .align import prepare, score_layers
    from .align.prepare import CONCAT, Clamp
    from .cache_files import CorruptEntry
    from .features import read_features

    reg = obj.registry
    chosen, params = reg.metric(metric, _parse_params(param_pairs))
    if files and not suite:
        try:
            (fx, mx), (fy, my) = (read_features(p) for p in files)
        except CorruptEntry as exc:
            raise BadInput(f"{' or '.join(map(str, files))}: not a valid prh-bench feature file: {exc}") from None
        ids_x, ids_y = (json.loads(meta.get("key_doc", "{}")).get("sample_ids") for meta in (mx, my))
        if ids_x != ids_y:
            raise BadInput(
                f"{files[0]} and {files[1]} hold features of different samples; scores need the same samples"
            )
        labels = [str(p) for p in files]
    elif suite and models and not files:
        from .context import RunContext, RunSpec, Target
        from .executors import extract_one
        from .features import cache_root

        ctx = RunContext(RunSpec(suite, str(cache_root())), reg)
        got = []
        for mid in models:
            if mid not in ctx.models:
                near = difflib.get_close_matches(mid, list(ctx.models), n=3)
                hint = f"did you mean: {', '.join(near)}?" if near else f"see `prh-bench show {suite}`"
                raise BadInput(f"model '{mid}' is not in suite '{suite}'; {hint}")
            outcome = extract_one(ctx, mid, Target(condition=0), progress=obj.progress)
            if outcome.status == "failed":
                raise PrhBenchError(outcome.error)
            got.append(ctx.features(mid, outcome.key))
        fx, fy = got
        labels = list(models)
        clamp_mode = clamp_mode or ctx.suite.prepare.clamp
    else:
        raise BadInput("give either --files A B, or --suite ID --models X Y")
    tx, ty = fx.tensors, fy.tensors
    if do_prepare or concat_layers:
        clamp = 0.95 if do_prepare else None
        mode = cast(Clamp, clamp_mode or "per_layer")  # one of click's choices
        tx, ty = (prepare(t, clamp, do_prepare, concat_layers, mode) for t in (tx, ty))
    extra = [CONCAT] if concat_layers else []
    res = score_layers(chosen, tx, ty, permutations=permutations, **params)
    i, j = res.best_index
    lx, ly = fx.layer_names + extra, fy.layer_names + extra
    out = {
        "metric": metric,
        "params": params,
        "x": labels[0],
        "y": labels[1],
        "layers_x": lx,
        "layers_y": ly,
        "best": res.best,
        "best_layers": [lx[i], ly[j]],
        "matrix": res.matrix.tolist(),
    }
    if res.calibration is not None:
        out["calibration"] = res.calibration.as_dict()
    click.echo(json.dumps(out, indent=2))


@main.command()
@click.argument("model")
@click.option("--samples", "n", default=8, show_default=True, type=click.IntRange(min=4))
@click.option("--random-weights", is_flag=True, help="Replace the manifest's weights by random ones (seed 0).")
@click.option("--dataset", help="Dataset id (default: pocket-photos for vision, glove-words for text).")
@click.option("--device", default="auto", show_default=True)
@click.pass_obj
@handle_errors
def smoke(obj: Ctx, model: str, n: int, random_weights: bool, dataset: str | None, device: str) -> None:
    """Check one model manifest (an id or a YAML file) end to end on a handful of samples, without caching."""
    import time

    from .align import prepare, score_layers
    from .backend import resolve_dtype
    from .context import load_samples, resolve_device
    from .features import extract
    from .manifest import DatasetManifest, ModelManifest, RandomWeights
    from .manifest_reader import load_manifest
    from .runner import check_modalities

    reg = obj.registry
    if Path(model).is_file():
        m = load_manifest(Path(model))
        reg.entries[m.id], reg.paths[m.id] = m, Path(model)
        if problems := reg.reference_problems(only=[m.id]):
            raise ManifestError(problems)
    else:
        m = reg.get(model)
    if not isinstance(m, ModelManifest):
        raise BadInput(f"'{model}' is a {m.kind} manifest; smoke checks model manifests")
    if random_weights and m.weights != "none":  # a parameter-free model has nothing to randomise
        m = m.model_copy(update={"weights": RandomWeights(random=0)})
    ds = reg.get(dataset or {"vision": "pocket-photos", "text": "glove-words"}[m.modality], DatasetManifest)
    samples = load_samples(reg, ds, n)
    check_modalities([m], samples, ds)
    t0 = time.perf_counter()
    on = resolve_device(device)
    m = resolve_dtype(m, on)
    feats = extract(
        reg.plugins.backends[m.backend].load(m, on), samples, m.batch_size, desc=m.id, progress=obj.progress
    )
    took = time.perf_counter() - t0
    rows = [
        {"layer": name, "shape": tuple(t.shape), "std": float(t.std())}
        for name, t in zip(feats.layer_names, feats.tensors, strict=True)
    ]
    click.echo(tabulate(rows, headers="keys"))
    prepared = prepare(feats.tensors)
    self_score = score_layers("mutual_knn", prepared, prepared, k=min(3, n - 1)).matrix.diagonal().min().item()
    click.echo(
        f"ok: '{m.id}' gave {len(rows)} layers of finite features for {n} samples of '{ds.id}' in {took:.1f} s"
        f" (self-alignment {self_score:.2f})"
    )
