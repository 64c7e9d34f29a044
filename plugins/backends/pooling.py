"""Turning a module's output into one vector per sample."""

from __future__ import annotations

import torch

from prh_bench.errors import BadInput


def pool(out: torch.Tensor, how: str, where: str) -> torch.Tensor:
    """B x C x H x W maps: spatial mean ('avg'/'mean'); B x T x D tokens: 'cls' = first token, 'mean' or 'avg'
    = mean over tokens, 'last' = last token; B x D vectors pass through; 'none' flattens whatever comes."""
    if how == "none":
        return out.flatten(1)
    if out.ndim == 2:
        return out
    if out.ndim == 4 and how in ("avg", "mean"):
        return out.mean(dim=(2, 3))
    if out.ndim == 3:
        if how == "cls":
            return out[:, 0]
        if how == "last":
            return out[:, -1]
        return out.mean(dim=1)
    raise BadInput(f"{where}: cannot pool an output of shape {tuple(out.shape)} with pool '{how}'")
