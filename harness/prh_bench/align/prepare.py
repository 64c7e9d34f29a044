"""The paper's feature preparation: clamp outliers at a quantile of |x|, then L2-normalise each sample;
optionally append all layers concatenated as one more layer.

Three clamp modes, all reading |x| of float32 (float64 stays float64) features:

- `per_layer`: each layer clamped at its own q-quantile of |x| over its N x D values (linear interpolation).
- `paper`: the PRH pipeline's default (measure_alignment.py without --precise, metrics.remove_outliers): a
  model's layers stacked as N x L x D, each sample's q-quantile of |x| over its L x D values (linear
  interpolation), averaged over samples: one threshold for the whole stack. Layers of different widths cannot
  be stacked; the pipeline then clamps each layer alone the same way (its list branch), and so does this mode.
- `paper_exact`: the pipeline's --precise variant (platonic/alignment.py): the order statistic at index
  int(q * numel) of the sorted |x| of the whole stack (of each layer when widths differ).

Selections (`torch.kthvalue`) stand in for sorts: the same order statistics at linear cost.

Precision `tf32` rounds the prepared features to TF32 (10 of float32's 23 mantissa bits, to nearest, ties to
even): what the PRH code's measuring step (without --precise, TF32 matmuls on) feeds its Gram matrices on a GPU,
here on any device.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from ..lazy import torch

CONCAT = "all_layers"
Clamp = Literal["per_layer", "paper", "paper_exact"]
Precision = Literal["float32", "tf32"]
CLAMPS: tuple[str, ...] = ("per_layer", "paper", "paper_exact")
#: a model's features: an L x N x D tensor or array, or one N x D tensor or array per layer
Layers = Sequence[Any] | Any


def as_tensors(feats: Layers) -> list[torch.Tensor]:
    """Layers as tensors: numpy arrays (and anything torch.as_tensor takes) are read without a copy where they can be."""
    if hasattr(feats, "ndim") and feats.ndim == 2:
        feats = [feats]
    return [x if isinstance(x, torch.Tensor) else torch.as_tensor(x) for x in feats]


def _order_stat(flat: torch.Tensor, i: int, dim: int = -1) -> torch.Tensor:
    """The i-th smallest value (from 0) along `dim`."""
    return flat.kthvalue(i + 1, dim=dim).values


def _interpolated(a: torch.Tensor, q: float, dim: int = -1) -> torch.Tensor:
    """The q-quantile along `dim` with linear interpolation, as torch.quantile (which caps its input at 2**24
    elements and sorts). One selection: the next order statistic is the selected value again when it is tied,
    else the smallest value above it."""
    m = a.shape[dim]
    pos = q * (m - 1)
    lo = int(pos)
    low = _order_stat(a, lo, dim)
    if lo + 1 >= m or pos == lo:
        return low
    at_most = a <= low.unsqueeze(dim)
    above = a.masked_fill(at_most, float("inf")).amin(dim)
    high = torch.where(at_most.sum(dim) > lo + 1, low, above)
    return low + (high - low) * (pos - lo)


def abs_quantile(x: torch.Tensor, q: float) -> torch.Tensor:
    """The q-quantile of |x| over all of x, with linear interpolation."""
    return _interpolated(x.abs().flatten(), q)


def clamp_thresholds(layers: Sequence[torch.Tensor], q: float, clamp: Clamp = "per_layer") -> list[torch.Tensor]:
    """One clamp threshold per layer under the given mode (see the module's docstring)."""
    if clamp not in CLAMPS:
        raise ValueError(f"clamp must be one of {', '.join(CLAMPS)}, got {clamp!r}")
    if clamp == "per_layer":
        return [abs_quantile(x, q) for x in layers]
    stacked = len({x.shape[1] for x in layers}) == 1
    groups = [torch.cat([x.abs() for x in layers], dim=1)] if stacked else [x.abs() for x in layers]
    if clamp == "paper":
        ts = [_interpolated(a, q, dim=1).mean() for a in groups]
    else:
        ts = [_order_stat(a.flatten(), int(q * a.numel())) for a in groups]
    return ts * len(layers) if stacked else ts


def to_tf32(x: torch.Tensor) -> torch.Tensor:
    """float32 values rounded to TF32's 10-bit mantissa (to nearest, ties to even), still as float32."""
    bits = x.float().contiguous().view(torch.int32)
    # Add just under half of the 13 dropped bits' range, plus the kept last bit (ties to even), then drop them;
    # a carry into the exponent is the right rounding, and the sign bit is never touched.
    rounded = (bits + 0x0FFF + ((bits >> 13) & 1)) & -0x2000
    return rounded.view(torch.float32)


def prepare(
    feats: Layers,
    clamp_quantile: float | None = 0.95,
    l2_normalize: bool = True,
    concat_layers: bool = False,
    clamp: Clamp = "per_layer",
    precision: Precision = "float32",
) -> list[torch.Tensor]:
    """Clamp every layer to [-t, t] (thresholds by `clamp` mode at `clamp_quantile`; None or 1: no clamp), then
    L2-normalise each row. With concat_layers, one more layer follows: the clamped layers side by side,
    L2-normalised as a whole. Returns float32 tensors (float64 stays float64), rounded to TF32 with `precision:
    tf32`; the input is left untouched."""
    layers = [x if x.dtype == torch.float64 else x.float() for x in as_tensors(feats)]
    if clamp_quantile is not None and clamp_quantile < 1:
        layers = [x.clamp(-t, t) for x, t in zip(layers, clamp_thresholds(layers, clamp_quantile, clamp), strict=True)]
    if concat_layers:
        layers.append(torch.cat(layers, dim=1))
    if l2_normalize:
        layers = [torch.nn.functional.normalize(x, p=2, dim=-1) for x in layers]
    if precision == "tf32":
        return [to_tf32(x) for x in layers]
    if precision != "float32":
        raise ValueError(f"precision must be 'float32' or 'tf32', got {precision!r}")
    return layers
