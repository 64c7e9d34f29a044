"""torchvision image models (ResNets and the rest of torchvision.models): pretrained torchvision weights,
random with a seed, or a checkpoint (local, URL) with key adapters, e.g. MoCo v2 checkpoints whose query
encoder sits under 'module.encoder_q.' and whose MLP head replaces fc. Layers default to the four ResNet
stages plus the global pool; preprocessing is the ImageNet one (resize 256, centre crop 224)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
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
    offline,
    preprocess_options,
    torch,
    torch_dtype,
)

from .forward_hooks import LayerHooks, image_batch

PREPROCESS = {"resize": 256, "crop": 224, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def create_model(m: ModelManifest) -> torch.nn.Module:
    import torchvision

    if m.source not in torchvision.models.list_models():
        raise BadInput(f"model '{m.id}': field 'source': '{m.source}' is not a torchvision model")
    return build_with_weights(
        m,
        lambda pretrained: torchvision.models.get_model(m.source, weights="DEFAULT" if pretrained else None),
        f"torchvision's pretrained weights for '{m.source}'",
        "download.pytorch.org",
        "TORCH_HOME",
        cache_root(),
    )


class TorchvisionExtractor(FeatureExtractor):
    def __init__(self, m: ModelManifest, model: torch.nn.Module, device: torch.device):
        from torchvision.transforms import v2

        cfg = preprocess_options(m, PREPROCESS)
        self.transform = v2.Compose(
            [
                v2.PILToTensor(),
                v2.Resize(cfg["resize"], antialias=True),
                v2.CenterCrop(cfg["crop"]),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(cfg["mean"], cfg["std"]),
            ]
        )
        self.device, self.dtype = device, torch_dtype(m.dtype)
        self.model = model.eval().to(device=device, dtype=self.dtype)
        patterns = m.layers.nodes or ["layer*", "avgpool"]
        self.hooks = LayerHooks(model, patterns, m.layers.pool, f"model '{m.id}'")
        self.layer_names = self.hooks.names

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Pooled features of every layer for an input batch, as computed (also on the meta device)."""
        self.hooks.clear()
        self.model(x)
        return self.hooks.pooled()

    def __call__(self, batch: Sequence[Sample]) -> list[torch.Tensor]:
        self.forward(image_batch(self.transform, batch, self.device, self.dtype))
        return self.hooks.collect()


class TorchvisionBackend(ModelBackend):
    libraries = ("torch", "torchvision")

    def preprocess_keys(self, m: ModelManifest) -> tuple[str, ...]:
        return tuple(PREPROCESS)

    def load(self, manifest: ModelManifest, device: torch.device) -> FeatureExtractor:
        return TorchvisionExtractor(manifest, create_model(manifest), device)

    def weights_status(self, m: ModelManifest) -> str:
        import torchvision

        status = checkpoint_status(m, cache_root())
        if status is not None:
            return status
        try:
            url = torchvision.models.get_model_weights(m.source).DEFAULT.url
        except (ValueError, AttributeError):
            return f"unavailable: torchvision has no pretrained weights for '{m.source}'"
        if (Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name).is_file():  # where get_model caches them
            return "local"
        return f"unavailable: {url} is not in TORCH_HOME and the network is off" if offline() else "download"

    def feature_widths(self, m: ModelManifest) -> list[int]:
        import torchvision

        with torch.device("meta"):
            model = torchvision.models.get_model(m.source, weights=None)
        ext = TorchvisionExtractor(m.model_copy(update={"dtype": "float32"}), model, torch.device("meta"))
        crop = {**PREPROCESS, **m.preprocess}["crop"]
        return [t.shape[-1] for t in ext.forward(torch.empty(1, 3, crop, crop, device="meta"))]


@hookimpl
def prh_model_backends() -> dict[str, Any]:
    return {"torchvision": TorchvisionBackend()}
