"""Image sets for the paper's experiments: a local image folder (e.g. Places-365 validation), a Hugging Face
dataset (e.g. minhuh/prh at revision wit_1024 with images and captions, cais/imagenet-o), and seeded noise
images. Every loader takes `limit` and `seed` options: a seeded random subset of `limit` samples, in a stable
order."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from prh_bench.plugin import (
    PKG_SCHEME,
    BadInput,
    DatasetManifest,
    Sample,
    SampleSet,
    WeightsUnavailable,
    hookimpl,
    np,
    resolve_path,
    takes_options,
)

from .text import passage_bytes, passages

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def subset(n: int, opts: dict[str, Any]) -> list[int]:
    """Indices of a seeded random subset of `limit` of n items (all of them, in order, without a limit)."""
    limit = opts.get("limit")
    if limit is None or limit >= n:
        return list(range(n))
    rng = np.random.default_rng(opts.get("seed", 0))
    return sorted(rng.choice(n, size=limit, replace=False).tolist())


@takes_options("path", "how_to_get", "labels", "splits", "limit", "seed")
def image_folder(m: DatasetManifest) -> SampleSet:
    """Images under `options.path` ($VARS expand; pkg://package/folder inside an installed package), recursively,
    sorted by relative path (the sample id). With `labels: folder`, each image's label is its first-level
    subfolder (the ImageFolder layout), numbered in
    sorted order. With `splits: [train, val]`, each split is a subfolder of its own (as VTAB's are exported),
    `limit` applies to each, and every sample carries its split (ids 'train/CLASS/FILE')."""
    raw = str(m.options.get("path", ""))
    if raw.startswith(PKG_SCHEME):  # a folder inside an installed package
        try:
            root = resolve_path(raw, m.id, "dataset")
        except WeightsUnavailable as exc:
            raise BadInput(str(exc)) from None
    else:
        root = Path(os.path.expandvars(raw)).expanduser()
    if not raw or not root.is_dir():
        hint = m.options.get("how_to_get", "")
        raise BadInput(
            f"dataset '{m.id}': field 'options.path': no folder at '{raw}' (expanded: '{root}'). {hint}".strip()
        )
    labels, splits = m.options.get("labels"), m.options.get("splits")
    if labels not in (None, "folder"):
        raise BadInput(f"dataset '{m.id}': field 'options.labels': expected 'folder' or nothing, got {labels!r}")
    if splits is not None and not (
        isinstance(splits, list)
        and splits
        and len(set(splits)) == len(splits)
        and all(isinstance(s, str) and s and "/" not in s and s not in (".", "..") for s in splits)
    ):
        raise BadInput(
            f"dataset '{m.id}': field 'options.splits': expected a list of distinct subfolder names, got {splits!r}"
        )
    parts = {split: _images(m, root / split) for split in splits} if splits else {None: _images(m, root)}
    if labels == "folder" and any(len(r.parts) < 2 for files in parts.values() for _, r in files):
        raise BadInput(f"dataset '{m.id}': with labels: folder, every image must sit in a class subfolder of {root}")
    classes = (
        {c: n for n, c in enumerate(sorted({r.parts[0] for files in parts.values() for _, r in files}))}
        if labels == "folder"
        else {}
    )
    return SampleSet(
        tuple(
            Sample(
                id=(f"{split}/" if split else "") + rel.as_posix(),
                image=open_image(path, m.id),
                label=classes.get(rel.parts[0]),
                split=split,
            )
            for split, files in parts.items()
            for path, rel in (files[i] for i in subset(len(files), m.options))
        )
    )


def _images(m: DatasetManifest, folder: Path) -> list[tuple[Path, Path]]:
    """(path, path relative to `folder`) of every image under it, sorted."""
    if not folder.is_dir():
        raise BadInput(f"dataset '{m.id}': no folder {folder}. {m.options.get('how_to_get', '')}".strip())
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise BadInput(f"dataset '{m.id}': no images under {folder}")
    return [(f, f.relative_to(folder)) for f in files]


def open_image(path: Path, dataset: str) -> Image.Image:
    """An RGB image, fully decoded here: a truncated or non-image file is bad input that names the file."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise BadInput(
            f"dataset '{dataset}': {path} is not a readable image ({type(exc).__name__}: {exc}); remove or replace it"
        ) from None


@takes_options(
    "path",
    "split",
    "image_column",
    "text_column",
    "text_select",
    "id_column",
    "data_files",
    "passage_bytes",
    "limit",
    "seed",
)
def hf_dataset(m: DatasetManifest) -> SampleSet:
    """A Hugging Face dataset: `options.path` (hub id or local folder), `split`, `image_column`, `text_column`,
    `text_select` (which element of a list column, or field of a struct column, is the text: the paper's WIT
    stores [caption, page description, section description] and embeds only the caption, element 0),
    `id_column` (default: the row index), `data_files` (a file or glob inside the repository or folder: one shard
    of a large corpus) and `passage_bytes` (a text-only set: each text cut into passages of at most that many
    UTF-8 bytes, ids 'ROW#PART', so that long documents fit a model's context); the manifest's `revision` pins
    the hub revision. `limit` draws rows before they are cut."""
    try:
        import datasets
    except ModuleNotFoundError:
        raise BadInput(f"dataset '{m.id}' needs the `datasets` package: pip install 'prh-bench[hf]'") from None
    opts = {
        "split": "train",
        "image_column": None,
        "text_column": None,
        "text_select": None,
        "id_column": None,
        "data_files": None,
        "passage_bytes": None,
        **m.options,
    }
    if not opts.get("path"):
        raise BadInput(f"dataset '{m.id}': field 'options.path': expected a hub id or a local folder")
    try:
        ds = datasets.load_dataset(
            opts["path"],
            revision=m.revision,
            split=opts["split"],
            **({"data_files": opts["data_files"]} if opts["data_files"] else {}),
        )
    except RuntimeError as exc:  # datasets >= 4 refuses loading scripts: no code from a data set runs
        raise BadInput(
            f"dataset '{m.id}': field 'options.path': '{opts['path']}' cannot be loaded ({str(exc)[:200]}); "
            "give a folder of data files (parquet, json, csv, imagefolder) or a hub id without a "
            "loading script"
        ) from None
    except (OSError, ValueError, ConnectionError) as exc:
        raise BadInput(
            f"dataset '{m.id}': cannot load '{opts['path']}'{' at revision ' + m.revision if m.revision else ''} "
            f"({type(exc).__name__}: {str(exc)[:200]}). Run once where the Hugging Face Hub is reachable "
            "(it is then cached under HF_HOME), or point options.path at a local copy."
        ) from None
    for col in ("image_column", "text_column", "id_column"):
        if opts[col] is not None and opts[col] not in ds.column_names:
            raise BadInput(f"dataset '{m.id}': field 'options.{col}': no column '{opts[col]}' in {ds.column_names}")
    if opts["image_column"] is None and opts["text_column"] is None:
        raise BadInput(f"dataset '{m.id}': set options.image_column and/or options.text_column")
    cap = passage_bytes(m, opts["passage_bytes"], text_only=bool(opts["text_column"]) and not opts["image_column"])
    read_text = text_reader(m.id, ds.features[opts["text_column"]], opts) if opts["text_column"] else None
    samples = []
    for i in subset(len(ds), opts):
        row = ds[i]
        image = row[opts["image_column"]].convert("RGB") if opts["image_column"] else None
        text = read_text(row[opts["text_column"]], i) if read_text else None
        sid = str(row[opts["id_column"]]) if opts["id_column"] else f"{opts['split']}/{i}"
        if cap:
            samples += [Sample(id=f"{sid}#{j}", text=part) for j, part in enumerate(passages(text, cap))]
        else:
            samples.append(Sample(id=sid, image=image, text=text))
    return SampleSet(tuple(samples))


def text_reader(dataset: str, feature: Any, opts: dict[str, Any]) -> Callable[[Any, int], str]:
    """How to get one string from a value of the text column: the value itself for a string column, the element
    `text_select` (an index) of a list column, the field `text_select` (a name) of a struct column. Any other
    combination is refused with the column's type named: str() of a list would feed the models its repr."""
    import datasets

    col, select = opts["text_column"], opts["text_select"]
    where = f"dataset '{dataset}': column '{col}' ({feature})"
    # datasets 4+ has List and LargeList classes (Sequence became a function); 2.x and 3.x have a Sequence class
    list_types = tuple(
        t for t in (getattr(datasets, n, None) for n in ("List", "LargeList", "Sequence")) if isinstance(t, type)
    )
    is_list = isinstance(feature, (list, *list_types))
    is_struct = isinstance(feature, dict)
    if is_list:
        if type(select) is not int:
            raise BadInput(
                f"{where} holds a list of values per row; set options.text_select to the index of the "
                f"text to read (e.g. 0 for the first), got {select!r}"
            )
    elif is_struct:
        if not isinstance(select, str) or select not in feature:
            raise BadInput(
                f"{where} holds a struct per row; set options.text_select to one of its fields "
                f"{sorted(feature)}, got {select!r}"
            )
    elif select is not None:
        raise BadInput(f"{where} holds one value per row: remove options.text_select ({select!r})")

    def read(value: Any, row: int) -> str:
        if select is not None:
            try:
                value = value[select]
            except (IndexError, KeyError, TypeError):
                raise BadInput(f"{where}: row {row} has no element {select!r} ({value!r:.80})") from None
        if not isinstance(value, str):
            raise BadInput(
                f"{where}: row {row}{f' element {select!r}' if select is not None else ''} is "
                f"{type(value).__name__}, not text ({value!r:.80})"
            )
        return value

    return read


@takes_options("count", "size", "seed")
def noise_images(m: DatasetManifest) -> SampleSet:
    """`count` images of i.i.d. uniform pixel noise, `size` x `size`, from `seed` (the 'pure noise' data type)."""
    opts = {"count": 250, "size": 224, "seed": 0, **m.options}
    rng = np.random.default_rng(opts["seed"])
    return SampleSet(
        tuple(
            Sample(
                id=f"noise/{opts['seed']}/{i}",
                image=Image.fromarray(rng.integers(0, 256, (opts["size"],) * 2 + (3,), dtype=np.uint8)),
            )
            for i in range(opts["count"])
        )
    )


@hookimpl
def prh_dataset_loaders() -> dict[str, Any]:
    return {"image_folder": image_folder, "hf_dataset": hf_dataset, "noise_images": noise_images}
