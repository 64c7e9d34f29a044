"""Exact k-nearest-neighbour search by inner product at any N, in O(N (D + k)) memory.

The search walks the upper block triangle of X X^T: each block B_I x B_J (J >= I) is one matrix product that
serves the rows of block I and, transposed, the rows of block J, so the products cost about half the full
Gram matrix (the similarity of i and j in different blocks is one number used both ways). Only one block of
similarities exists at a time; each row keeps its k best (value, index) candidates, merged block by block. An N
that fits one block (4096 on a CPU) takes the whole Gram matrix at once, its upper block triangle mirrored
(`gram`): the same similarities and lists as the engine had before the blocked search.

The order is (similarity descending, index ascending): among equal similarities the lower sample index ranks
first, exactly. A block's k best come from topk, checked for a tie straddling the k-th place (then that row of
the block is sorted stably: rare with real features); candidate lists are kept in index order and arrive in
increasing index order (block J's columns after block I's when J > I), so a stable sort by value breaks ties
to the lower index when two lists merge.
"""

from __future__ import annotations

import itertools

from ..errors import BadInput
from ..lazy import torch

#: bytes of the one block of similarities held at a time (float32: blocks of 4096 x 4096)
BLOCK_BYTES = 2**26
#: the same on an accelerator: blocks of 16384 x 16384, since each block costs a few host synchronisations (the
#: sizes of its sparse candidates), so fewer and larger blocks keep the device busy
DEVICE_BLOCK_BYTES = 2**30


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """Half-precision features (bf16/fp16 from GPU extraction) upcast to float32; others as they are."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def block_rows(n: int, itemsize: int = 4, block_bytes: int = BLOCK_BYTES) -> int:
    """Rows per block so that one square block of similarities takes at most `block_bytes`."""
    return max(1, min(n, int((block_bytes / itemsize) ** 0.5)))


def gram(x: torch.Tensor, blocks: int = 4) -> torch.Tensor:
    """X X^T in float32, or float64 when the features are float64 (half precision is upcast).

    Only the upper block triangle is multiplied (one product per block row, from its diagonal block on) and
    mirrored: about a third less work than x @ x.T, and exactly symmetric."""
    x = at_least_float32(x)
    n = x.shape[0]
    if n < 256:
        return x @ x.T
    e = [n * i // blocks for i in range(blocks + 1)]
    g = torch.empty(n, n, dtype=x.dtype, device=x.device)
    for i in range(blocks):
        torch.mm(x[e[i] : e[i + 1]], x[e[i] :].T, out=g[e[i] : e[i + 1], e[i] :])
        diag = g[e[i] : e[i + 1], e[i] : e[i + 1]]  # a BLAS product need not be symmetric within its block
        diag.copy_(torch.triu(diag) + torch.triu(diag, 1).T)
        for j in range(i):
            g[e[i] : e[i + 1], e[j] : e[j + 1]] = g[e[j] : e[j + 1], e[i] : e[i + 1]].T
    return g


def _by_index(vals: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    idx, at = idx.sort(dim=1)
    return vals.gather(1, at), idx


def _best_of_block(s: torch.Tensor, offset: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's k best of a block (columns offset, offset+1, ...), exact under the tie rule, in index order."""
    vals, at = s.topk(min(k + 1, s.shape[1]), dim=1)
    if s.shape[1] > k:
        straddle = (vals[:, k] == vals[:, k - 1]).nonzero().flatten()
        if len(straddle):
            exact = s[straddle].sort(dim=1, descending=True, stable=True)
            vals[straddle], at[straddle] = exact.values[:, : k + 1], exact.indices[:, : k + 1]
        vals, at = vals[:, :k], at[:, :k]
    return _by_index(vals, at + offset)


def _entries_above(s: torch.Tensor, floor: torch.Tensor, transposed: bool, group: int = 8) -> torch.Tensor:
    """(row, column) of s's entries above their row's floor (their column's when `transposed`), in any order.
    Maxima over groups of `group` entries along the other axis rule out most of the block first (a reduction
    read at full memory speed); the survivors' groups are then checked entry by entry: three times faster
    than a mask over the whole block."""
    rows, cols = s.shape
    if (rows if transposed else cols) % group:
        return (s > (floor[None, :] if transposed else floor[:, None])).nonzero()
    step = torch.arange(group, device=s.device)
    if transposed:
        g, c = (s.view(rows // group, group, cols).amax(1) > floor[None, :]).nonzero().unbind(1)
        at = torch.stack([(g[:, None] * group + step).view(-1), c.repeat_interleave(group)], dim=1)
        return at[s[at[:, 0], at[:, 1]] > floor[at[:, 1]]]
    r, g = (s.view(rows, cols // group, group).amax(2) > floor[:, None]).nonzero().unbind(1)
    at = torch.stack([r.repeat_interleave(group), (g[:, None] * group + step).view(-1)], dim=1)
    return at[s[at[:, 0], at[:, 1]] > floor[at[:, 0]]]


def _best_of_entries(
    view: torch.Tensor, r: torch.Tensor, c: torch.Tensor, offset: int, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best of the entries (r, c) of `view` for each row, by (value desc, index asc), in k slots padded
    with -inf (and an index past every sample)."""
    order = c.sort().indices
    order = order[view[r[order], c[order]].sort(descending=True, stable=True).indices]
    order = order[r[order].sort(stable=True).indices]  # by row, then value desc, then index
    r, c = r[order], c[order]
    starts = torch.zeros(view.shape[0] + 1, dtype=torch.long, device=view.device)
    starts[1:] = torch.bincount(r, minlength=view.shape[0]).cumsum(0)
    rank = torch.arange(len(r), device=view.device) - starts[r]
    r, c, rank = r[rank < k], c[rank < k], rank[rank < k]
    vals = torch.full((view.shape[0], k), -torch.inf, dtype=view.dtype, device=view.device)
    idx = torch.full((view.shape[0], k), torch.iinfo(torch.long).max, dtype=torch.long, device=view.device)
    vals[r, rank] = view[r, c]
    idx[r, rank] = c + offset
    return _by_index(vals, idx)


def _candidates(
    s: torch.Tensor, transposed: bool, offset: int, k: int, best: tuple[torch.Tensor, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's k best of block s (of s.T when `transposed`: s's columns are then the rows). Once a row's
    list holds k candidates of lower index, only entries above its k-th best value can enter; after a few
    blocks they are few, and are gathered sparsely instead of a topk over the block (a topk over the
    transposed block reads memory across rows: three times slower than along them)."""
    view = s.T if transposed else s
    if best[0].shape[1] == k:
        floor = best[0].min(dim=1).values
        if bool((floor > -torch.inf).all()):
            at = _entries_above(s, floor, transposed)
            if len(at) < s.numel() // 64:
                c, r = at.unbind(1) if transposed else at.unbind(1)[::-1]
                return _best_of_entries(view, r, c, offset, k)
    return _best_of_block(view, offset, k)


def _merge(
    best: tuple[torch.Tensor, torch.Tensor], new: tuple[torch.Tensor, torch.Tensor], k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best of two candidate lists whose indices all lie below the other's (`best` first), in index order."""
    vals, idx = torch.cat([best[0], new[0]], dim=1), torch.cat([best[1], new[1]], dim=1)
    if vals.shape[1] > k:
        at = vals.sort(dim=1, descending=True, stable=True).indices[:, :k]
        vals, idx = _by_index(vals.gather(1, at), idx.gather(1, at))
    return vals, idx


def _nearest_first(vals: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Lists in index order reordered by similarity, descending: a stable sort keeps index order within ties."""
    order = vals.sort(dim=1, descending=True, stable=True).indices
    return vals.gather(1, order), idx.gather(1, order)


def knn_search(x: torch.Tensor, k: int, block: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(similarities, indices), both N x k: each row's k largest inner products with the other rows, self
    excluded, nearest first, ties to the lower index. Similarities are float32 (float64 for float64 features;
    half precision is upcast). `block` rows per block (default: BLOCK_BYTES of similarities, DEVICE_BLOCK_BYTES
    on an accelerator)."""
    x = at_least_float32(x)
    n = x.shape[0]
    if not 1 <= k < n:
        raise BadInput(f"k must be in [1, N-1] = [1, {n - 1}], got k={k}")
    b = block or block_rows(n, x.element_size(), BLOCK_BYTES if x.device.type == "cpu" else DEVICE_BLOCK_BYTES)
    if b >= n:  # one block: the Gram matrix's upper block triangle, mirrored (5/8 of the products), at once
        return _nearest_first(*_best_of_block(gram(x).fill_diagonal_(-torch.inf), 0, k))
    edges = [*range(0, n, b), n]
    spans = list(itertools.pairwise(edges))
    best = [(x.new_empty(r1 - r0, 0), x.new_empty(r1 - r0, 0, dtype=torch.long)) for r0, r1 in spans]
    buffer = x.new_empty(b * b)  # written in place: a fresh block each time would fault in its pages again
    for i, (r0, r1) in enumerate(spans):
        for j in range(i, len(spans)):
            c0, c1 = spans[j]
            s = torch.mm(x[r0:r1], x[c0:c1].T, out=buffer[: (r1 - r0) * (c1 - c0)].view(r1 - r0, c1 - c0))
            if i == j:
                s.fill_diagonal_(-torch.inf)
            best[i] = _merge(best[i], _candidates(s, False, c0, k, best[i]), k)
            if j > i:
                best[j] = _merge(best[j], _candidates(s, True, r0, k, best[j]), k)
    return _nearest_first(torch.cat([v for v, _ in best]), torch.cat([i for _, i in best]))


def approximate_knn(x: torch.Tensor, k: int, nlist: int | None = None, nprobe: int = 32, seed: int = 0) -> torch.Tensor:
    """N x k indices of approximately the k nearest rows by inner product, self excluded: faiss's inverted-file
    index (IndexIVFFlat: k-means into `nlist` cells, default 4 sqrt(N); each query scans its `nprobe` nearest
    cells). Past some N exact search is too slow; the price is recall (`recall`) and the tie rule, which an
    approximate search cannot promise."""
    try:
        import faiss
    except ImportError:
        raise BadInput(
            "search: ivf needs faiss: pip install faiss-cpu (or faiss-gpu), or prh-bench's [faiss] extra"
        ) from None
    n, d = x.shape
    if not 1 <= k < n:
        raise BadInput(f"k must be in [1, N-1] = [1, {n - 1}], got k={k}")
    cells = min(nlist or max(1, min(int(4 * n**0.5), n // 39)), n)  # faiss wants 39 training points per cell
    data = at_least_float32(x).float().cpu().contiguous().numpy()
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, cells, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = seed
    index.cp.max_points_per_centroid = 64  # k-means on 64 rows per cell, not faiss's 256: at N = 1M, 4x less training
    index.train(data)
    index.add(data)
    index.nprobe = min(nprobe, cells)
    found = torch.from_numpy(index.search(data, k + 1)[1])
    if (found < 0).any():  # faiss's mark of a slot that no probed cell could fill
        raise BadInput(
            f"search: ivf found fewer than k+1 = {k + 1} candidates for some samples in {index.nprobe} of "
            f"{cells} cells; raise nprobe or lower nlist"
        )
    # Drop each row's own index where the search found it, else its last (the k+1-th) neighbour.
    own = found == torch.arange(n)[:, None]
    keep = ~own
    keep[~own.any(1), k] = False
    return found[keep].view(n, k).to(x.device)


def exact_rows(x: torch.Tensor, k: int, rows: int = 1000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows drawn with `seed`, their exact k nearest neighbours): the yardstick of an approximate search,
    rows x N x D work. One seed draws the same rows in every model of the same N, so pairs compare on them."""
    n = x.shape[0]
    pick = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[: min(rows, n)].to(x.device)
    x = at_least_float32(x)
    step = block_rows(n) ** 2 // n or 1  # rows x N similarities within one block's bytes
    exact = []
    for r0 in range(0, len(pick), step):
        at = pick[r0 : r0 + step]
        sims = x[at] @ x.T
        sims[torch.arange(len(at), device=x.device), at] = -torch.inf
        exact.append(sims.topk(k, dim=1).indices)
    return pick, torch.cat(exact)


def overlaps(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per row of two lists of the same rows (rows x k each, no repeats within a row): how many of a's entries
    b's row holds, in float64."""
    return (a[:, :, None] == b[:, None, :]).any(2).sum(1, dtype=torch.float64)


def hits(idx: torch.Tensor, exact: torch.Tensor) -> float:
    """Mean fraction of each row of `exact` (rows x k) that the same row of `idx` holds."""
    return float(overlaps(idx, exact).mean()) / exact.shape[1]


def recall(x: torch.Tensor, idx: torch.Tensor, rows: int = 1000, seed: int = 0) -> float:
    """Mean fraction of the exact k nearest neighbours that `idx` holds, over `rows` rows drawn with `seed`."""
    pick, exact = exact_rows(x, idx.shape[1], rows, seed)
    return hits(idx[pick], exact)
