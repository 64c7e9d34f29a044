"""SVCCA (Raghu et al. 2017): canonical correlations between the top singular directions of two layers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import BadInput
from ..lazy import torch
from ..params import int_in
from .folds import RowMetric, Rows, centered


class SVCCA(RowMetric):
    """Mean of the canonical correlations between the top `dims` singular directions of each representation
    (units standardised first). Exact SVD and exact CCA (the singular values of U_A^T U_B); the paper's code uses
    a randomised SVD and an iterative CCA, which agree up to their approximation error."""

    name = "svcca"
    defaults = {"dims": 10}
    rules = {"dims": int_in(1)}
    min_samples = 3

    def summarize(self, feats: torch.Tensor, **params: Any) -> Rows:
        self.check(feats)
        z = centered(feats)
        std = z.std(0, keepdim=True)
        z = torch.where(std > 0, z / std.clamp_min(1e-300), torch.zeros_like(z))
        u, s, _ = torch.linalg.svd(z, full_matrices=False)
        d = params["dims"]
        if not 1 <= d <= int((s > s[0] * 1e-10).sum()):
            raise BadInput(f"svcca: dims={d} exceeds the rank of a layer ({int((s > s[0] * 1e-10).sum())})")
        return Rows(u[:, :d])

    def summary_nbytes(self, n: int, d: int, **params: Any) -> int:
        return 4 * n * params["dims"]

    def pair_scores(self, sx: Sequence[Rows], sy: Sequence[Rows], **params: Any) -> torch.Tensor:
        ux, uy = torch.stack([s.x for s in sx]), torch.stack([s.x for s in sy])
        cross = torch.einsum("and,bne->abde", ux, uy)
        return torch.linalg.svdvals(cross).clamp(max=1.0).mean(-1)
