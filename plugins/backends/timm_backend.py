"""timm image models: any architecture by name; pretrained, random with a seed, or a local/packaged/URL
checkpoint. Layers are module outputs picked by glob (default: the model's feature_info stages plus the
pre-logits embedding), pooled to one vector per image. Preprocessing comes from the model's pretrained_cfg
with the manifest's `preprocess` overrides; `options` are keyword arguments of timm.create_model (img_size)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prh_bench.plugin import (
    BadInput,
    FeatureExtractor,
    ModelBackend,
    ModelManifest,
    Sample,
    build_with_weights,
    cache_root,
    checkpoint_status,
    hookimpl,
    preprocess_options,
    torch,
    torch_dtype,
)

from .forward_hooks import LayerHooks, image_batch
from .hub_status import hub_file_status

PRE_LOGITS = "pre_logits"


def create_model(m: ModelManifest) -> torch.nn.Module:
    import timm

    def create(pretrained: bool) -> torch.nn.Module:
        try:
            return timm.create_model(m.source, pretrained=pretrained, **m.options)
        except TypeError as exc:  # an option create_model or the architecture does not take
            raise BadInput(
                f"model '{m.id}': field 'options': timm.create_model('{m.source}') refused them ({exc})"
            ) from None

    return build_with_weights(
        m, create, f"pretrained weights for timm '{m.source}'", "the Hugging Face Hub", "HF_HOME", cache_root()
    )


#: what timm.data.resolve_data_config gives, and so what `preprocess` may override
DATA_CONFIG = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")


class TimmExtractor(FeatureExtractor):
    def __init__(self, m: ModelManifest, model: torch.nn.Module, device: torch.device):
        import timm.data

        self.device, self.dtype = device, torch_dtype(m.dtype)
        self.model = model.eval().to(device=device, dtype=self.dtype)
        cfg = timm.data.resolve_data_config(model=model)
        cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in preprocess_options(m, cfg).items()}
        self.transform = timm.data.create_transform(**cfg, is_training=False)
        self.input_size = cfg["input_size"]
        patterns = m.layers.nodes or [f["module"] for f in model.feature_info] + [PRE_LOGITS]
        self.hooks = LayerHooks(model, patterns, m.layers.pool, f"model '{m.id}'", computed=[PRE_LOGITS])
        self.layer_names = self.hooks.names

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Pooled features of every layer for an input batch, as computed (also on the meta device)."""
        self.hooks.clear()
        feats = self.model.forward_features(x)
        if PRE_LOGITS in self.layer_names:
            self.hooks.put(PRE_LOGITS, self.model.forward_head(feats, pre_logits=True))
        return self.hooks.pooled()

    def __call__(self, batch: Sequence[Sample]) -> list[torch.Tensor]:
        self.forward(image_batch(self.transform, batch, self.device, self.dtype))
        return self.hooks.collect()


class TimmBackend(ModelBackend):
    libraries = ("torch", "timm")

    def preprocess_keys(self, m: ModelManifest) -> tuple[str, ...]:
        return DATA_CONFIG

    takes_options = True

    def load(self, manifest: ModelManifest, device: torch.device) -> FeatureExtractor:
        return TimmExtractor(manifest, create_model(manifest), device)

    def weights_status(self, m: ModelManifest) -> str:
        import timm

        if (status := checkpoint_status(m, cache_root())) is not None:
            return status
        cfg = timm.models.get_pretrained_cfg(m.source)
        if cfg is None or not cfg.hf_hub_id:
            return "download" if cfg is not None else f"unavailable: timm has no pretrained weights '{m.source}'"
        repo = cfg.hf_hub_id.split("@")[0]
        return hub_file_status(repo, ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"))

    def feature_widths(self, m: ModelManifest) -> list[int]:
        """Layer widths from a forward pass on the meta device: no weights, no memory, no arithmetic."""
        import timm

        with torch.device("meta"):
            model = timm.create_model(m.source.split("@")[0], pretrained=False, **m.options)
        ext = TimmExtractor(m.model_copy(update={"dtype": "float32"}), model, torch.device("meta"))
        return [t.shape[-1] for t in ext.forward(torch.empty(1, *ext.input_size, device="meta"))]


@hookimpl
def prh_model_backends() -> dict[str, Any]:
    return {"timm": TimmBackend()}
