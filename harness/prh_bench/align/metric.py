"""The metric interface: per-layer summaries computed once, then a batched layer x layer pair stage."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from ..errors import BadInput
from ..lazy import torch
from ..params import Parametrized


class Metric(Parametrized, ABC):
    """An alignment metric between two models' per-layer features on the same samples.

    `summarize` does the per-layer work once (neighbour sets, centred Gram matrices, ...); `pair_scores` scores
    every layer pair of two models from their summaries; `permute` reorders a summary's samples, so that
    permutation nulls reuse summaries instead of recomputing them."""

    higher_is_better: bool = True
    #: score(x, y) == score(y, x): the runner scores each unordered model pair once
    symmetric: bool = True
    #: the score of identical inputs; calibration measures the way from the null to it
    maximum: float = 1.0
    #: fewest samples the definition allows
    min_samples: int = 2
    #: most layers on the y side of one pair_scores call in cross_scores: bounds memory
    chunk: int = 256

    def check(self, feats: torch.Tensor) -> None:
        """Reject what would give a silent NaN: wrong shape, too few samples, non-finite or constant features."""
        if feats.ndim != 2:
            raise BadInput(f"{self.name}: expected an N x D tensor per layer, got shape {tuple(feats.shape)}")
        if feats.shape[0] < self.min_samples:
            raise BadInput(f"{self.name}: needs at least {self.min_samples} samples, got N={feats.shape[0]}")
        # Cheap reductions first: a NaN or inf anywhere makes the sum non-finite.
        if not torch.isfinite(feats.sum()) and not torch.isfinite(feats).all():
            raise BadInput(f"{self.name}: features contain NaN or infinite values")
        # Every row equal to the first; stops at the first difference, so it costs nothing on real features.
        if torch.equal(feats[1:], feats[:1].expand_as(feats[1:])):
            raise BadInput(f"{self.name}: features are constant across samples; no similarity structure to compare")

    def check_n(self, n: int, **params: Any) -> None:
        """Reject parameters that the sample count N rules out (k >= N, more folds than N/2), before any work."""
        if n < self.min_samples:
            raise BadInput(f"{self.name}: needs at least {self.min_samples} samples, got N={n}")

    def summary_nbytes(self, n: int, d: int, **params: Any) -> int:
        """Estimated bytes of one layer's summary for N = n samples of width d: sizes the groups that bound
        a run's memory. The default fits metrics that keep a (transformed) copy of the features."""
        return 8 * n * d

    def n_by_n(self, n: int, **params: Any) -> bool:
        """Whether a summary or the pair stage holds N x N values at N = n (kernels, distance matrices):
        such a run is refused when two models' summaries exceed the memory budget."""
        return False

    def work_nbytes(self, n: int, d: int, **params: Any) -> int:
        """Estimated extra bytes per layer that the pair stage needs while scoring a group (copies, stacks)."""
        return 0

    def cross_scores(self, sx: Sequence[Any], sy: Sequence[Any], **params: Any) -> torch.Tensor:
        """All layers of one group of models against all layers of another, in chunks of `chunk` y layers."""
        return torch.cat(
            [self.pair_scores(sx, sy[c : c + self.chunk], **params) for c in range(0, len(sy), self.chunk)], dim=1
        )

    def cross_scores_both(
        self, sx: Sequence[Any], sy: Sequence[Any], **params: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`cross_scores` both ways, (x against y, y against x), for metrics that are not symmetric."""
        chunks = [self.pair_scores_both(sx, sy[c : c + self.chunk], **params) for c in range(0, len(sy), self.chunk)]
        return torch.cat([xy for xy, _ in chunks], dim=1), torch.cat([yx for _, yx in chunks], dim=0)

    @abstractmethod
    def summarize(self, feats: torch.Tensor, **params: Any) -> Any:
        """Per-layer work on one N x D tensor; reused across all pairs the layer enters."""

    def summarize_model(self, layers: Sequence[torch.Tensor], **params: Any) -> list[Any]:
        """The summaries of one model's layers; metrics whose pair stage multiplies stacked summaries lay
        them out together here."""
        return [self.summarize(x, **params) for x in layers]

    @abstractmethod
    def pair_scores(self, sx: Sequence[Any], sy: Sequence[Any], **params: Any) -> torch.Tensor:
        """Scores of every (x layer, y layer) pair from their summaries: an Lx x Ly float64 tensor."""

    def pair_scores_both(
        self, sx: Sequence[Any], sy: Sequence[Any], **params: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(pair_scores(sx, sy), pair_scores(sy, sx)), the second the transpose of the first when the metric is
        symmetric; metrics that get both from one pass override it."""
        xy = self.pair_scores(sx, sy, **params)
        return xy, xy.T if self.symmetric else self.pair_scores(sy, sx, **params)

    def summaries_to_tensors(self, summaries: Sequence[Any]) -> dict[str, torch.Tensor] | None:
        """A model's summaries as tensors for the cache, so that a model's pairs with a later model cost no
        preparation or summary again; None (the default) when they are not worth keeping: N x N kernels
        take more room than the features they come from."""
        return None

    def summaries_from_tensors(self, tensors: dict[str, torch.Tensor]) -> list[Any]:
        """The inverse of `summaries_to_tensors`."""
        raise NotImplementedError(f"{self.name} keeps no summaries in the cache")

    def chance_level(self, n: int, **params: Any) -> tuple[float, str] | None:
        """The expected score of independent representations of n samples and how it is derived, where the
        metric has a closed form (mutual k-NN); None leaves chance to the run's permutation nulls."""
        return None

    @abstractmethod
    def permute(self, summary: Any, perm: torch.Tensor) -> Any:
        """The summary of the same layer with samples reordered: new sample i is old sample perm[i]."""
