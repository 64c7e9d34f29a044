"""Turning a module's output into one vector per sample."""

from __future__ import annotations

from prh_bench.plugin import BadInput, torch


def pool(out: torch.Tensor, how: str, where: str, mask: torch.Tensor | None = None) -> torch.Tensor:
    """B x C x H x W maps: spatial mean ('avg'/'mean'); B x T x D tokens: 'cls' = first token, 'mean' or 'avg'
    = mean over tokens, 'last' = last token, where `mask` (B x T, True = valid) restricts both to valid tokens;
    B x D vectors pass through; 'none' flattens whatever comes."""
    if how == "none":
        return out.flatten(1)
    if out.ndim == 2:
        return out
    if out.ndim == 4 and how in ("avg", "mean"):
        return out.mean(dim=(2, 3))
    if out.ndim == 3:  # a single token is cloned: a view would keep the layer's whole token tensor alive
        if how == "cls":
            return out[:, 0].clone()
        if mask is None:
            return out[:, -1].clone() if how == "last" else out.mean(dim=1)
        if how == "last":
            last = mask.long().cumsum(1).argmax(1)  # the last valid position
            return out[torch.arange(out.shape[0], device=out.device), last]
        m = mask.unsqueeze(-1).to(out.dtype)
        return (out * m).sum(1) / m.sum(1).clamp_min(1)
    raise BadInput(f"{where}: cannot pool an output of shape {tuple(out.shape)} with pool '{how}'")
