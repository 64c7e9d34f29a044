"""Where a text model's files come from: a `pkg://` resource, a local folder, or a hub id (with revision)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prh_bench.manifest import ModelManifest, RandomWeights
from prh_bench.weights import PKG_SCHEME, resolve_path


def model_location(m: ModelManifest) -> str:
    if m.source.startswith(PKG_SCHEME) or Path(m.source).expanduser().exists():
        return str(resolve_path(m.source, m.id))
    return m.source


def hub_kwargs(m: ModelManifest) -> dict[str, str]:
    return {"revision": m.revision} if m.revision else {}


def hub_weights_status(m: ModelManifest) -> str:
    from .hub_status import checkpoint_status, hub_file_status

    if (status := checkpoint_status(m)) is not None and not isinstance(m.weights, RandomWeights):
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


class HubTextBackend:
    """A backend of transformers text models: `extractor` builds the extractor from the manifest."""

    libraries = ("torch", "transformers", "tokenizers")
    extractor: type
    weights_status = staticmethod(hub_weights_status)
    feature_widths = staticmethod(hidden_widths)

    def load(self, manifest: ModelManifest, device: Any) -> Any:
        return self.extractor(manifest, device)
