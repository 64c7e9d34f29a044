"""mutual_knn against a plain reference implementation of Huh et al. 2024, Appendix A, and hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from prh_bench.align import METRICS, prepare, score_layers
from prh_bench.align.knn import knn_indices
from prh_bench.errors import BadInput


def reference_mutual_knn(a: list[list[float]], b: list[list[float]], k: int) -> float:
    """Per-sample loops over Python lists; ties to the lower index, self excluded."""
    n = len(a)

    def neighbours(x: list[list[float]], i: int) -> set[int]:
        sims = [(-sum(p * q for p, q in zip(x[i], x[j])), j) for j in range(n) if j != i]
        return {j for _, j in sorted(sims)[:k]}

    return sum(len(neighbours(a, i) & neighbours(b, i)) / k for i in range(n)) / n


def test_metric_list() -> None:
    assert "mutual_knn" in METRICS


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 5, 10])
def test_matches_reference_on_random_features(seed: int, k: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x = [torch.randn(40, 16, generator=g) for _ in range(3)]
    y = [torch.randn(40, 8, generator=g) + 0.5 * x[0][:, :8] for _ in range(2)]
    got = score_layers("mutual_knn", x, y, k=k).matrix
    assert got.shape == (3, 2)
    for i in range(3):
        for j in range(2):
            assert got[i, j].item() == pytest.approx(reference_mutual_knn(x[i].tolist(), y[j].tolist(), k), abs=1e-12)


def test_matches_reference_on_structured_features_with_ties() -> None:
    # Integer grid points: many exactly equal inner products, so the tie rule decides neighbours.
    x = torch.tensor([[i % 3, i // 3 % 3, 1.0] for i in range(12)])
    y = torch.tensor([[i % 2, i // 2 % 3, 1.0] for i in range(12)])
    got = score_layers("mutual_knn", [x], [y], k=3).best
    assert got == pytest.approx(reference_mutual_knn(x.tolist(), y.tolist(), 3), abs=1e-12)


def test_hand_computed_case() -> None:
    # Scalars, so the inner product is a product. k=1 in A = 1..5: everyone's nearest is 5 (index 4), 5's is 4.
    a = torch.tensor([[1.0], [2.0], [3.0], [4.0], [5.0]])
    assert knn_indices(a, 1).flatten().tolist() == [4, 4, 4, 4, 3]
    # B = 5..1 reverses the roles: everyone's nearest is index 0, index 0's is index 1. No overlap: 0.
    b = torch.tensor([[5.0], [4.0], [3.0], [2.0], [1.0]])
    assert knn_indices(b, 1).flatten().tolist() == [1, 0, 0, 0, 0]
    assert score_layers("mutual_knn", [a], [b], k=1).best == 0.0
    assert score_layers("mutual_knn", [a], [a], k=1).best == 1.0
    # k=2, C = (3, 1, 2, 5, 4). Neighbour sets A: {3,4} {3,4} {3,4} {2,4} {2,3};
    # C: {3,4} {3,4} {3,4} {0,4} {0,3}. Shared: 2, 2, 2, 1, 1 -> 8 / (5 * 2) = 0.8.
    c = torch.tensor([[3.0], [1.0], [2.0], [5.0], [4.0]])
    assert [set(r) for r in knn_indices(c, 2).tolist()] == [{3, 4}, {3, 4}, {3, 4}, {0, 4}, {0, 3}]
    assert score_layers("mutual_knn", [a], [c], k=2).best == pytest.approx(0.8, abs=1e-15)


def test_ties_break_to_lower_index() -> None:
    x = torch.ones(6, 3)  # all similarities equal
    assert knn_indices(x, 2).tolist() == [[1, 2], [0, 2], [0, 1], [0, 1], [0, 1], [0, 1]]


def test_invariant_to_rotation_and_scaling() -> None:
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(60, 12, generator=g), torch.randn(60, 12, generator=g)
    q, _ = torch.linalg.qr(torch.randn(12, 12, generator=g))
    base = score_layers("mutual_knn", [x], [y], k=5).best
    assert score_layers("mutual_knn", [x @ q * 3.7], [y], k=5).best == pytest.approx(base, abs=1e-12)


def test_chance_level_for_independent_features() -> None:
    g = torch.Generator().manual_seed(0)
    n, k = 400, 10
    scores = [score_layers("mutual_knn", prepare([torch.randn(n, 64, generator=g)]),
                           prepare([torch.randn(n, 64, generator=g)]), k=k).best for _ in range(5)]
    chance = k / (n - 1)
    assert abs(sum(scores) / len(scores) - chance) < 3 * math.sqrt(chance / (n * k)) + 0.005


def test_best_index_and_3d_input() -> None:
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 30, 8, generator=g)
    y = torch.stack([torch.randn(30, 8, generator=g), x[2], torch.randn(30, 8, generator=g)])
    res = score_layers("mutual_knn", x, y, k=4)
    assert res.best_index == (2, 1) and res.best == 1.0


@pytest.mark.parametrize(
    "x, y, k, message",
    [
        (torch.randn(6, 3), torch.randn(6, 3), 6, "k must be in"),
        (torch.randn(6, 3), torch.randn(7, 3), 2, "different sample counts"),
        (torch.full((6, 3), float("nan")), torch.randn(6, 3), 2, "NaN"),
    ],
)
def test_bad_input(x: torch.Tensor, y: torch.Tensor, k: int, message: str) -> None:
    with pytest.raises(BadInput, match=message):
        score_layers("mutual_knn", [x], [y], k=k)


def test_unknown_metric_and_parameter() -> None:
    with pytest.raises(BadInput, match="unknown metric"):
        score_layers("nope", [torch.randn(5, 2)], [torch.randn(5, 2)])
    with pytest.raises(TypeError, match="unknown parameter"):
        score_layers("mutual_knn", [torch.randn(5, 2)], [torch.randn(5, 2)], kk=2)


def test_prepare_clamps_at_quantile_then_normalises() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(50, 7, generator=g).double()
    x[0, 0] = 1000.0
    (out,) = prepare([x], clamp_quantile=0.95)
    t = torch.quantile(x.abs().flatten(), 0.95)
    expected = torch.nn.functional.normalize(x.clamp(-t, t), dim=-1).float()
    torch.testing.assert_close(out, expected)
    assert torch.allclose(out.norm(dim=1), torch.ones(50))
    (raw,) = prepare([x], clamp_quantile=None, l2_normalize=False)
    torch.testing.assert_close(raw, x.float())
