"""Files of the cache: safetensors (no pickle) written atomically with a checksum, read back only when the
checksum matches, and per-entry locks so that concurrent runs sharing a cache compute an entry once.

The checksum covers the tensors and every metadata field, and the metadata names the entry (its file name,
which is its key): a file whose layer names were edited, or that was copied or linked under another key, is
never read as valid. A writer killed at any point leaves either the old entry or the complete new one under
the final name (the data goes to a temporary file that is renamed into place), plus at worst a temporary file
that a later writer removes once no writer is busy in that folder. A reader that finds a truncated, altered
or misplaced file gets `CorruptEntry`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from .errors import BadInput, PrhBenchError
from .lazy import torch

log = logging.getLogger(__name__)
CHECKSUM_FIELD = "sha256"  # over the tensors and the metadata
META_FIELD = "meta_sha256"  # over the metadata alone: headers are checked without reading the data
ENTRY_FIELD = "entry"  # the file name the entry was written under
STORE_FORMAT = "3"  # 3: metadata and entry name inside the checksum
TEMP_PREFIX = ".tmp-"  # a file being written; never read as an entry
TEMP_GLOB = ".tmp"  # ours and the temporary files safetensors writes before renaming (".tmpXXXXXX")
WRITERS_LOCK = ".writers.lock"  # per folder: writers hold it shared, a sweep exclusive
ENV_LOCK_TIMEOUT = "PRH_BENCH_LOCK_TIMEOUT"
DEFAULT_LOCK_TIMEOUT_S = 4 * 3600.0  # longer than any one extraction or tile of pair scores should take
_ANNOUNCE_AFTER_S = 5.0


class CorruptEntry(PrhBenchError):
    """A cache file that cannot be read, does not match its checksum, or is stored under another name."""


class CacheUnwritable(PrhBenchError):
    """The cache cannot be written (read-only, disk full, deleted); the message names the file."""


def inside(root: Path, *parts: str) -> Path:
    """root/parts..., refused when it would leave root (a name with '..' or a path separator)."""
    path = root.joinpath(*parts)
    if any(p in ("", ".", "..") or "/" in p or "\\" in p for p in parts) or not path.resolve().is_relative_to(
        root.resolve()
    ):
        raise BadInput(f"{'/'.join(parts)!r} would lead outside the cache folder {root}")
    return path


def dense(t: torch.Tensor) -> torch.Tensor:
    """The tensor on the CPU in row-major order, copied only when needed. `contiguous()` alone keeps a size-1
    dimension's stride as it was (one score taken from a transposed slice has strides (1, 2)), and such a tensor
    cannot be viewed as bytes."""
    t = t.detach().cpu().contiguous()
    return t if t.reshape(-1).stride(0) == 1 else t.clone(memory_format=torch.contiguous_format)


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over the names, dtypes, shapes and raw bytes of the tensors, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = dense(tensors[name])
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def _meta_digest(meta: dict[str, str]) -> str:
    body = {k: v for k, v in meta.items() if k not in (CHECKSUM_FIELD, META_FIELD)}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _checksum(tensors_sha: str, meta_sha: str) -> str:
    return hashlib.sha256(f"{tensors_sha}|{meta_sha}".encode()).hexdigest()


def _folder_lock(folder: Path) -> int:
    """An open descriptor on the folder's writers lock (created on first use; never removed)."""
    return os.open(folder / WRITERS_LOCK, os.O_RDWR | os.O_CREAT, 0o644)


def sweep_temporaries(folder: Path) -> bool:
    """Remove the temporary files in `folder` when no writer is writing there (see `_sweep`). True when swept."""
    fd = _folder_lock(folder)
    try:
        return _sweep(fd, folder)
    finally:
        os.close(fd)


def _sweep(lock: int, folder: Path) -> bool:
    """With `lock` open on the folder's writers lock: every writer holds it shared while its temporary file
    exists, and the kernel drops the lock when the writer dies (whatever its host name, PID or PID namespace), so
    a temporary file found while the lock can be taken exclusively is a killed writer's. The lock is on the
    folder, not on the temporary file, because a writer may replace its temporary file by a new inode
    (safetensors 0.8 writes its own temporary file and renames it over the path it is given). Returns with the
    exclusive lock held when it swept."""
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False  # a live writer is in this folder: its files are not orphans
    for tmp in folder.glob(f"{TEMP_GLOB}*"):
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            tmp.unlink()
    return True


def _fsync(path: Path | str) -> None:
    """fsync a file or a folder (a folder's entries: a rename into it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


#: what an unwritable file is, and where else to write, for a cache entry (the default)
CACHE_FILE = ("cache entry", "point PRH_BENCH_CACHE at a writable folder")


def _unwritable(path: Path, exc: OSError, kind: tuple[str, str] = CACHE_FILE) -> CacheUnwritable:
    what, elsewhere = kind
    reason = {
        errno.ENOSPC: "the disk is full",
        errno.EROFS: "the file system is read-only",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
        errno.ENOENT: "its folder vanished (was the cache deleted during the run?)",
    }.get(exc.errno or 0, exc.strerror)
    return CacheUnwritable(f"cannot write the {what} {path}: {reason}. Free space, fix the permissions, or {elsewhere}")


@contextlib.contextmanager
def atomic_file(path: Path, suffix: str, kind: tuple[str, str] = CACHE_FILE) -> Iterator[str]:
    """A temporary path beside `path` for the block to write (the block may replace the file there), synced and
    renamed onto `path` when the block ends, then the folder synced: a crash cannot expose an empty or half
    file, and a finished entry survives a power cut. Removed when the block fails. A writer killed inside the
    block leaves only temporary files, which the next writer to find the folder idle removes (see
    `sweep_temporaries`). An OSError (full disk, read-only folder) is CacheUnwritable naming `path` as `kind`
    says."""
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = _folder_lock(folder)
    except OSError as exc:
        raise _unwritable(path, exc, kind) from None
    tmp = ""
    try:
        _sweep(lock, folder)
        fcntl.flock(lock, fcntl.LOCK_SH)  # (from exclusive, if swept) held while our temporary file exists
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=TEMP_PREFIX, suffix=suffix)
        os.close(fd)
        yield tmp
        _fsync(tmp)  # the file now at tmp, whichever inode the block left there
        os.replace(tmp, path)
        _fsync(folder)  # the rename itself
    except OSError as exc:
        raise _unwritable(path, exc, kind) from None
    finally:
        if tmp and os.path.exists(tmp):
            os.unlink(tmp)
        os.close(lock)


def sync_tree(folder: Path) -> None:
    """fsync every file under `folder` and the folders themselves, before the folder is renamed into place."""
    for path in [*folder.rglob("*"), folder]:
        _fsync(path)


def write_entry(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write tensors and string metadata to `path` atomically, checksummed and bound to the file name."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    tensors = {name: dense(t) for name, t in tensors.items()}
    meta = {**metadata, ENTRY_FIELD: path.name, "store_format": STORE_FORMAT}
    meta[META_FIELD] = _meta_digest(meta)
    meta[CHECKSUM_FIELD] = _checksum(tensors_digest(tensors), meta[META_FIELD])
    try:
        with atomic_file(path, ".safetensors") as tmp:
            save_file(tensors, tmp, metadata=meta)
    except SafetensorError as exc:  # safetensors reports a failed write (e.g. ENOSPC) as its own error
        raise CacheUnwritable(
            f"cannot write the cache entry {path}: {exc}. Free space or point PRH_BENCH_CACHE at another folder"
        ) from None


def _check_meta(path: Path, meta: dict[str, str]) -> None:
    if meta.get("store_format") != STORE_FORMAT or CHECKSUM_FIELD not in meta:
        raise CorruptEntry("written by another prh-bench version (no checksum over its metadata)")
    if meta.get(META_FIELD) != _meta_digest(meta):
        raise CorruptEntry("its metadata (layer names, key, ...) was altered")
    if meta.get(ENTRY_FIELD) != path.name:
        raise CorruptEntry(f"stored under another key (written as {meta.get(ENTRY_FIELD)!r}, found as {path.name!r})")


def read_header(path: Path) -> dict[str, str]:
    """The metadata of an entry, checked against its own checksum and the file name, without reading data."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:  # noqa: BLE001 (a truncated file fails in many ways inside safetensors)
        raise CorruptEntry(f"unreadable ({type(exc).__name__}: {exc})") from None
    _check_meta(path, meta)
    return meta


def read_entry(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors and the metadata of an entry; `CorruptEntry` when unreadable, not matching its checksum or
    stored under another name."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (safe_open is no dict)
    except Exception as exc:  # noqa: BLE001 (a truncated file fails in many ways inside safetensors)
        raise CorruptEntry(f"unreadable ({type(exc).__name__}: {exc})") from None
    _check_meta(path, meta)
    if _checksum(tensors_digest(tensors), meta[META_FIELD]) != meta[CHECKSUM_FIELD]:
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


def lock_timeout() -> float:
    raw = os.environ.get(ENV_LOCK_TIMEOUT)
    try:
        value = float(raw) if raw else DEFAULT_LOCK_TIMEOUT_S
    except ValueError:
        raise PrhBenchError(f"{ENV_LOCK_TIMEOUT}={raw!r}: expected a number of seconds") from None
    if not value > 0:
        raise PrhBenchError(f"{ENV_LOCK_TIMEOUT}={raw!r}: expected a positive number of seconds")
    return value


@contextlib.contextmanager
def entry_lock(path: Path) -> Iterator[None]:
    """An exclusive lock for computing the entry at `path`. The operating system releases it when its holder
    dies, so a killed run never blocks the next one; a live holder (another run computing the same entry, or a
    stopped one) is waited for with a message, up to $PRH_BENCH_LOCK_TIMEOUT seconds, then it is an error."""
    lock_path = Path(str(path) + ".lock")
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(lock_path))
        try:
            lock.acquire(timeout=_ANNOUNCE_AFTER_S)
        except Timeout:
            limit = lock_timeout()
            log.warning(
                "waiting for %s: another prh-bench run is computing this entry (giving up after %g s)", lock_path, limit
            )
            try:
                lock.acquire(timeout=max(0.0, limit - _ANNOUNCE_AFTER_S))
            except Timeout:
                raise PrhBenchError(
                    f"gave up after {limit:g} s waiting for {lock_path}: another process holds it (a run still "
                    f"computing this entry, or a stopped one). Let it finish or end it; set {ENV_LOCK_TIMEOUT} to "
                    "wait longer"
                ) from None
    except OSError as exc:
        raise _unwritable(lock_path, exc) from None
    try:
        yield
    finally:
        lock.release()
