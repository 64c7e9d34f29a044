"""Where a text model's files come from: a `pkg://` resource, a local folder, or a hub id (with revision)."""

from __future__ import annotations

from pathlib import Path

from prh_bench.manifest import ModelManifest
from prh_bench.weights import PKG_SCHEME, resolve_path


def model_location(m: ModelManifest) -> str:
    if m.source.startswith(PKG_SCHEME) or Path(m.source).expanduser().exists():
        return str(resolve_path(m.source, m.id))
    return m.source


def hub_kwargs(m: ModelManifest) -> dict[str, str]:
    return {"revision": m.revision} if m.revision else {}
