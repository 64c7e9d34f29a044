"""Layers as module outputs: torch forward hooks on modules picked by glob, each output pooled to one vector per
sample (torch hooks, not the pluggy hooks of hookspecs.py)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from prh_bench.plugin import BadInput, torch

from .pooling import pool


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A module-name glob where '*' never crosses a dot: 'blocks.*' matches blocks.3, not blocks.3.mlp;
    'layer*' matches layer1 to layer4."""
    parts = ("[^.]+" if part == "*" else re.escape(part).replace(r"\*", "[^.]*") for part in pattern.split("."))
    return re.compile("^" + ".".join(parts) + "$")


class LayerHooks:
    """Forward hooks on the modules matching `patterns` (in network order per pattern). Names listed in
    `computed` are not modules: the extractor stores those outputs itself with `put`."""

    def __init__(
        self, model: torch.nn.Module, patterns: Sequence[str], pool_mode: str, where: str, computed: Sequence[str] = ()
    ):
        self.pool_mode, self.where = pool_mode, where
        #: per-sample token mask (B x T, True = valid) for token outputs; None pools over all tokens
        self.mask: torch.Tensor | None = None
        self.names: list[str] = []
        self._outputs: dict[str, torch.Tensor] = {}
        modules = dict(model.named_modules())
        for pat in patterns:
            if pat in computed:
                self.names.append(pat)
                continue
            rx = glob_regex(pat)
            hits = [name for name in modules if name and rx.match(name)]
            if not hits:
                raise BadInput(f"{where}: field 'layers.nodes': '{pat}' matches no module")
            for name in hits:
                modules[name].register_forward_hook(self._hook(name))
                self.names.append(name)

    def _hook(self, name: str):
        def store(_module: torch.nn.Module, _inputs: Any, output: Any) -> None:
            out = output[0] if isinstance(output, (tuple, list)) else output
            self._outputs[name] = pool(out, self.pool_mode, f"{self.where}: layer '{name}'", self.mask)

        return store

    def put(self, name: str, value: torch.Tensor) -> None:
        self._outputs[name] = value

    def clear(self) -> None:
        self._outputs.clear()

    def pooled(self) -> list[torch.Tensor]:
        """This forward pass's pooled outputs, one per layer, as computed (any device, any dtype)."""
        return [self._outputs[name] for name in self.names]

    def collect(self) -> list[torch.Tensor]:
        """The pooled outputs as float32 on the CPU, as extractors return them."""
        return [t.float().cpu() for t in self.pooled()]


def image_batch(transform: Any, batch: Sequence[Any], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A batch of samples' images, each converted to RGB and transformed, stacked on the model's device."""
    return torch.stack([transform(s.image.convert("RGB")) for s in batch]).to(device, dtype)
