"""Representational similarity analysis (Kriegeskorte et al. 2008): the Spearman correlation between the
upper triangles of the two representational dissimilarity matrices, RDM_ij = 1 - Pearson(x_i, x_j) by default,
or the Euclidean distance |x_i - x_j|."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import BadInput
from ..lazy import torch
from ..params import one_of
from .metric import Metric


def rdm(x: torch.Tensor, distance: str) -> torch.Tensor:
    """N x N dissimilarities: 1 - Pearson correlation of the samples' feature vectors, or Euclidean distance (for
    spaces whose geometry is Euclidean, such as CIELAB, where a sample's 3 coordinates have no correlation)."""
    if distance == "euclidean":
        return torch.cdist(x.double(), x.double())
    z = x.double() - x.double().mean(1, keepdim=True)
    norm = torch.linalg.vector_norm(z, dim=1, keepdim=True)
    if (norm == 0).any():
        raise BadInput("rsa: a sample has constant features; its correlation distance is undefined")
    z = z / norm
    return 1 - z @ z.T


@dataclass(frozen=True)
class RankedRDM:
    """The RDM's upper triangle as centred, unit-norm average ranks (`unit`), and the same numbers as a
    symmetric N x N matrix (`ranks`): permuting samples permutes it, with no ranking again (the ranks of a
    permuted RDM are the permuted ranks)."""

    ranks: torch.Tensor
    unit: torch.Tensor
    #: the stack (layers x pairs) of its model's `unit`s that `unit` is row `row` of: the pair stage reads a
    #: model's rows where they lie instead of stacking them again for every pair (and every null shuffle)
    stack: torch.Tensor | None = None
    row: int = 0

    @classmethod
    def of(cls, d: torch.Tensor) -> RankedRDM:
        from scipy.stats import rankdata

        n = d.shape[0]
        iu = torch.triu_indices(n, n, offset=1)
        ranks = torch.from_numpy(rankdata(d[iu[0], iu[1]].numpy())).double()  # ties get their average rank
        ranks -= ranks.mean()
        norm = torch.linalg.vector_norm(ranks)
        if norm == 0:
            raise BadInput("rsa: all dissimilarities are equal; the rank correlation is undefined")
        full = torch.zeros(n, n, dtype=torch.float64)
        full[iu[0], iu[1]] = full[iu[1], iu[0]] = ranks / norm
        return cls(full, ranks / norm)

    def permuted(self, perm: torch.Tensor) -> RankedRDM:
        full = self.ranks[perm][:, perm]
        iu = torch.triu_indices(len(perm), len(perm), offset=1)
        return RankedRDM(full, full[iu[0], iu[1]])


def _rows(summaries: Sequence[RankedRDM]) -> torch.Tensor:
    """The summaries' `unit`s as one matrix: a view when they are consecutive rows of one model's stack."""
    first = summaries[0]
    if first.stack is not None and all(
        s.stack is first.stack and s.row == first.row + i for i, s in enumerate(summaries)
    ):
        return first.stack[first.row : first.row + len(summaries)]
    return torch.stack([s.unit for s in summaries])


class RSA(Metric):
    """Spearman correlation of the two RDMs' upper triangles; `distance`: 'correlation' (1 - Pearson, the
    default) or 'euclidean'."""

    name = "rsa"
    defaults = {"distance": "correlation"}
    rules = {"distance": one_of("correlation", "euclidean")}
    min_samples = 3

    def summarize(self, feats: torch.Tensor, **params: Any) -> RankedRDM:
        self.check(feats)
        return RankedRDM.of(rdm(feats, params["distance"]))

    def summarize_model(self, layers: Sequence[torch.Tensor], **params: Any) -> list[RankedRDM]:
        ranked = [self.summarize(x, **params) for x in layers]
        stack = torch.stack([r.unit for r in ranked])
        return [RankedRDM(r.ranks, stack[i], stack, i) for i, r in enumerate(ranked)]

    def n_by_n(self, n: int, **params: Any) -> bool:
        return True

    def summary_nbytes(self, n: int, d: int, **params: Any) -> int:
        return 8 * n * n + 4 * n * (n - 1)  # the ranks as a matrix and as its upper triangle, float64

    def pair_scores(self, sx: Sequence[RankedRDM], sy: Sequence[RankedRDM], **params: Any) -> torch.Tensor:
        return _rows(sx) @ _rows(sy).T

    def permute(self, summary: RankedRDM, perm: torch.Tensor) -> RankedRDM:
        return summary.permuted(perm)
