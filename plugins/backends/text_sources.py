"""Where a text model's files come from: a `pkg://` resource, a local folder, a zip archive in parts, or a hub id
(with revision)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prh_bench.plugin import (
    BadInput,
    ModelBackend,
    ModelManifest,
    PartsWeights,
    RandomWeights,
    cache_root,
    checkpoint_status,
    extracted_folder,
    is_local,
    resolve_path,
    torch,
)


def model_location(m: ModelManifest) -> str:
    """Where the model's folder is: a zip archive in parts (extracted once under the cache), a `pkg://`
    resource or local path, else the hub id."""
    if is_archive(m):
        assert isinstance(m.weights, PartsWeights)
        return str(extracted_folder(m.weights, m.id, cache_root()))
    if is_local(m.source):
        return str(resolve_path(m.source, m.id))
    return m.source


def is_archive(m: ModelManifest) -> bool:
    """Whether the weights are a zip archive of the model's folder, shipped in parts."""
    return isinstance(m.weights, PartsWeights) and m.weights.file.endswith(".zip")


def prompt_templates(m: ModelManifest, default: str = "{text}") -> list[str]:
    """The templates a text model embeds each text in (`preprocess.templates`, a list, or `template`, one);
    with several, a text's features (and bits per byte) are their mean over the templates, as the PRH colour
    study averages "The color X.", "This color is X." and "The color of this thing is X."."""
    templates = m.preprocess.get("templates", [m.preprocess.get("template", default)])
    if "templates" in m.preprocess and "template" in m.preprocess:
        raise BadInput(f"model '{m.id}': field 'preprocess': give 'template' or 'templates', not both")
    if not (isinstance(templates, list) and templates and all(isinstance(t, str) and "{text}" in t for t in templates)):
        raise BadInput(
            f"model '{m.id}': field 'preprocess.templates' must be a non-empty list of strings that each "
            "contain '{text}'"
        )
    return templates


def mean_over_templates(outs: list[list[torch.Tensor]]) -> list[torch.Tensor]:
    """Per output (layer or extra), the mean over templates of one batch's tensors."""
    return [torch.stack(parts).mean(0) for parts in zip(*outs, strict=True)]


def hub_kwargs(m: ModelManifest) -> dict[str, str]:
    return {"revision": m.revision} if m.revision else {}


def hub_weights_status(m: ModelManifest) -> str:
    from .hub_status import hub_file_status

    if (status := checkpoint_status(m, cache_root())) is not None and not isinstance(m.weights, RandomWeights):
        return status
    where = model_location(m)
    if Path(where).exists():
        return "local"
    return hub_file_status(where, ("config.json",), m.revision)


def hidden_widths(m: ModelManifest) -> list[int]:
    """hidden_size for the embeddings and every layer, from the model's config (local or cached)."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(model_location(m), local_files_only=True, **hub_kwargs(m))
    cfg = getattr(cfg, "text_config", cfg)
    return [cfg.hidden_size] * (cfg.num_hidden_layers + 1)


class HubTextBackend(ModelBackend):
    """A backend of transformers text models: `extractor` builds the extractor from the manifest."""

    libraries = ("torch", "transformers", "tokenizers")
    extractor: type
    weights_status = staticmethod(hub_weights_status)
    feature_widths = staticmethod(hidden_widths)

    def load(self, manifest: ModelManifest, device: Any) -> Any:
        return self.extractor(manifest, device)
