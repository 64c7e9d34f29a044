"""Reading manifests: the YAML files of registry folders, each read safely (no tags that run code, no alias
bombs, a size limit), its `include:` chain applied, validated against the schema (manifest.py) with errors that
name the file and the field, and a relative checkpoint path made relative to its folder."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from pydantic import TypeAdapter, ValidationError

from .errors import BadInput, ManifestError
from .manifest import KINDS, Manifest, ModelManifest, PathWeights
from .textfile import read_text

#: manifests are small documents: one whose aliases expand beyond this many nodes is refused before anything
#: walks it (a "billion laughs" document of 400 bytes expands to billions)
MAX_EXPANDED_NODES = 100_000
_ADAPTER: TypeAdapter[Manifest] = TypeAdapter(Manifest)


def manifest_files(paths: Iterable[Path]) -> list[Path]:
    """YAML files under folders (recursively, skipping templates/ and the "_" fragments that manifests include)
    or given directly."""
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            files.extend(
                f
                for f in sorted(p.rglob("*.y*ml"))
                if "templates" not in f.relative_to(p).parts and not f.name.startswith("_")
            )
        else:
            files.append(p)
    return files


def _format_error(path: Path, err: Any) -> str:
    loc = [str(p) for p in err["loc"]]
    # Drop the discriminator tag and union member names pydantic puts in the location.
    if loc and loc[0] in KINDS:
        loc = loc[1:]
    if loc[:1] == ["weights"] and loc[1:2] and loc[1] in ("pretrained", "none", "random", "path", "url", "parts"):
        del loc[1]  # the weights variant's tag, not a field
    loc = [p for p in loc if p != "TagQuery"]
    field = ".".join(loc) or "(top level)"
    kind = err["type"]
    if kind == "extra_forbidden":
        what = "unknown field (misspelled?)"
    elif kind == "missing":
        what = "required field is missing"
    elif kind == "union_tag_invalid":
        what = f"expected kind to be one of {', '.join(KINDS)}, got {err.get('input')!r}"
    else:
        what = f"{err['msg']}, got {err.get('input')!r}"
    return f"{path}: field '{field}': {what}"


def parse_manifest(data: Any, path: Path) -> Manifest:
    """Validate one decoded YAML document; raise ManifestError naming the file and each bad field."""
    if not isinstance(data, dict):
        raise ManifestError([f"{path}: expected a mapping with 'kind' and 'id', got {type(data).__name__}"])
    if "kind" not in data:
        raise ManifestError([f"{path}: field 'kind': required field is missing (one of {', '.join(KINDS)})"])
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as exc:
        problems = list(dict.fromkeys(_format_error(path, e) for e in exc.errors()))
        raise ManifestError(problems, data) from None


def expanded_nodes(node: yaml.Node, limit: int) -> int:
    """How many nodes the document has once its aliases are expanded (shared nodes counted at every use),
    without expanding them; counting stops past `limit`."""
    sizes: dict[int, int] = {}

    def size(n: yaml.Node) -> int:
        if id(n) in sizes:
            return sizes[id(n)]
        sizes[id(n)] = limit + 1  # a node inside itself (a recursive alias) is too big
        total = 1
        if isinstance(n, yaml.SequenceNode):
            children = n.value
        elif isinstance(n, yaml.MappingNode):
            children = [c for pair in n.value for c in pair]
        else:
            children = []
        for child in children:
            total += size(child)
            if total > limit:
                break
        sizes[id(n)] = min(total, limit + 1)
        return sizes[id(n)]

    return size(node)


def safe_yaml(text: str, path: Path) -> Any:
    """yaml.safe_load, refusing documents whose aliases expand beyond MAX_EXPANDED_NODES nodes."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if expanded_nodes(node, MAX_EXPANDED_NODES) > MAX_EXPANDED_NODES:
            raise ManifestError(
                [
                    f"{path}: its aliases expand to more than {MAX_EXPANDED_NODES:,} nodes; a manifest "
                    "is a small document (is this a YAML alias bomb?)"
                ]
            )
        return loader.construct_document(node)
    finally:
        loader.dispose()


#: a manifest may start from another file (`include: NAME`, relative to it, inside its folder): the including
#: file's fields override the included ones, mappings merged key by key (as lm-evaluation-harness task YAMLs do).
#: Files whose name starts with "_" are such fragments, not manifests.
INCLUDE = "include"
MAX_MANIFEST_BYTES = 1 << 20


def read_yaml(path: Path) -> Any:
    """One YAML file, safely (no tags that run code, no alias bombs); ManifestError naming the file otherwise."""
    try:
        text = read_text(path, "manifest", MAX_MANIFEST_BYTES)
    except OSError as exc:
        raise ManifestError([f"{path}: cannot read: {exc.strerror}"]) from None
    except BadInput as exc:
        raise ManifestError([str(exc)]) from None
    try:
        return safe_yaml(text, path)
    except yaml.YAMLError as exc:
        raise ManifestError([f"{path}: not valid YAML: {exc}"]) from None
    except RecursionError:
        raise ManifestError([f"{path}: nested too deeply to be a manifest"]) from None


def merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def resolve_includes(data: Any, path: Path, seen: tuple[Path, ...] = ()) -> Any:
    """The document with its `include:` chain applied."""
    if not isinstance(data, dict) or INCLUDE not in data:
        return data
    name = data[INCLUDE]
    target = (path.parent / name).resolve() if isinstance(name, str) else None
    if target is None or not target.is_relative_to(path.parent.resolve()):
        raise ManifestError(
            [f"{path}: field '{INCLUDE}': expected a file name inside this manifest's folder, got {name!r}"]
        )
    if target in seen:
        raise ManifestError([f"{path}: field '{INCLUDE}': includes itself through {' -> '.join(p.name for p in seen)}"])
    base = resolve_includes(read_yaml(target), target, (*seen, path.resolve()))
    if not isinstance(base, dict):
        raise ManifestError([f"{target}: an included file must be a mapping, got {type(base).__name__}"])
    return merged(base, {k: v for k, v in data.items() if k != INCLUDE})


def load_manifest(path: Path) -> Manifest:
    """Read and validate one YAML manifest file, its includes applied. A relative checkpoint path (`weights:
    {path: ckpt.pth}`) is relative to the manifest's folder, where a contributor keeps it, not to wherever the
    command runs."""
    m = parse_manifest(resolve_includes(read_yaml(path), path), path)
    if isinstance(m, ModelManifest) and isinstance(m.weights, PathWeights):
        ref = m.weights.path
        if not ref.startswith(("pkg://", "$", "~")) and not Path(ref).is_absolute():
            weights = m.weights.model_copy(update={"path": str(path.parent.resolve() / ref)})
            m = m.model_copy(update={"weights": weights})
    return m
