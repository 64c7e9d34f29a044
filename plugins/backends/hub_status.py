"""Whether a model's weights are on this machine, without loading them: local files, the Hugging Face cache."""

from __future__ import annotations

import os

from prh_bench.features import cache_root
from prh_bench.manifest import ModelManifest, PathWeights, RandomWeights, UrlWeights
from prh_bench.weights import resolve_path


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


def hub_file_status(repo: str, filenames: tuple[str, ...], revision: str | None = None) -> str:
    from huggingface_hub import try_to_load_from_cache

    for name in filenames:
        if isinstance(try_to_load_from_cache(repo, name, revision=revision), str):
            return "local"
    return f"unavailable: {repo} is not in the Hugging Face cache and the hub is off" if offline() else "download"


def checkpoint_status(m: ModelManifest) -> str | None:
    """The status of random and checkpoint weights; None for 'pretrained' (the backend knows where those live)."""
    w = m.weights
    if isinstance(w, RandomWeights):
        return "local"
    if isinstance(w, PathWeights):
        try:
            resolve_path(w.path, m.id)
            return "local"
        except Exception as exc:
            note = f" ({w.source_note})" if w.source_note else ""
            return f"unavailable: {exc}{note}"
    if isinstance(w, UrlWeights):
        folder = cache_root() / "weights"
        found = any(p.name == w.url.rsplit("/", 1)[-1] for p in folder.rglob("*")) if folder.exists() else False
        return "local" if found else ("unavailable: URL download needs network" if offline() else "download")
    return None
