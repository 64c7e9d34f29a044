"""The paper's feature preparation: clamp outliers at a quantile of |x|, then L2-normalise each sample;
optionally append all layers concatenated as one more layer."""

from __future__ import annotations

from collections.abc import Sequence

import torch

CONCAT = "all_layers"


def abs_quantile(x: torch.Tensor, q: float) -> torch.Tensor:
    """The q-quantile of |x| with linear interpolation (torch.quantile caps the input at 2**24 elements)."""
    flat = x.abs().flatten().sort().values
    pos = q * (flat.numel() - 1)
    lo = int(pos)
    hi = min(lo + 1, flat.numel() - 1)
    return flat[lo] + (flat[hi] - flat[lo]) * (pos - lo)


def prepare(
    feats: Sequence[torch.Tensor] | torch.Tensor,
    clamp_quantile: float | None = 0.95,
    l2_normalize: bool = True,
    concat_layers: bool = False,
) -> list[torch.Tensor]:
    """Per layer: clamp to [-t, t] with t the clamp_quantile of |x| over that layer's N x D tensor, then
    L2-normalise each row. With concat_layers, one more layer follows: the clamped layers side by side,
    L2-normalised as a whole. Returns float32 tensors (float64 stays float64); the input is left untouched."""
    clamped = []
    for x in feats:
        x = x if x.dtype == torch.float64 else x.float()
        if clamp_quantile is not None and clamp_quantile < 1:
            t = abs_quantile(x, clamp_quantile)
            x = x.clamp(-t, t)
        clamped.append(x)
    if concat_layers:
        clamped.append(torch.cat(clamped, dim=1))
    if l2_normalize:
        return [torch.nn.functional.normalize(x, p=2, dim=-1) for x in clamped]
    return clamped
