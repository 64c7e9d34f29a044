"""Files of the cache: safetensors (no pickle) written atomically with a checksum of their tensors, read back
only when the checksum matches, and per-entry locks so that concurrent runs sharing a cache compute an entry
once.

A writer killed at any point leaves either the old entry or the complete new one under the final name (the
data goes to a temporary file that is renamed into place), plus at worst a temporary file that the next
writer in that folder removes. A reader that finds a truncated or altered file gets `CorruptEntry`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import tempfile
from pathlib import Path

import torch
from filelock import FileLock

log = logging.getLogger(__name__)
CHECKSUM_FIELD = "sha256"
_TMP = f".tmp-{socket.gethostname()}-"  # temporary files name their host and writer pid


class CorruptEntry(Exception):
    """A cache file that cannot be read or whose tensors do not match their checksum."""


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over the names, dtypes, shapes and raw bytes of the tensors, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_temporaries(folder: Path) -> None:
    """Remove temporary files left in `folder` by writers on this host that no longer run (killed mid-write)."""
    for tmp in folder.glob(f"{_TMP}*"):
        pid = tmp.name[len(_TMP):].split("-", 1)[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)


def write_entry(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write tensors and string metadata to `path` atomically, with their checksum in the metadata."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_temporaries(path.parent)
    tensors = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
    meta = {**metadata, CHECKSUM_FIELD: tensors_digest(tensors)}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{_TMP}{os.getpid()}-", suffix=".safetensors")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        with open(tmp, "rb+") as f:  # on disk before the rename: a crash cannot expose an empty file
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_entry(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors and the metadata of an entry; `CorruptEntry` when unreadable or not matching its checksum."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (safe_open is no dict)
    except Exception as exc:  # noqa: BLE001 (a truncated file fails in many ways inside safetensors)
        raise CorruptEntry(f"unreadable ({type(exc).__name__}: {exc})") from None
    if CHECKSUM_FIELD not in meta:
        raise CorruptEntry("no checksum (written by an older prh-bench)")
    if tensors_digest(tensors) != meta[CHECKSUM_FIELD]:
        raise CorruptEntry("checksum mismatch (the file was altered or partly overwritten)")
    return tensors, meta


def read_valid(path: Path, what: str) -> tuple[dict[str, torch.Tensor], dict[str, str]] | None:
    """The entry at `path`, or None when it is absent or corrupt (then with a warning: it will be recomputed)."""
    if not path.exists():
        return None
    try:
        return read_entry(path)
    except CorruptEntry as exc:
        log.warning("%s %s is corrupt: %s; recomputing", what, path, exc)
        return None


def entry_lock(path: Path) -> FileLock:
    """An exclusive lock for computing the entry at `path`. The operating system releases it when its holder
    dies, so a killed run never blocks the next one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path) + ".lock")
