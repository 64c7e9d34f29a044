from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from prh_bench.cli import main


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets an empty feature cache and never reaches a hub."""
    root = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("PRH_BENCH_CACHE", str(root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    return root


def cli(*args: str) -> Result:
    return CliRunner().invoke(main, ["--quiet", *map(str, args)], catch_exceptions=False)


def cli_json(*args: str) -> dict:
    result = cli(*args, "--json")
    assert result.exit_code in (0, 1), result.output
    return json.loads(result.stdout)


def write_yaml(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path
