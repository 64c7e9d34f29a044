"""Reading a small text file that a user or another machine handed us (a manifest, a results record, a run
record): only a regular file, at most a stated size, so that a FIFO never hangs a command and a link to
/dev/zero never fills the memory."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .errors import BadInput

MAX_BYTES = 64 << 20  # a results file of a 78-model zoo pair holds a few hundred KiB


def read_text(path: Path, what: str, max_bytes: int = MAX_BYTES) -> str:
    """The UTF-8 text of `path`; BadInput naming the file when it is not a regular file, is larger than
    `max_bytes` or is not UTF-8. OSError (absent, unreadable) is left to the caller."""
    # O_NONBLOCK: opening a FIFO does not wait for a writer; what was opened is checked before anything is read
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(mode := os.fstat(fd).st_mode):
            raise BadInput(f"{path}: not a regular file (a {_kind(mode)}); a {what} must be a plain file")
        chunks: list[bytes] = []
        while sum(map(len, chunks)) <= max_bytes and (chunk := os.read(fd, 1 << 20)):
            chunks.append(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > max_bytes:
        raise BadInput(f"{path}: larger than {max_bytes >> 20} MiB; not a {what}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadInput(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); not a {what}") from None


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISDIR, "folder"),
    ):
        if test(mode):
            return name
    return "special file"
