"""Publishing a leaderboard bundle to a site folder (a website's or a git repository's): plain files only. Light:
it imports neither the rendering nor torch."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from ..errors import BadInput


def publish(src: Path, dest: Path) -> Path:
    """Copy a leaderboard bundle (a folder under leaderboards/) for a website or a git repository. Only plain
    files and folders are published: a link inside the bundle is refused (it would publish its target's
    content), and each file replaces what is at its place in `dest`, a link included, never a link's target."""
    target = dest / src.name
    for folder, dirs, files in os.walk(src):
        here = Path(folder)
        for name in dirs + files:
            if (here / name).is_symlink() or not ((here / name).is_dir() or (here / name).is_file()):
                raise BadInput(
                    f"{here / name}: the bundle holds a link or a special file; publish copies plain "
                    "files and folders only (rebuild the bundle with `prh-bench leaderboard`)"
                )
        out = target / here.relative_to(src)
        if out.is_symlink() or (out.exists() and not out.is_dir()):
            raise BadInput(f"{out}: expected a folder (or nothing) to publish into; it is a link or a file")
        out.mkdir(parents=True, exist_ok=True)
        for name in files:
            fd, tmp = tempfile.mkstemp(dir=out, prefix=".publish-")
            try:
                with os.fdopen(fd, "wb") as f, (here / name).open("rb") as g:
                    shutil.copyfileobj(g, f)
                os.replace(tmp, out / name)  # replaces a link at that place, not its target
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
    return target
