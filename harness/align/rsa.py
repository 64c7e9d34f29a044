"""Representational similarity analysis (Kriegeskorte et al. 2008): the Spearman correlation between the
upper triangles of the two representational dissimilarity matrices, RDM_ij = 1 - Pearson(x_i, x_j)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


from ..lazy import torch
from ..errors import BadInput
from .metric import Metric


def rdm(x: torch.Tensor) -> torch.Tensor:
    z = x.double() - x.double().mean(1, keepdim=True)
    norm = torch.linalg.vector_norm(z, dim=1, keepdim=True)
    if (norm == 0).any():
        raise BadInput("rsa: a sample has constant features; its correlation distance is undefined")
    z = z / norm
    return 1 - z @ z.T


@dataclass(frozen=True)
class RankedRDM:
    rdm: torch.Tensor  # N x N, kept to permute samples
    unit: torch.Tensor  # centred, unit-norm average ranks of the upper triangle

    @classmethod
    def of(cls, d: torch.Tensor) -> RankedRDM:
        from scipy.stats import rankdata

        iu = torch.triu_indices(d.shape[0], d.shape[0], offset=1)
        ranks = torch.from_numpy(rankdata(d[iu[0], iu[1]].numpy())).double()  # ties get their average rank
        ranks -= ranks.mean()
        norm = torch.linalg.vector_norm(ranks)
        if norm == 0:
            raise BadInput("rsa: all dissimilarities are equal; the rank correlation is undefined")
        return cls(d, ranks / norm)


class RSA(Metric):
    name = "rsa"
    defaults = {}
    min_samples = 3

    def summarize(self, feats: torch.Tensor, **params: Any) -> RankedRDM:
        self.check(feats)
        return RankedRDM.of(rdm(feats))

    def summary_nbytes(self, n: int, d: int, **params: Any) -> int:
        return 8 * n * n + 4 * n * (n - 1)  # the RDM and its ranked upper triangle, float64

    def pair_scores(self, sx: Sequence[RankedRDM], sy: Sequence[RankedRDM], **params: Any) -> torch.Tensor:
        return torch.stack([s.unit for s in sx]) @ torch.stack([s.unit for s in sy]).T

    def permute(self, summary: RankedRDM, perm: torch.Tensor) -> RankedRDM:
        return RankedRDM.of(summary.rdm[perm][:, perm])
