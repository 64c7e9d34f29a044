"""open_clip models (CLIP and relatives): the image tower for `modality: vision`, the text tower for
`modality: text`. `source` is 'ARCH/PRETRAINED_TAG' (e.g. ViT-B-32/laion2b_s34b_b79k) or 'ARCH'. Layers are
the residual blocks (class token for images; tokens up to the end-of-text token, pooled by `pool`, for text)
plus the final projected embedding."""

from __future__ import annotations

import pickle  # only for its exception type: nothing is unpickled here
from collections.abc import Sequence
from typing import Any

from prh_bench.plugin import (
    BadInput,
    FeatureExtractor,
    ModelBackend,
    ModelManifest,
    PathWeights,
    RandomWeights,
    Sample,
    WeightsUnavailable,
    cache_root,
    checkpoint_path,
    checkpoint_status,
    hookimpl,
    refused_pickle,
    torch,
    torch_dtype,
    verify_sha256,
)

from .forward_hooks import LayerHooks, image_batch
from .hub_status import hub_file_status

EMBEDDING = "embedding"


def create_model(m: ModelManifest) -> tuple[torch.nn.Module, Any, str]:
    import open_clip

    arch, _, tag = m.source.partition("/")
    if arch not in open_clip.list_models():
        raise BadInput(f"model '{m.id}': field 'source': '{arch}' is not an open_clip architecture")
    if m.weights == "pretrained":
        if not tag:
            raise BadInput(f"model '{m.id}': field 'source': pretrained weights need 'ARCH/TAG', got '{m.source}'")
        pretrained: str | None = tag
    elif isinstance(m.weights, RandomWeights):
        torch.manual_seed(m.weights.random)
        pretrained = None
    elif isinstance(m.weights, PathWeights):
        path = checkpoint_path(m.weights, m.id, cache_root())
        verify_sha256(path, m.weights.sha256, m.id)
        pretrained = str(path)
    else:
        raise BadInput(
            f"model '{m.id}': field 'weights': open_clip takes a pretrained tag or a local path, not a URL or parts"
        )
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=pretrained)
    except pickle.UnpicklingError as exc:  # a local checkpoint with pickled objects: that model fails, not the run
        raise refused_pickle(pretrained or m.source, exc) from None
    except (OSError, RuntimeError) as exc:
        raise WeightsUnavailable(
            f"model '{m.id}': open_clip weights '{m.source}' are not available here ({type(exc).__name__}). "
            "Run once where the Hugging Face Hub is reachable, or set `weights: {path: FILE}` in the manifest."
        ) from None
    return model, preprocess, arch


class OpenClipExtractor(FeatureExtractor):
    def __init__(self, m: ModelManifest, device: torch.device):
        import open_clip

        model, self.preprocess, arch = create_model(m)
        self.device, self.dtype, self.text = device, torch_dtype(m.dtype), m.modality == "text"
        self.model = model.eval().to(device=device, dtype=self.dtype)
        if self.text:
            self.tokenizer = open_clip.get_tokenizer(arch)
            default, pool_mode = ["transformer.resblocks.*", EMBEDDING], m.layers.pool
            if pool_mode == "avg":  # the manifest default: for tokens, mean over the valid ones
                pool_mode = "mean"
        else:
            default, pool_mode = ["visual.transformer.resblocks.*", EMBEDDING], m.layers.pool
        self.hooks = LayerHooks(model, m.layers.nodes or default, pool_mode, f"model '{m.id}'", computed=[EMBEDDING])
        self.layer_names = self.hooks.names

    def __call__(self, batch: Sequence[Sample]) -> list[torch.Tensor]:
        self.hooks.clear()
        if self.text:
            tokens = self.tokenizer([s.text for s in batch]).to(self.device)
            # Valid tokens run up to and including end-of-text, which has the largest id in CLIP's vocabulary.
            eot = tokens.argmax(dim=-1, keepdim=True)
            self.hooks.mask = torch.arange(tokens.shape[1], device=self.device)[None, :] <= eot
            emb = self.model.encode_text(tokens)
        else:
            emb = self.model.encode_image(image_batch(self.preprocess, batch, self.device, self.dtype))
        if EMBEDDING in self.layer_names:
            self.hooks.put(EMBEDDING, emb)
        return self.hooks.collect()


class OpenClipBackend(ModelBackend):
    libraries = ("torch", "open_clip_torch")

    def preprocess_keys(self, m: ModelManifest) -> tuple[str, ...]:
        return ()  # the tower's own transforms, as open_clip builds them

    def load(self, manifest: ModelManifest, device: torch.device) -> FeatureExtractor:
        return OpenClipExtractor(manifest, device)

    def weights_status(self, m: ModelManifest) -> str:
        import open_clip

        if (status := checkpoint_status(m, cache_root())) is not None:
            return status
        arch, _, tag = m.source.partition("/")
        cfg = open_clip.get_pretrained_cfg(arch, tag) or {}
        if not cfg.get("hf_hub"):
            return "download" if cfg else f"unavailable: open_clip has no pretrained tag '{m.source}'"
        repo = cfg["hf_hub"].rstrip("/")
        return hub_file_status(repo, ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"))

    def feature_widths(self, m: ModelManifest) -> list[int] | None:
        """Block widths and the embedding width from the architecture's config (default layers only)."""
        import open_clip

        if m.layers.nodes is not None:
            return None
        cfg = open_clip.get_model_config(m.source.partition("/")[0])
        tower = cfg["text_cfg"] if m.modality == "text" else cfg["vision_cfg"]
        return [tower["width"]] * tower["layers"] + [cfg["embed_dim"]]


@hookimpl
def prh_model_backends() -> dict[str, Any]:
    return {"open_clip": OpenClipBackend()}
