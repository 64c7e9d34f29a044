"""Figures the documentation quotes come from here, not from hand: run a benchmark with `--record` and what it
prints is written to docs/measured/NAME.md together with the conditions it ran under (command, commit, time,
CPU cores, load average before and after: a wall time measured beside other work can be 3-5x the quiet one).
The documentation pages include those files.

    with recorded("chance_levels", args.record):
        ...  # print the figures
"""

from __future__ import annotations

import contextlib
import io
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import torch

DOCS = Path(__file__).parents[1] / "docs" / "measured"


def _commit() -> str:
    """HEAD, and whether the code (not the documentation these files go into) differs from it."""
    root = DOCS.parents[1]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True, cwd=root
        )
        code = subprocess.run(
            ["git", "diff", "--quiet", "HEAD", "--", "harness", "plugins", "registry", "benchmarks"],
            cwd=root,
            check=False,
        )
    except (OSError, subprocess.CalledProcessError):
        return "an unknown commit"
    return head.stdout.strip() + (" with uncommitted changes to the code" if code.returncode else "")


class _Tee(io.TextIOBase):
    """Writes to the terminal and keeps a copy."""

    def __init__(self, out: io.TextIOBase) -> None:
        self.out, self.copy = out, io.StringIO()

    def write(self, text: str) -> int:
        self.copy.write(text)
        return self.out.write(text)

    def flush(self) -> None:
        self.out.flush()


@contextlib.contextmanager
def recorded(name: str, record: bool) -> Iterator[None]:
    """Everything printed inside, also written to docs/measured/NAME.md with its conditions when `record`."""
    if not record:
        yield
        return
    before, started = os.getloadavg(), datetime.now(UTC)
    tee = _Tee(sys.stdout)  # type: ignore[arg-type]
    with contextlib.redirect_stdout(tee):
        yield
    after = os.getloadavg()
    command = "python " + shlex.join(["benchmarks/" + Path(sys.argv[0]).name, *sys.argv[1:]])
    busy = before[0] > 0.5 * (os.cpu_count() or 1)  # before: the benchmark's own work is in the load after
    conditions = (
        f"`{command}` at {_commit()}, {started:%Y-%m-%d %H:%M} UTC; {os.cpu_count()} CPU cores "
        f"({platform.processor() or platform.machine()}), torch {torch.__version__} with {torch.get_num_threads()} "
        f"threads; load average {before[0]:.1f} before, {after[0]:.1f} after"
        + (
            ": other work shared the machine, so wall times are inflated; ratios measured side by side hold better."
            if busy
            else "."
        )
    )
    DOCS.mkdir(parents=True, exist_ok=True)
    text = tee.copy.getvalue().rstrip()
    (DOCS / f"{name}.md").write_text(f"{conditions}\n\n```text\n{text}\n```\n", encoding="utf-8")
    print(f"\nrecorded in {DOCS / (name + '.md')}", file=sys.__stdout__)
