"""All-or-nothing changes to a results folder. Before anything is written, every target path is checked (inside
the folder, no link, no file where a folder must be) and the whole change, each file's old and new text, goes to
a journal (written atomically). The files are then replaced one by one:
- an error while writing (a full disk) puts every file back as the journal had it, and removes the journal;
- a writer killed while writing leaves the journal, and the next writer or reader of that folder completes it
  under the folder's lock before it reads anything.
So a reader sees the folder as before a change or as after it.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..cache_files import CacheUnwritable, atomic_file, entry_lock
from ..errors import BadInput, PrhBenchError
from ..textfile import read_text

JOURNAL = ".merge-journal.json"
LOCK = ".merge"  # entry_lock adds ".lock"
_KIND = ("results file", "merge into another folder")  # how atomic_file names a file it cannot write


def commit(root: Path, changes: dict[str, dict[str, Any]]) -> None:
    """Apply {relative path: {"old": text or None, "new": text}} under root, all or nothing; the caller holds
    `locked(root)` and has checked every target."""
    journal = root / JOURNAL
    _write(journal, json.dumps({"format": 1, "files": changes}))
    try:
        _apply(root, changes, "new")
    except (CacheUnwritable, OSError) as exc:
        with contextlib.suppress(CacheUnwritable, OSError):
            _apply(root, changes, "old")
            journal.unlink()
        raise CacheUnwritable(f"{exc}; the merge was undone") from None
    journal.unlink()


@contextlib.contextmanager
def locked(root: Path) -> Iterator[None]:
    """The folder's merge lock, with an interrupted merge completed first."""
    with entry_lock(root / LOCK):
        recover(root)
        yield


def recover(root: Path) -> None:
    """Complete the merge a killed process left in `root` (its journal holds every file's new text)."""
    journal = root / JOURNAL
    if not journal.exists():
        return
    try:
        changes = json.loads(read_text(journal, "merge journal"))["files"]
    except (ValueError, KeyError, TypeError) as exc:
        raise PrhBenchError(
            f"{journal}: an interrupted merge's journal that cannot be read ({exc}); remove it "
            "and check the store with `prh-bench merge` again"
        ) from None
    for rel in changes:
        check_target(root, root / rel)
    _apply(root, changes, "new")
    journal.unlink()


def pending(root: Path) -> bool:
    return (root / JOURNAL).exists()


def _apply(root: Path, changes: dict[str, dict[str, Any]], side: str) -> None:
    for rel, change in changes.items():
        path = root / rel
        if change[side] is None:
            path.unlink(missing_ok=True)
        else:
            _write(path, change[side])


def _write(path: Path, text: str) -> None:
    with atomic_file(path, ".json", _KIND) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")


def check_target(root: Path, path: Path) -> None:
    """A record's file must lie inside root, with no link on the way and no file where a folder must be."""
    rel = path.relative_to(root)
    if any(part in ("", ".", "..") for part in rel.parts):
        raise BadInput(f"{path}: a record's path may not leave {root}")
    here = root
    for i, part in enumerate(rel.parts):
        here = here / part
        try:
            mode = os.lstat(here).st_mode
        except FileNotFoundError:
            return
        last = i == len(rel.parts) - 1
        if stat.S_ISLNK(mode):
            raise BadInput(f"{here} is a link inside the results folder {root}; refusing to write through it")
        if not last and not stat.S_ISDIR(mode):
            raise BadInput(f"{here} is a file where the results folder {root} needs a folder; nothing was written")
        if last and not stat.S_ISREG(mode):
            raise BadInput(f"{here} is not a plain file; nothing was written")
