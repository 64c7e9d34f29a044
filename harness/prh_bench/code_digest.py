"""Digests of the code a stored value depends on, so that editing it makes new cache keys: no stale feature
or score is read back after a change to a backend, its pooling, the preparation or a metric."""

from __future__ import annotations

import functools
import hashlib
import inspect
import sys
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType


def _module_of(obj: object) -> ModuleType | None:
    return obj if isinstance(obj, ModuleType) else sys.modules.get(getattr(obj, "__module__", "") or "")


def _ours(module: ModuleType | None, package: str) -> bool:
    return (
        module is not None
        and getattr(module, "__file__", None) is not None
        and (module.__name__ == package or module.__name__.startswith(package + "."))
    )


@functools.cache
def module_files(module: ModuleType) -> frozenset[Path]:
    """The module's file and those of the modules of its own package that it references (imports, or
    functions and classes it imports by name), transitively: a backend and its pooling and hook helpers."""
    package = module.__name__.rpartition(".")[0] or module.__name__
    seen, todo = {module}, [module]
    while todo:
        for value in vars(todo.pop()).values():
            ref = _module_of(value)
            if ref is not None and ref not in seen and _ours(ref, package):
                seen.add(ref)
                todo.append(ref)
    return frozenset(Path(inspect.getfile(m)) for m in seen)


def files_digest(files: Iterable[Path]) -> str:
    h = hashlib.sha256()
    for f in sorted(set(files)):
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def code_digest(*objs: object) -> str:
    """sha256 of the source of the modules defining `objs` (classes, functions, modules) and the modules of
    their packages that those reference."""
    files: set[Path] = set()
    for obj in objs:
        module = _module_of(obj)
        if module is not None and getattr(module, "__file__", None):
            files |= module_files(module)
    return files_digest(files)
