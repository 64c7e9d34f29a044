"""Nearest-neighbour metrics of Huh et al. 2024 (Appendix A and the public code): mutual_knn, cycle_knn,
lcs_knn and edit_distance_knn.

N_A(i) is the ordered list of the k nearest neighbours of sample i in representation A, by inner product,
i itself excluded. Ties are broken by a stable descending sort: among equal similarities the lower sample
index ranks first, so every score is deterministic. Summaries are the N x k lists (`search.knn_search`); the
pair stage reads only them, so memory grows as N (D + k), never N^2.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from ..errors import BadInput
from ..lazy import torch
from ..params import int_in, one_of
from .metric import Metric
from .search import approximate_knn, exact_rows, hits, knn_search, overlaps


def knn_indices(x: torch.Tensor, k: int) -> torch.Tensor:
    """N x k indices of each row's k nearest rows by inner product, nearest first, self excluded, ties to the
    lower index (`search.knn_search`)."""
    return knn_search(x, k)[1]


PROGRESS = logging.getLogger("prh_bench.progress")

#: bytes of the membership table block that `shared_counts` fills at a time
TABLE_BYTES = 2**26


@dataclass(frozen=True)
class Probe:
    """Rows of an approximate search's lists with their exact lists: its recall, and its effect on a score."""

    rows: torch.Tensor  # R sample indices
    exact: torch.Tensor  # R x k, nearest first

    def recall(self, idx: torch.Tensor) -> float:
        return hits(idx[self.rows], self.exact)


@dataclass(frozen=True)
class Neighbours:
    idx: torch.Tensor  # N x k, nearest first
    probe: Probe | None = None  # with `search: ivf`

    @cached_property
    def sorted(self) -> torch.Tensor:
        """The lists in index order, for membership by binary search."""
        return self.idx.sort(dim=1).values

    def permuted(self, perm: torch.Tensor) -> Neighbours:
        """The lists of the samples reordered by `perm` (a null needs no probe)."""
        inv = torch.empty_like(perm)
        inv[perm] = torch.arange(len(perm), device=perm.device)
        return Neighbours(inv[self.idx[perm]])


def stack_idx(summaries: Sequence[Neighbours]) -> torch.Tensor:
    return torch.stack([s.idx for s in summaries])


def _counts_by_table(sx: Sequence[Neighbours], sy: Sequence[Neighbours]) -> torch.Tensor:
    """Membership of all x layers as a table of rows x N x Lx booleans, filled for a block of rows at a time
    (at most TABLE_BYTES); each y position (i, j) reads all x layers in one lookup."""
    n, _k = sy[0].idx.shape
    lx = len(sx)
    rows = max(1, min(n, TABLE_BYTES // (n * lx)))
    counts = torch.zeros(len(sy), lx, dtype=torch.int64, device=sy[0].idx.device)
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)
        at = torch.arange(r1 - r0, device=counts.device)[:, None] * n
        member = torch.zeros((r1 - r0) * n, lx, dtype=torch.bool, device=counts.device)
        for layer, s in enumerate(sx):
            member[(at + s.idx[r0:r1]).view(-1), layer] = True
        where = torch.stack([at + s.idx[r0:r1] for s in sy]).view(-1)  # Ly * rows * k flat positions
        counts += member.index_select(0, where).view(len(sy), -1, lx).sum(1, dtype=torch.int32)  # int32: faster
    return counts.T


def _counts_by_search(sx: Sequence[Neighbours], sy: Sequence[Neighbours]) -> torch.Tensor:
    """Each y list's entries looked up in each x list of the same row by binary search: linear in N."""
    n, k = sy[0].idx.shape
    queries = stack_idx(sy).permute(1, 0, 2).reshape(n, -1)  # N x (Ly k): row i's y lists end to end
    out = torch.empty(len(sx), len(sy), dtype=torch.int64, device=queries.device)
    for layer, s in enumerate(sx):
        hit = s.sorted.gather(1, torch.searchsorted(s.sorted, queries).clamp_max_(k - 1)) == queries
        out[layer] = hit.view(n, len(sy), k).sum((0, 2))
    return out


def shared_counts(sx: Sequence[Neighbours], sy: Sequence[Neighbours]) -> torch.Tensor:
    """Lx x Ly: sum over samples of |N_x(i) ∩ N_y(i)| for every layer pair, exact. Two routes give the same
    counts: a membership table (fastest when many y layers share it: a zoo's pair stage) costs N^2 Lx bits of
    writing, binary search over the sorted lists costs about log2(k) lookups per y entry; the table is used
    while its writing is below the lookups' cost (N < 32 k Ly), so a permutation null at large N stays linear."""
    n, k = sy[0].idx.shape
    return _counts_by_table(sx, sy) if n < 32 * k * len(sy) else _counts_by_search(sx, sy)


def contains(summary: Neighbours, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Whether cols[...] is among the neighbours of rows[...] (tensors of one shape), by binary search in the
    flat sorted keys row * N + neighbour: no N x N table."""
    n, k = summary.idx.shape
    keys = (summary.sorted + torch.arange(n, device=rows.device)[:, None] * n).view(-1)
    want = rows * n + cols
    return keys[torch.searchsorted(keys, want).clamp_max_(n * k - 1)] == want


class KNNMetric(Metric):
    """Neighbour lists from exact search, or with `search: ivf` from faiss's approximate inverted-file search
    (`nlist` cells, default 4 sqrt(N); `nprobe` scanned per query, default 32): the lists' order then follows
    faiss, not the tie rule, and each layer keeps a probe of 1,000 rows searched exactly, from which the run
    record reports the search's recall and, for metrics that are a mean over samples, the score on those rows
    from the approximate and from the exact lists."""

    #: the score is a mean over samples of a function of their two lists (`list_score` on a subset estimates it)
    row_mean = True
    #: rows of a probe of an approximate search
    probe_rows = 1000

    defaults = {"k": 10}
    rules = {"k": int_in(1)}
    optional = {"search": one_of("exact", "ivf"), "nlist": int_in(1, 2**20), "nprobe": int_in(1, 2**20)}
    min_samples = 2

    def summarize(self, feats: torch.Tensor, **params: Any) -> Neighbours:
        self.check(feats)
        if params.get("search", "exact") == "exact":
            return Neighbours(knn_indices(feats, params["k"]))
        idx = approximate_knn(feats, params["k"], params.get("nlist"), params.get("nprobe", 32))
        probe = Probe(*exact_rows(feats, params["k"], self.probe_rows))
        PROGRESS.info(
            "%s: approximate neighbours (ivf) of a layer of N=%d, D=%d: recall %.4f against exact search on %d rows",
            self.name,
            *feats.shape,
            probe.recall(idx),
            len(probe.rows),
        )
        return Neighbours(idx, probe)

    def sample_terms(self, x: torch.Tensor, y: torch.Tensor, **params: Any) -> torch.Tensor:
        """Each row's term of a `row_mean` metric from two layers' lists of the same rows (R x k each): the
        score is their mean. What resampling of samples reuses, since a sample's lists stay those of the full
        set (resampling the features instead would make duplicates each other's neighbours)."""
        raise NotImplementedError(f"{self.name} is not a mean over samples")

    def probe_scores(self, x: Neighbours, y: Neighbours, **params: Any) -> tuple[float, float] | None:
        """(from the approximate lists, from the exact lists) on the probe rows of two layers searched
        approximately: an estimate of the search's effect on their score. None without probes, or for a
        metric that is not a mean over samples."""
        if not self.row_mean or x.probe is None or y.probe is None:
            return None
        rows = x.probe.rows
        return (
            float(self.sample_terms(x.idx[rows], y.idx[rows], **params).mean()),
            float(self.sample_terms(x.probe.exact, y.probe.exact, **params).mean()),
        )

    def check_n(self, n: int, **params: Any) -> None:
        super().check_n(n, **params)
        if not params["k"] <= n - 1:
            raise BadInput(f"{self.name}: k must be in [1, N-1] = [1, {n - 1}], got k={params['k']}")

    def summary_nbytes(self, n: int, d: int, **params: Any) -> int:
        return 8 * n * params["k"]

    def permute(self, summary: Neighbours, perm: torch.Tensor) -> Neighbours:
        return summary.permuted(perm)

    def summaries_to_tensors(self, summaries: Sequence[Neighbours]) -> dict[str, torch.Tensor]:
        out = {"idx": stack_idx(summaries)}  # L x N x k: 80 KB per layer at N = 1000, k = 10
        probes = [s.probe for s in summaries]
        if all(p is not None for p in probes):
            out |= {
                "probe_rows": torch.stack([p.rows for p in probes if p is not None]),
                "probe_exact": torch.stack([p.exact for p in probes if p is not None]),
            }
        return out

    def summaries_from_tensors(self, tensors: dict[str, torch.Tensor]) -> list[Neighbours]:
        if "probe_rows" not in tensors:
            return [Neighbours(idx) for idx in tensors["idx"]]
        return [
            Neighbours(idx, Probe(rows, exact))
            for idx, rows, exact in zip(tensors["idx"], tensors["probe_rows"], tensors["probe_exact"], strict=True)
        ]


class MutualKNN(KNNMetric):
    """m(A, B) = mean_i |N_A(i) ∩ N_B(i)| / k; chance for independent features is k/(N-1)."""

    name = "mutual_knn"

    def pair_scores(self, sx: Sequence[Neighbours], sy: Sequence[Neighbours], **params: Any) -> torch.Tensor:
        n = sx[0].idx.shape[0]
        return shared_counts(sx, sy).double() / (n * params["k"])

    def sample_terms(self, x: torch.Tensor, y: torch.Tensor, **params: Any) -> torch.Tensor:
        return overlaps(x, y) / params["k"]

    def chance_level(self, n: int, **params: Any) -> tuple[float, str]:
        # the expected overlap of two random k-subsets of the other n - 1 samples
        return params["k"] / (n - 1), f"k/(N-1) = {params['k']}/{n - 1}"


class CycleKNN(KNNMetric):
    """m(A, B) = fraction of samples i that some B-neighbour j of i has among its A-neighbours: i -> B -> A -> i.
    Not symmetric."""

    name = "cycle_knn"
    symmetric = False
    row_mean = False  # i's term reads the lists of i's neighbours too

    def pair_scores(self, sx: Sequence[Neighbours], sy: Sequence[Neighbours], **params: Any) -> torch.Tensor:
        iy = stack_idx(sy)
        rows = torch.arange(iy.shape[1], device=iy.device)[:, None].expand_as(iy[0])
        # back[l, m, i, s]: i is among x layer l's neighbours of j = N_y_m(i)[s]
        back = torch.stack([torch.stack([contains(s, j, rows) for j in iy]) for s in sx])
        return back.any(dim=3).double().mean(dim=2)


def _sequence_dp(ix: torch.Tensor, iy: torch.Tensor, kind: str) -> torch.Tensor:
    """LCS length or Levenshtein distance between every x list and every y list of the same sample:
    ix Lx x N x k, iy Ly x N x k -> Lx x Ly x N, by the classic dynamic programme, vectorised over lists."""
    lx, n, k = ix.shape
    ly = iy.shape[0]
    eq = ix[:, None, :, :, None] == iy[None, :, :, None, :]  # Lx x Ly x N x k x k
    shape, device = (lx, ly, n), ix.device

    def row(a: int) -> list[torch.Tensor]:  # the programme's first column (or row) at list position a
        if kind == "lcs":
            return [torch.zeros(shape, dtype=torch.int32, device=device) for _ in range(k + 1)]
        return [torch.full(shape, a + b, dtype=torch.int32, device=device) for b in range(k + 1)]

    prev = row(0)
    for a in range(k):
        cur = row(a + 1)[:1]
        for b in range(k):
            match = eq[..., a, b]
            if kind == "lcs":
                cur.append(torch.where(match, prev[b] + 1, torch.maximum(prev[b + 1], cur[b])))
            else:
                sub = prev[b] + (~match).int()
                cur.append(torch.minimum(sub, torch.minimum(prev[b + 1], cur[b]) + 1))
        prev = cur
    return prev[k]


def sequence_sums(sx: Sequence[Neighbours], sy: Sequence[Neighbours], kind: str) -> torch.Tensor:
    """Lx x Ly: the sum over samples of `_sequence_dp`, over blocks of samples whose k x k match tables take
    at most TABLE_BYTES."""
    ix, iy = stack_idx(sx), stack_idx(sy)
    n, k = ix.shape[1:]
    rows = max(1, TABLE_BYTES // (len(sx) * len(sy) * k * k))
    total = torch.zeros(len(sx), len(sy), dtype=torch.int64, device=ix.device)
    for r in range(0, n, rows):
        total += _sequence_dp(ix[:, r : r + rows], iy[:, r : r + rows], kind).sum(2, dtype=torch.int64)
    return total


def sequence_terms(x: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    """`_sequence_dp` of one pair of layers' lists (R x k each), row by row: R values."""
    rows = max(1, TABLE_BYTES // (x.shape[1] ** 2))
    return torch.cat(
        [_sequence_dp(x[None, r : r + rows], y[None, r : r + rows], kind)[0, 0] for r in range(0, x.shape[0], rows)]
    )


class LCSKNN(KNNMetric):
    """m(A, B) = mean_i LCS(N_A(i), N_B(i)) / k, the longest common subsequence of the two ordered neighbour
    lists (the public code reports the un-normalised mean length: multiply by k to compare)."""

    name = "lcs_knn"

    def pair_scores(self, sx: Sequence[Neighbours], sy: Sequence[Neighbours], **params: Any) -> torch.Tensor:
        n = sx[0].idx.shape[0]
        return sequence_sums(sx, sy, "lcs").double() / n / params["k"]  # as the mean over samples, then / k

    def sample_terms(self, x: torch.Tensor, y: torch.Tensor, **params: Any) -> torch.Tensor:
        return sequence_terms(x, y, "lcs").double() / params["k"]


class EditDistanceKNN(KNNMetric):
    """m(A, B) = 1 - mean_i Levenshtein(N_A(i), N_B(i)) / k over the two ordered neighbour lists."""

    name = "edit_distance_knn"

    def pair_scores(self, sx: Sequence[Neighbours], sy: Sequence[Neighbours], **params: Any) -> torch.Tensor:
        n = sx[0].idx.shape[0]
        return 1 - sequence_sums(sx, sy, "edit").double() / n / params["k"]

    def sample_terms(self, x: torch.Tensor, y: torch.Tensor, **params: Any) -> torch.Tensor:
        return 1 - sequence_terms(x, y, "edit").double() / params["k"]
