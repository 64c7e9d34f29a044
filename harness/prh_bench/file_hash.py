"""sha256 of files, each file version hashed once: per process, and across processes through a memo folder."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_sha256(path: Path, memo: Path | None = None) -> str:
    """The sha256 of a file, hashed once per version of it: per process, and across processes through `memo` (a
    folder of the cache), keyed by the file's path, size, inode and modification and change times. The change
    time moves on every write and cannot be set back, so an edited file is hashed anew (unless the edit keeps
    the size and falls in the file system's clock tick of the last hash); a 130 GB model folder is not hashed
    by every run."""
    real = path.resolve()
    st = real.stat()
    return _memo_sha256(real, (st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns), memo)


@functools.cache
def _memo_sha256(path: Path, stamp: tuple[int, ...], memo: Path | None) -> str:
    entry = None
    if memo is not None:
        entry = memo / hashlib.sha256(json.dumps([str(path), *stamp]).encode()).hexdigest()
        with contextlib.suppress(OSError):
            if re.fullmatch(r"[0-9a-f]{64}", known := entry.read_text().strip()):
                return known
    digest = sha256_of(path)
    if entry is not None:
        with contextlib.suppress(OSError):  # a read-only cache hashes again next time
            entry.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=entry.parent, prefix=".tmp-")
            try:
                with os.fdopen(fd, "w") as f:
                    f.write(digest)
                os.replace(tmp, entry)  # whole or absent: readers never see half a digest
            finally:
                Path(tmp).unlink(missing_ok=True)
    return digest
