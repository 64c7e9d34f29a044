"""The command as people type it: global options after the verb, --version, python -m, clear refusals, output
that is safe to paste and free of escape codes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from .conftest import cli, write_yaml
from .test_cache import tiny_registry


def test_global_options_are_accepted_after_the_verb(tmp_path: Path) -> None:
    reg = tiny_registry(tmp_path / "reg")
    result = cli("ls", "suites", "--registry", reg, "--offline")
    assert result.exit_code == 0 and "tiny-suite" in result.output
    result = cli("show", "tiny-suite", f"--registry={reg}")
    assert result.exit_code == 0 and "tiny-suite" in result.output
    assert cli("validate", "-q").exit_code == 0


def test_version_and_python_dash_m() -> None:
    from importlib.metadata import version

    assert cli("--version").output.strip() == f"prh-bench, version {version('prh-bench')}"
    done = subprocess.run(
        [sys.executable, "-m", "prh_bench", "ls", "metrics"], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0 and "mutual_knn" in done.stdout


def test_a_run_writes_no_escape_codes_when_output_is_not_a_terminal(tmp_path: Path) -> None:
    reg = tiny_registry(tmp_path / "reg")
    env = os.environ | {"PRH_BENCH_CACHE": str(tmp_path / "cache")}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "prh_bench",
            "--registry",
            str(reg),
            "run",
            "--suite",
            "tiny-suite",
            "--out",
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "\x1b[" not in done.stdout + done.stderr and "\r" not in done.stdout + done.stderr


def test_runs_started_together_get_their_own_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from prh_bench.results.run_folder import new_run_dir

    monkeypatch.chdir(tmp_path)
    folders = {new_run_dir(tmp_path / "prh-runs" / "s") for _ in range(50)}
    assert len(folders) == 50 and all(f.is_dir() for f in folders)


def test_leaderboard_refuses_a_run_of_another_suite(tmp_path: Path) -> None:
    reg = tiny_registry(tmp_path / "reg")
    assert cli("--registry", reg, "run", "--suite", "tiny-suite", "--out", tmp_path / "run").exit_code == 0
    result = cli("leaderboard", "--suite", "pocket", "--run", tmp_path / "run", "--out", tmp_path / "lb")
    assert result.exit_code == 2 and "is a run of suite 'tiny-suite', not 'pocket'" in result.stderr
    assert not (tmp_path / "lb").exists()


def test_unknown_plugin_names_are_reported(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    from prh_bench.manager import load_plugins

    monkeypatch.setenv("PRH_BENCH_PLUGINS", "nosuch")
    plugins = load_plugins()
    assert "mutual_knn" in plugins.metrics  # built-ins still load
    assert "PRH_BENCH_PLUGINS names 'nosuch', but no installed package has a prh_bench entry point" in caplog.text


def test_markdown_outputs_escape_what_users_wrote(tmp_path: Path) -> None:
    from prh_bench.results.report import md_table, md_text

    assert md_text("a|b <script>x</script> [link](http://e) `code` *em*\nnext") == (
        "a\\|b \\<script\\>x\\</script\\> \\[link\\](http://e) \\`code\\` \\*em\\* next"
    )
    table = md_table(pd.DataFrame({"model": ["x|y"], "score": [0.5]}))
    assert table.splitlines()[2].count("|") == 4  # the cell's pipe does not open a column
    scores = write_yaml(
        tmp_path / "reg" / "scores.yaml",
        """\
kind: scores
id: evil-scores
version: 1
name: evil
source: "<img src=x onerror=alert(1)> | [click](http://evil)"
values: {tiny-a: 0.5, tiny-b: 0.7}
""",
    )
    reg = tiny_registry(tmp_path / "reg")
    write_yaml(reg / "suite.yaml", (reg / "suite.yaml").read_text() + "scores: [evil]\nreference: tiny-a\n")
    assert cli("--registry", reg, "run", "--suite", "tiny-suite", "--out", tmp_path / "run").exit_code == 0
    board = cli(
        "--registry", reg, "leaderboard", "--suite", "tiny-suite", "--run", tmp_path / "run", "--out", tmp_path / "lb"
    )
    assert board.exit_code == 0, board.output
    md = (tmp_path / "lb" / "leaderboard.md").read_text()
    assert not re.search(r"(?<!\\)[<>|\[]", md.split("## Sources")[1])  # nothing unescaped in the user's text
    assert "\\<img src=x onerror=alert(1)\\> \\| \\[click\\](http://evil)" in md
    assert scores.exists()


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["ls", "models"],
        ["show", "resnet18-random"],
        ["show", "glove-6b-50d"],
        ["show", "pocket"],
        ["show", "mutual_knn"],
        ["validate"],
        ["publish", "--suite", "pocket", "--to", "{tmp}"],
    ],
)
def test_light_commands_import_no_torch(tmp_path: Path, args: list[str]) -> None:
    """The README promises that reading manifests and copying bundles never import torch (`show MODEL` and
    `publish` did: 2-4 s and 0.75-0.94 GB). A fresh process, as a user runs them."""
    code = (
        "import sys; from prh_bench.cli import main\n"
        "try: main(sys.argv[1:])\nexcept SystemExit as e: code = e.code\n"
        "print('HEAVY', sorted(m for m in ('torch', 'timm', 'transformers', 'open_clip') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, *(a.format(tmp=tmp_path) for a in args)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[1],
        timeout=120,
    )
    assert "HEAVY []" in done.stdout, done.stdout[-500:] + done.stderr[-2000:]
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(("given", "expected"), [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_idle_openmp_threads_sleep_unless_the_user_says_otherwise(given: str | None, expected: str) -> None:
    """Spinning OpenMP threads made pocket's scoring 3x slower beside busy processes (benchmarks/bench_threads.py):
    the command sets OMP_WAIT_POLICY=PASSIVE before torch is imported, and keeps a value the user set."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"} | (
        {"OMP_WAIT_POLICY": given} if given else {}
    )
    code = (
        "import os, sys; from prh_bench.cli import main\n"
        "try: main(['ls', 'suites'])\nexcept SystemExit: pass\n"
        "import torch; print('POLICY', os.environ['OMP_WAIT_POLICY'])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert f"POLICY {expected}" in done.stdout, done.stderr[-2000:]
