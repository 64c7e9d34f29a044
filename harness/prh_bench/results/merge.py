"""Writing pair records into a results folder, all or nothing, one writer at a time (journal.py): a merge
holds the folder's merge lock for its whole read-check-write, so two merges into one store serialise and each
checks its conflicts against what the other wrote."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import BadInput
from ..textfile import read_text
from .journal import check_target, commit, locked
from .pair_records import RESULTS_FILE, PairRecord, describe, disagreement, read_records, record_path, scan
from .run_folder import RUN_RECORD


def merge(sources: list[Path], store: Path, ledger: tuple[str, str] | None = None) -> dict[str, int]:
    """Fold the records of run folders or stores into `store`. All or nothing: any record that disagrees with
    the store or with another source on a version, a checksum, its scores or its permutation null is bad input
    naming both, and nothing is written. A record the store holds without a null gains the source's null.
    `ledger`: (a file of the store, a line to append to it) in the same all-or-nothing change (a verification)."""
    if (store / RUN_RECORD).exists():
        raise BadInput(
            f"{store} is a run folder: its results belong to its run. Merge into a folder of its own "
            f"(e.g. `prh-bench merge {store} --into STORE`)"
        )
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
            raise BadInput(
                f"refusing to merge: {len(conflicts)} record(s) disagree with what {store} or another "
                "source holds (different versions, feature checksums, scores or nulls mean different "
                "results; rerun one side with the other's code and manifests):\n  " + "\n  ".join(conflicts[:10]) + more
            )
        files = _write_records(store, [rec for rec, _ in new.values()], _appended(store, *ledger) if ledger else {})
    return {"added": len(new) - nulls, "nulls_added": nulls, "already_present": same, "files": files}


def write_records(root: Path, records: Iterable[PairRecord]) -> int:
    """Records into their files under root (added to what a file holds, one per identity), all or nothing,
    under the folder's lock; how many files changed."""
    with locked(root):
        return _write_records(root, records)


def _appended(root: Path, name: str, line: str) -> dict[str, dict[str, Any]]:
    """The change that appends `line` to the file `name` of root."""
    path = root / name
    check_target(root, path)
    old = read_text(path, "ledger") if path.exists() else None
    return {name: {"old": old, "new": (old or "") + line}}


def _write_records(root: Path, records: Iterable[PairRecord], also: dict[str, dict[str, Any]] | None = None) -> int:
    """write_records for a caller that holds the folder's lock; `also`: more changes of the same commit."""
    by_file: dict[Path, list[PairRecord]] = {}
    for rec in records:
        by_file.setdefault(record_path(root, rec.condition.label, rec.model_x.id, rec.model_y.id), []).append(rec)
    changes: dict[str, dict[str, Any]] = {}
    for path, recs in by_file.items():
        check_target(root, path)
        old_text = read_text(path, RESULTS_FILE) if path.exists() else None
        old = {r.identity(): r for r in (read_records(path, old_text) if old_text is not None else [])}
        old.update({r.identity(): r for r in recs})
        changes[path.relative_to(root).as_posix()] = {
            "old": old_text,
            "new": json.dumps([r.model_dump(mode="json") for r in old.values()], indent=1),
        }
    if changes or also:
        commit(root, changes | (also or {}))
    return len(changes)
