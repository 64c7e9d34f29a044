"""Writing pair records into a results folder, all or nothing, one writer at a time.

A merge holds the folder's merge lock for its whole read-check-write, so two merges into one store serialise
and each checks its conflicts against what the other wrote. Before it writes, every target path is checked
(inside the folder, no link, no file where a folder must be) and the whole change, each file's old and new
text, goes to a journal (written atomically). The files are then replaced one by one:
- an error while writing (a full disk) puts every file back as the journal had it, and removes the journal;
- a merge killed while writing leaves the journal, and the next merge or reader of that folder completes it
  under the lock before it reads anything.
So a reader sees the folder as before a merge or as after it.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ..errors import BadInput, PrhBenchError
from ..store import CacheUnwritable, atomic_file, entry_lock
from ..textfile import read_text
from .pairs import PairRecord, describe, disagreement, read_records, record_path, scan
from .run_folder import RUN_RECORD

JOURNAL = ".merge-journal.json"
LOCK = ".merge"  # entry_lock adds ".lock"
RESULTS_FILE = ("results file", "merge into another folder")


def merge(sources: list[Path], store: Path) -> dict[str, int]:
    """Fold the records of run folders or stores into `store`. All or nothing: any record that disagrees with
    the store or with another source on a version, a checksum, its scores or its permutation null is bad input
    naming both, and nothing is written. A record the store holds without a null gains the source's null."""
    if (store / RUN_RECORD).exists():
        raise BadInput(f"{store} is a run folder: its results belong to its run. Merge into a folder of its own "
                       f"(e.g. `prh-bench merge {store} --into STORE`)")
    if any(s.resolve() == store.resolve() for s in sources):
        raise BadInput(f"{store} is both a source and the store to merge into")
    store.mkdir(parents=True, exist_ok=True)
    with locked(store):
        have = scan(store)
        new: dict[tuple[str, ...], tuple[PairRecord, Path]] = {}
        conflicts, same, nulls = [], 0, 0
        for source in sources:
            for ident, (rec, path) in scan(source).items():
                seen = new.get(ident) or have.get(ident)
                if seen is None:
                    new[ident] = (rec, path)
                elif why := disagreement(seen[0], rec):
                    conflicts.append(f"{describe(rec)}: {why}\n    {seen[1]}\n    {path}")
                elif seen[0].calibration is None and rec.calibration is not None:
                    nulls += ident in have and ident not in new
                    new[ident] = (seen[0].model_copy(update={"calibration": rec.calibration}), path)
                else:
                    same += 1
        if conflicts:
            more = f"\n  ... and {len(conflicts) - 10} more" if len(conflicts) > 10 else ""
            raise BadInput(f"refusing to merge: {len(conflicts)} record(s) disagree with what {store} or another "
                           "source holds (different versions, feature checksums, scores or nulls mean different "
                           "results; rerun one side with the other's code and manifests):\n  "
                           + "\n  ".join(conflicts[:10]) + more)
        files = write_records(store, (rec for rec, _ in new.values()), locked_already=True)
    return {"added": len(new) - nulls, "nulls_added": nulls, "already_present": same, "files": files}


def write_records(root: Path, records: Iterable[PairRecord], locked_already: bool = False) -> int:
    """Records into their files under root (added to what a file holds, one per identity), all or nothing;
    how many files changed."""
    by_file: dict[Path, list[PairRecord]] = {}
    for rec in records:
        by_file.setdefault(record_path(root, rec.condition.label, rec.model_x.id, rec.model_y.id), []).append(rec)
    if not by_file:
        return 0
    with contextlib.nullcontext() if locked_already else locked(root):
        changes: dict[str, dict[str, Any]] = {}
        for path, recs in by_file.items():
            check_target(root, path)
            old_text = read_text(path, RESULTS_FILE[0]) if path.exists() else None
            old = {r.identity(): r for r in (read_records(path) if old_text is not None else [])}
            old.update({r.identity(): r for r in recs})
            changes[path.relative_to(root).as_posix()] = {
                "old": old_text, "new": json.dumps([r.model_dump(mode="json") for r in old.values()], indent=1)}
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
    return len(by_file)


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
        raise PrhBenchError(f"{journal}: an interrupted merge's journal that cannot be read ({exc}); remove it "
                            "and check the store with `prh-bench merge` again") from None
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
    with atomic_file(path, ".json", RESULTS_FILE) as tmp:
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
