"""transformers causal language models: the hidden state after the embeddings and after every layer, pooled
over valid tokens ('mean', the default, or 'last' valid token), and each text's bits per byte from the same
forward pass (the paper's language-competence axis).

Weights: 'pretrained' (the hub id or local folder in `source`), a GGUF file of llama.cpp (`weights: {path:
FILE.gguf}` or in parts: dequantised once and cached, see `dequantised_gguf`), or random (with a GGUF file as
`source`, its architecture and tokenizer: the random control of a GGUF model).

Bits per byte: the cross-entropy of every token after the first, summed, in bits, divided by the UTF-8 bytes of
the (templated) text, or, for a text cut at max_length, of the part its kept tokens spell. A tokenizer that adds
a BOS token (LLaMA, Pythia) gets every text token predicted; one that adds none (SmolLM2's GGUF tokenizer) leaves
the first token unscored, so a one-token text costs 0 bits. `preprocess` takes `template` (e.g. "Caption:
{text}") or `templates` (several: features and bits per byte averaged over them), `max_length` (default 512)
and `device_map` ("auto" shards a large model over the GPUs, via accelerate)."""

from __future__ import annotations

import logging
import math
import pickle  # only for its exception type: nothing is unpickled here
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prh_bench.plugin import (
    BadInput,
    FeatureExtractor,
    ModelManifest,
    PartsWeights,
    PathWeights,
    RandomWeights,
    Sample,
    SampleSet,
    WeightsUnavailable,
    cache_root,
    checkpoint_path,
    derived_folder,
    hookimpl,
    preprocess_options,
    refused_pickle,
    sha256_of,
    torch,
    torch_dtype,
    verify_sha256,
)

from .pooling import pool
from .text_sources import HubTextBackend, hub_kwargs, mean_over_templates, model_location, prompt_templates

log = logging.getLogger(__name__)
#: padding 'batch': each batch padded on the right to its longest text, texts cut at max_length tokens;
#: 'paper': the PRH code's, every text padded on the left to the longest of the whole set, nothing cut
OPTIONS = {"template": "{text}", "templates": None, "max_length": 512, "device_map": None, "padding": "batch"}


class CausalLMExtractor(FeatureExtractor):
    #: bytes_scored: the UTF-8 bytes each bits per byte divides by (all of the text unless cut at max_length), so
    #: that a corpus's bits per byte weighs each text by what was scored of it
    sample_score_names = ("bits_per_byte", "bytes_scored")

    def __init__(self, m: ModelManifest, device: torch.device):
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        self.opts = preprocess_options(m, OPTIONS)
        if self.opts["padding"] not in ("batch", "paper"):
            raise BadInput(
                f"model '{m.id}': field 'preprocess.padding': expected 'batch' or 'paper', got {self.opts['padding']!r}"
            )
        if m.layers.pool not in ("mean", "avg", "last"):
            raise BadInput(
                f"model '{m.id}': field 'layers.pool': causal LMs pool by 'mean' or 'last', got '{m.layers.pool}'"
            )
        if m.layers.nodes is not None:
            raise BadInput(
                f"model '{m.id}': field 'layers.nodes': causal LMs always give every hidden state; remove it"
            )
        self.templates = prompt_templates(m)
        where, kw = model_location(m), hub_kwargs(m)
        dtype = torch_dtype(m.dtype)
        try:
            if is_gguf(m):
                where, kw = dequantised_gguf(m), {}
            elif isinstance(m.weights, RandomWeights) and m.source.endswith(".gguf"):  # a GGUF's architecture
                where, kw = str(Path(where).parent), {"gguf_file": Path(where).name}
            self.tokenizer = AutoTokenizer.from_pretrained(where, **kw)
            if isinstance(m.weights, RandomWeights):
                torch.manual_seed(m.weights.random)
                model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(where, **kw), dtype=dtype)
            elif m.weights == "pretrained" or is_gguf(m):
                extra = {"device_map": self.opts["device_map"]} if self.opts["device_map"] else {}
                model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, **kw, **extra)
            else:
                raise BadInput(
                    f"model '{m.id}': field 'weights': causal LMs take 'pretrained' (from `source` and "
                    "`revision`), a GGUF file ({path: FILE.gguf, sha256: ...}, or {parts: [...], file: "
                    "FILE.gguf, sha256: ...}) or {random: SEED}"
                )
        except pickle.UnpicklingError as exc:  # a pytorch_model.bin with pickled objects (weights_only=True)
            raise refused_pickle(where, exc) from None
        except OSError as exc:
            raise WeightsUnavailable(
                f"model '{m.id}': cannot load '{where}'{' at revision ' + m.revision if m.revision else ''} "
                f"({exc.__class__.__name__}). Run once where the Hugging Face Hub is reachable (files are cached "
                "under HF_HOME), or point `source` at a local folder."
            ) from None
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        self.paper = self.opts["padding"] == "paper"
        self.tokenizer.padding_side = "left" if self.paper else "right"
        self.pad_to: int | None = None  # the paper's padding: the longest text of the sample set, in tokens
        self.sharded = bool(self.opts["device_map"]) and m.weights == "pretrained"
        self.device = next(model.parameters()).device if self.sharded else device
        self.model = model.eval() if self.sharded else model.eval().to(device)
        self.pool_mode, self.where = "last" if m.layers.pool == "last" else "mean", f"model '{m.id}'"
        self.layer_names = [f"hidden_states.{i}" for i in range(model.config.num_hidden_layers + 1)]

    def prepare(self, samples: SampleSet) -> None:
        if not self.paper:
            return
        texts = [t.format(text=s.text) for t in self.templates for s in samples.samples]
        self.pad_to = max(len(ids) for ids in self.tokenizer(texts)["input_ids"])
        context = getattr(self.model.config, "max_position_embeddings", None)
        if context is not None and self.pad_to > context:
            raise BadInput(
                f"{self.where}: the longest text is {self.pad_to} tokens, beyond the model's context of "
                f"{context}; the paper's padding cuts nothing: shorten the texts, or use `padding: batch` "
                "(which cuts at preprocess.max_length)"
            )

    def __call__(self, batch: Sequence[Sample]) -> list[torch.Tensor]:
        return mean_over_templates([self.embed([t.format(text=s.text) for s in batch]) for t in self.templates])

    def embed(self, texts: list[str]) -> list[torch.Tensor]:
        if self.paper:  # as if the whole set were tokenised at once with padding="longest", then sliced
            if self.pad_to is None:
                raise BadInput(f"{self.where}: the paper's padding needs every text first (extract() calls prepare)")
            enc = self.tokenizer(
                texts, padding="max_length", max_length=self.pad_to, truncation=False, return_tensors="pt"
            )
            nbytes = [len(t.encode("utf-8")) for t in texts]
        else:
            enc = self.tokenizer(
                texts, padding=True, truncation=True, max_length=self.opts["max_length"], return_tensors="pt"
            )
            nbytes = self.kept_bytes(texts, enc["input_ids"])
        enc = {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
        out = self.model(**enc, output_hidden_states=True)
        mask = enc["attention_mask"].bool()
        feats = [pool(h, self.pool_mode, self.where, mask).float().cpu() for h in out.hidden_states]
        # Cross-entropy of each next token whose context and target are both text (not padding), in bits, one
        # text at a time: a batch's float32 log-probabilities at once (16 x 300 tokens x 152k words) took 4 GB.
        target, scored = enc["input_ids"][:, 1:], mask[:, 1:] & mask[:, :-1]
        bits = torch.stack(
            [
                (
                    torch.nn.functional.cross_entropy(out.logits[i, :-1].float(), target[i], reduction="none")
                    * scored[i]
                ).sum()
                for i in range(target.shape[0])
            ]
        ) / math.log(2)
        scored = torch.tensor(nbytes, dtype=torch.float32)
        return [*feats, bits.float().cpu() / scored, scored]

    def kept_bytes(self, texts: list[str], kept: torch.Tensor) -> list[int]:
        """UTF-8 bytes of each text's part that survived truncation at max_length: bits per byte divides the
        bits of the kept tokens by the bytes they spell, not by the whole text's."""
        n_text = kept.shape[1] - self.tokenizer.num_special_tokens_to_add()  # truncation keeps BOS/EOS
        out = []
        for text in texts:
            enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=self.tokenizer.is_fast)
            if len(enc["input_ids"]) <= n_text:
                out.append(len(text.encode("utf-8")))
            elif self.tokenizer.is_fast:  # the character span of the kept tokens
                out.append(len(text[: enc["offset_mapping"][n_text - 1][1]].encode("utf-8")) if n_text > 0 else 0)
            else:
                out.append(len(self.tokenizer.decode(enc["input_ids"][:n_text]).encode("utf-8")))
        return out


def is_gguf(m: ModelManifest) -> bool:
    """Whether the weights are a llama.cpp GGUF file (a path, or parts joined into one)."""
    w = m.weights
    return (isinstance(w, PathWeights) and w.path.endswith(".gguf")) or (
        isinstance(w, PartsWeights) and w.file.endswith(".gguf")
    )


def dequantised_gguf(m: ModelManifest) -> str:
    """A llama.cpp checkpoint (GGUF, any quantisation transformers reads) as a transformers folder: dequantised
    once (tens of seconds for 135M parameters on 2 cores) into a derived folder of the cache keyed by the GGUF
    file's sha256, so later runs load it directly; an edited, truncated or incomplete folder is rebuilt, never
    loaded (prh_bench.plugin.derived_folder). Needs the `gguf` package (in prh-bench[offline])."""
    assert isinstance(m.weights, (PathWeights, PartsWeights))
    gguf = checkpoint_path(m.weights, m.id, cache_root())  # parts: joined and checked against their sha256
    digest = m.weights.sha256 or sha256_of(gguf)
    if isinstance(m.weights, PathWeights):
        verify_sha256(gguf, m.weights.sha256, m.id)
    # The folder's files are hashed once per file version (the cache's digest memo), not 6 GB again at every
    # load of a 1.5B model.
    return str(
        derived_folder(
            cache_root() / "dequantised" / digest,
            lambda tmp: _dequantise(m, gguf, tmp),
            cache_root() / "digests",
            f"model '{m.id}'",
        )
    )


def _dequantise(m: ModelManifest, gguf: Path, into: Path) -> None:
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except ImportError as exc:
        raise WeightsUnavailable(
            f"model '{m.id}': reading a GGUF file needs the `gguf` package: pip install gguf ({exc})"
        ) from None
    # transformers refuses save_pretrained on a model read from GGUF; its tensors are plain float32 by
    # now, so the config, the tokenizer and the tensors (tied ones once) make an ordinary folder.
    config = model.config
    for key in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, key):
            delattr(config, key)
    config.save_pretrained(into)
    tokenizer.save_pretrained(into)
    save_model(model, str(into / "model.safetensors"))


class CausalLMBackend(HubTextBackend):
    extractor = CausalLMExtractor
    sample_score_names = CausalLMExtractor.sample_score_names
    lower_is_better = ("bits_per_byte",)

    def preprocess_keys(self, m: ModelManifest) -> tuple[str, ...]:
        return tuple(OPTIONS)


@hookimpl
def prh_model_backends() -> dict[str, Any]:
    return {"transformers-causal-lm": CausalLMBackend()}
