"""Heavy libraries, imported on first use: listing, showing and validating manifests (and `--help`) never need
them, and start in about a second instead of three (torch alone takes 1.3 s and 600 MB to import).

A module here is a stand-in that imports the real one on its first attribute access. Unlike
importlib.util.LazyLoader, type checks on the stand-in itself (pluggy inspects every name of a plugin module)
do not import it."""

from __future__ import annotations

import importlib
import types
from typing import TYPE_CHECKING, Any


class _OnFirstUse(types.ModuleType):
    def __getattr__(self, attr: str) -> Any:
        module = importlib.import_module(self.__name__)
        self.__dict__.update(module.__dict__)  # later reads are plain attribute reads
        return getattr(module, attr)


if TYPE_CHECKING:  # a checker sees the real modules
    import numpy as np
    import pandas as pd
    import torch
else:
    np = _OnFirstUse("numpy")
    pd = _OnFirstUse("pandas")
    torch = _OnFirstUse("torch")
