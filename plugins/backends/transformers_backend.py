"""transformers text encoders (BERT-style): the hidden state after the embeddings and after every layer,
mean-pooled over valid tokens (attention mask), or the first token with `pool: cls`. `preprocess`: `max_length`
(default 128) and `templates` (texts embedded in each, features averaged; default the text itself)."""

from __future__ import annotations

import pickle  # only for its exception type: nothing is unpickled here
from collections.abc import Sequence
from typing import Any

from prh_bench.plugin import (
    BadInput,
    FeatureExtractor,
    ModelManifest,
    RandomWeights,
    Sample,
    WeightsUnavailable,
    hookimpl,
    preprocess_options,
    refused_pickle,
    torch,
    torch_dtype,
)

from .text_sources import HubTextBackend, hub_kwargs, is_archive, mean_over_templates, model_location, prompt_templates

PREPROCESS = {"max_length": 128, "templates": None, "template": None}  # the templates: prompt_templates


class EncoderExtractor(FeatureExtractor):
    def __init__(self, m: ModelManifest, device: torch.device):
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        if m.layers.pool not in ("mean", "avg", "cls"):
            raise BadInput(
                f"model '{m.id}': field 'layers.pool': encoders pool by 'mean' or 'cls', got '{m.layers.pool}'"
            )
        if m.layers.nodes is not None:
            raise BadInput(f"model '{m.id}': field 'layers.nodes': encoders always give every hidden state; remove it")
        where, kw = model_location(m), hub_kwargs(m)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(where, **kw)
            if isinstance(m.weights, RandomWeights):
                torch.manual_seed(m.weights.random)
                model = AutoModel.from_config(AutoConfig.from_pretrained(where, **kw))
            elif m.weights == "pretrained" or is_archive(m):
                model = AutoModel.from_pretrained(where, **kw)
            else:
                raise BadInput(
                    f"model '{m.id}': field 'weights': the transformers backend takes 'pretrained' "
                    "(from `source`, a hub id or a local folder), a zip of the model's folder in parts "
                    "({parts: [...], file: NAME.zip, sha256: ...}) or {random: SEED}"
                )
        except pickle.UnpicklingError as exc:  # a pytorch_model.bin with pickled objects (weights_only=True)
            raise refused_pickle(where, exc) from None
        except OSError as exc:
            raise WeightsUnavailable(
                f"model '{m.id}': cannot load '{where}' ({exc.__class__.__name__}). Run once where the Hugging Face "
                "Hub is reachable, or point `source` at a local folder holding config, tokenizer and weights."
            ) from None
        self.device, self.dtype, self.cls = device, torch_dtype(m.dtype), m.layers.pool == "cls"
        self.model = model.eval().to(device=device, dtype=self.dtype)
        self.layer_names = [f"hidden_states.{i}" for i in range(model.config.num_hidden_layers + 1)]
        self.max_length = int(preprocess_options(m, PREPROCESS)["max_length"])
        self.templates = prompt_templates(m)

    def __call__(self, batch: Sequence[Sample]) -> list[torch.Tensor]:
        return mean_over_templates([self.embed([t.format(text=s.text) for s in batch]) for t in self.templates])

    def embed(self, texts: list[str]) -> list[torch.Tensor]:
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt").to(
            self.device
        )
        hidden = self.model(**enc, output_hidden_states=True).hidden_states
        if self.cls:
            return [h[:, 0].float().cpu() for h in hidden]
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden[0].dtype)
        return [((h * mask).sum(1) / mask.sum(1)).float().cpu() for h in hidden]


class TransformersEncoderBackend(HubTextBackend):
    extractor = EncoderExtractor

    def preprocess_keys(self, m: ModelManifest) -> tuple[str, ...]:
        return tuple(PREPROCESS)


@hookimpl
def prh_model_backends() -> dict[str, Any]:
    return {"transformers-encoder": TransformersEncoderBackend()}
