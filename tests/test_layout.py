"""The engine's module graph has no cycle: the driver (runner) uses the workers (executors), both read the run's
context, and nothing reaches back; imports inside functions count too (they are how cycles hide)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

HARNESS = Path(__file__).parents[1] / "harness" / "prh_bench"


def module_name(path: Path) -> str:
    parts = path.relative_to(HARNESS).with_suffix("").parts
    return ".".join(("prh_bench", *parts)).removesuffix(".__init__")


def imports(path: Path) -> set[str]:
    """The prh_bench modules a file imports, anywhere in it (relative imports resolved)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("prh_bench"):
                out.add(target)
                out |= {f"{target}.{a.name}" for a in node.names}  # `from . import x` may name a module
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("prh_bench")}
    return out


def test_the_engine_imports_have_no_cycle() -> None:
    files = {module_name(p): p for p in HARNESS.rglob("*.py")}
    graph = {m: sorted((imports(p) & set(files)) - {m}) for m, p in files.items()}
    # "prh_bench.align" importing its own submodules is a package exposing them, not a cycle through them.
    graph = {m: [d for d in deps if not m.startswith(d + ".") or m == "prh_bench"] for m, deps in graph.items()}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for d in graph[m]:
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*path[path.index(d) :], d]))
            if d not in state:
                visit(d)
        path.pop()
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m)
    assert "prh_bench.runner" not in graph["prh_bench.executors"] + graph["prh_bench.context"]


def test_only_the_front_doors_read_the_results_package() -> None:
    """Run folders, records, baselines and leaderboards are built from the engine's output; the engine never
    imports them (so a change there cannot alter a score). The command line and the Python front door
    (`prh_bench.run`, `prh_bench.load` in the package's __init__) do."""
    files = {module_name(p): p for p in HARNESS.rglob("*.py")}
    users = {
        m
        for m, p in files.items()
        if not m.startswith("prh_bench.results")
        and any(i == "prh_bench.results" or i.startswith("prh_bench.results.") for i in imports(p))
    }
    assert users == {"prh_bench.cli", "prh_bench"}


PLUGINS = Path(__file__).parents[1] / "plugins"


def test_the_built_in_plugins_import_only_the_plugin_api() -> None:
    """They imported 11 engine modules, internals included (store.entry_lock, features.cache_root), and CONTRIBUTING
    holds them up as the model for third-party plugins: prh_bench.plugin is the whole of what a plugin may use."""
    seen = {}
    for path in PLUGINS.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [node.module or ""]
                if isinstance(node, ast.ImportFrom) and not node.level
                else [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else []
            )
            for name in names:
                if (
                    name.startswith("prh_bench")
                    and name != "prh_bench.plugin"
                    and not name.startswith("prh_bench.plugins")
                ):
                    seen[f"{path.relative_to(PLUGINS)}:{node.lineno}"] = name
    assert seen == {}
    import prh_bench.plugin as api

    assert [n for n in api.__all__ if not hasattr(api, n)] == []


def test_the_changelog_records_every_data_format_version() -> None:
    """Each file format the harness writes has its current version in CHANGELOG.md's table."""
    from prh_bench import cache_files, features, score_job
    from prh_bench.results import baseline, pair_records, run_record, submission

    table = (Path(__file__).parents[1] / "CHANGELOG.md").read_text(encoding="utf-8")
    for constant, value in (
        ("features.CACHE_FORMAT", features.CACHE_FORMAT),
        ("cache_files.STORE_FORMAT", cache_files.STORE_FORMAT),
        ("score_job.PAIR_FORMAT", score_job.PAIR_FORMAT),
        ("results.pair_records.RESULTS_FORMAT", pair_records.RESULTS_FORMAT),
        ("results.run_record.RUN_FORMAT", run_record.RUN_FORMAT),
        ("results.baseline.FORMAT", baseline.FORMAT),
        ("results.submission.SUBMISSION_FORMAT", submission.SUBMISSION_FORMAT),
    ):
        row = next((line for line in table.splitlines() if line.startswith(f"| `{constant}` |")), None)
        assert row is not None, constant
        assert f"{value}: " in row.split("|")[3], (constant, value)


def test_the_version_is_written_once() -> None:
    """pyproject.toml reads it from prh_bench.__version__; CITATION.cff, the one other place, must agree."""
    import re

    import prh_bench

    root = Path(__file__).parents[1]
    assert 'dynamic = ["version"]' in (root / "pyproject.toml").read_text(encoding="utf-8")
    cited = re.search(r"^version: (\S+)$", (root / "CITATION.cff").read_text(encoding="utf-8"), re.M)
    assert cited is not None and cited.group(1) == prh_bench.__version__


def test_measured_figures_in_the_docs_come_from_their_benchmark() -> None:
    """Each docs/measured/NAME.md a page includes exists, is written by benchmarks/NAME.py (`--record`), and says
    the command, the commit and the machine's load it was measured under."""
    root = Path(__file__).parents[1]
    included = {
        m
        for page in (root / "docs").glob("*.md")
        for m in re.findall(r'--8<-- "docs/measured/([a-z_]+)\.md"', page.read_text(encoding="utf-8"))
    }
    assert included >= {"chance_levels", "bench_align", "bench_memory", "bench_extract_memory"}
    for name in included:
        bench = (root / "benchmarks" / f"{name}.py").read_text(encoding="utf-8")
        assert f'recorded("{name}", args.record)' in bench
        text = (root / "docs" / "measured" / f"{name}.md").read_text(encoding="utf-8")
        assert text.startswith(f"`python benchmarks/{name}.py") and "--record` at " in text and "load average" in text
