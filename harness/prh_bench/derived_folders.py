"""Folders derived from other files (a zip archive extracted, a GGUF checkpoint dequantised), built once into the
cache and checked at every use.

Each folder lists the sha256 of every file in it (LISTING). Every use checks the listing against the files (each
file hashed once per file version, through the cache's digest memo), so a folder that was edited, truncated or
left incomplete is rebuilt and never read. A build runs under the folder's lock into a temporary sibling, which
is synced and then renamed into place. A builder killed midway leaves only the temporary folder, which the next
builder removes.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from .cache_files import TEMP_PREFIX, entry_lock, sync_tree
from .file_hash import file_sha256, sha256_of

LISTING = ".prh-files.json"  # relative path -> sha256 of every file of the folder
log = logging.getLogger(__name__)


def derived_folder(folder: Path, build: Callable[[Path], None], memo: Path, who: str) -> Path:
    """`folder`, built by `build(tmp)` (which fills the empty folder `tmp`) unless it is intact; `memo` is the
    cache's digest memo and `who` leads the warning when an altered folder is rebuilt ("model 'x'")."""
    if intact(folder, memo):
        return folder
    with entry_lock(folder):
        if intact(folder, memo):  # built by another process while this one waited
            return folder
        if folder.exists():
            log.warning("%s: %s is incomplete or altered; rebuilding it", who, folder)
            shutil.rmtree(folder)
        tmp = folder.with_name(f"{TEMP_PREFIX}{folder.name}")
        if tmp.exists():  # a killed builder's (this one holds the lock)
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        try:
            build(tmp)
            files = {p.relative_to(tmp).as_posix(): sha256_of(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
            (tmp / LISTING).write_text(json.dumps(files, indent=1))
            sync_tree(tmp)  # the files on disk before the rename makes the folder visible
            os.replace(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def intact(folder: Path, memo: Path) -> bool:
    """Whether the folder holds exactly the files its listing names, each with its listed sha256."""
    try:
        files = json.loads((folder / LISTING).read_text())
        present = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} - {LISTING}
        return (
            isinstance(files, dict)
            and bool(files)
            and present == set(files)
            and all(file_sha256(folder / rel, memo) == sha for rel, sha in files.items())
        )
    except (OSError, ValueError):
        return False
