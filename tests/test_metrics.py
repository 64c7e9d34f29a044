"""Every metric against a plain, slow implementation of its published definition (loops, numpy/scipy/sklearn,
no engine code), invariances the definitions imply, hand-computed cases and degenerate input."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from prh_bench.align import METRICS, prepare, score_layers
from prh_bench.errors import BadInput

# ---- plain reference implementations ---------------------------------------------------------------------


def ref_knn(x: np.ndarray, k: int) -> list[list[int]]:
    """Ordered k nearest neighbours by inner product, self excluded, ties to the lower index."""
    n = len(x)
    out = []
    for i in range(n):
        sims = sorted((-float(np.dot(x[i], x[j])), j) for j in range(n) if j != i)
        out.append([j for _, j in sims[:k]])
    return out


def ref_mutual_knn(a, b, k):
    na, nb = ref_knn(a, k), ref_knn(b, k)
    return np.mean([len(set(p) & set(q)) / k for p, q in zip(na, nb, strict=True)])


def ref_cycle_knn(a, b, k):
    na, nb = ref_knn(a, k), ref_knn(b, k)
    return np.mean([any(i in na[j] for j in nb[i]) for i in range(len(a))])


def ref_lcs(p, q):
    dp = [[0] * (len(q) + 1) for _ in range(len(p) + 1)]
    for i, x in enumerate(p):
        for j, y in enumerate(q):
            dp[i + 1][j + 1] = dp[i][j] + 1 if x == y else max(dp[i][j + 1], dp[i + 1][j])
    return dp[-1][-1]


def ref_levenshtein(p, q):
    dp = list(range(len(q) + 1))
    for i, x in enumerate(p, 1):
        prev, dp[0] = dp[0], i
        for j, y in enumerate(q, 1):
            prev, dp[j] = dp[j], min(dp[j] + 1, dp[j - 1] + 1, prev + (x != y))
    return dp[-1]


def ref_lcs_knn(a, b, k):
    return np.mean([ref_lcs(p, q) for p, q in zip(ref_knn(a, k), ref_knn(b, k), strict=True)]) / k


def ref_edit_knn(a, b, k):
    return 1 - np.mean([ref_levenshtein(p, q) for p, q in zip(ref_knn(a, k), ref_knn(b, k), strict=True)]) / k


def hsic_biased(K, L):
    n = len(K)
    H = np.eye(n) - np.ones((n, n)) / n
    return np.trace(K @ H @ L @ H)


def hsic_unbiased(K, L):
    """Song et al. 2012, as written in the PRH paper's code."""
    m = len(K)
    Kt, Lt = K.copy(), L.copy()
    np.fill_diagonal(Kt, 0)
    np.fill_diagonal(Lt, 0)
    value = np.sum(Kt * Lt.T) + Kt.sum() * Lt.sum() / ((m - 1) * (m - 2)) - 2 * np.sum(Kt @ Lt) / (m - 2)
    return value / (m * (m - 3))


def rbf(x, sigma):
    n = len(x)
    K = np.empty((n, n))
    for i in range(n):
        for j in range(n):
            K[i, j] = np.exp(-np.sum((x[i] - x[j]) ** 2) / (2 * sigma**2))
    return K


def ref_cka(a, b, kernel="linear", sigma=1.0, eps=0.0):
    """As the PRH code: HSIC unnormalised, eps added to the denominator."""
    K, L = (a @ a.T, b @ b.T) if kernel == "linear" else (rbf(a, sigma), rbf(b, sigma))
    return hsic_biased(K, L) / (np.sqrt(hsic_biased(K, K) * hsic_biased(L, L)) + eps)


def ref_unbiased_cka(a, b, eps=0.0):
    K, L = a @ a.T, b @ b.T
    return hsic_unbiased(K, L) / (np.sqrt(hsic_unbiased(K, K) * hsic_unbiased(L, L)) + eps)


def ref_cknna(a, b, k, eps=0.0):
    K, L = a @ a.T, b @ b.T
    n = len(a)

    def mask(x):
        m = np.zeros((n, n))
        for i, row in enumerate(ref_knn(x, k)):
            m[i, row] = 1
        return m

    def sim(K, L, mk, ml):
        m = mk * ml
        return hsic_unbiased(m * K, m * L)

    ma, mb = mask(a), mask(b)
    return sim(K, L, ma, mb) / (np.sqrt(sim(K, K, ma, ma) * sim(L, L, mb, mb)) + eps)


def ref_svcca(a, b, dims):
    """Top singular directions of standardised data, then CCA from covariance matrices."""

    def reduce(x):
        x = (x - x.mean(0)) / x.std(0, ddof=1)
        _u, _s, vt = np.linalg.svd(x, full_matrices=False)
        return x @ vt[:dims].T

    ra, rb = reduce(a), reduce(b)
    n = len(a)
    caa, cbb, cab = ra.T @ ra / (n - 1), rb.T @ rb / (n - 1), ra.T @ rb / (n - 1)

    def inv_sqrt(c):
        w, v = np.linalg.eigh(c)
        return v @ np.diag(w**-0.5) @ v.T

    return np.linalg.svd(inv_sqrt(caa) @ cab @ inv_sqrt(cbb), compute_uv=False).mean()


def ref_regression(a, b, folds, alpha, seed):
    from sklearn.linear_model import LinearRegression, Ridge

    n = len(a)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
    sse = sst = 0.0
    for test in np.array_split(order, folds):
        train = np.setdiff1d(np.arange(n), test)
        model = LinearRegression() if alpha == 0 else Ridge(alpha=alpha)
        model.fit(a[train], b[train])
        pred = model.predict(a[test])
        sse += np.sum((b[test] - pred) ** 2)
        sst += np.sum((b[test] - b[test].mean(0)) ** 2)
    return 1 - sse / sst


def ref_procrustes(a, b, fit="in_sample"):
    from scipy.linalg import orthogonal_procrustes

    a, b = a - a.mean(0), b - b.mean(0)
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    d = max(a.shape[1], b.shape[1])
    a = np.pad(a, ((0, 0), (0, d - a.shape[1])))
    b = np.pad(b, ((0, 0), (0, d - b.shape[1])))
    _, scale = orthogonal_procrustes(b, a)  # max over orthogonal R of <b R, a> = nuclear norm of b^T a
    return scale


def ref_folds(n, folds, seed):
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
    for test in np.array_split(order, folds):
        yield np.setdiff1d(np.arange(n), test), test


def ref_procrustes_cv(a, b, fit, folds, seed):
    """Per fold: scipy's orthogonal Procrustes fitted on the training rows (centred by their means, widths
    padded), then <B_test R, A_test> / (|A_test| |B_test|) with the test rows centred by the training means."""
    from scipy.linalg import orthogonal_procrustes

    d = max(a.shape[1], b.shape[1])
    a, b = np.pad(a, ((0, 0), (0, d - a.shape[1]))), np.pad(b, ((0, 0), (0, d - b.shape[1])))
    scores = []
    for train, test in ref_folds(len(a), folds, seed):
        ma, mb = a[train].mean(0), b[train].mean(0)
        r, _ = orthogonal_procrustes(b[train] - mb, a[train] - ma)
        ta, tb = a[test] - ma, b[test] - mb
        scores.append(np.sum((tb @ r) * ta) / (np.linalg.norm(ta) * np.linalg.norm(tb)))
    return np.mean(scores)


def unit_corr(a, b):
    return np.array([[np.corrcoef(a[:, i], b[:, j])[0, 1] for j in range(b.shape[1])] for i in range(a.shape[1])])


def ref_matching(c):
    """The best one-to-one matching of a unit-correlation matrix by enumeration: (rows, columns)."""
    flip = c.shape[0] > c.shape[1]
    c = c.T if flip else c
    best = max(
        itertools.permutations(range(c.shape[1]), c.shape[0]), key=lambda p: sum(c[i, p[i]] for i in range(len(p)))
    )
    rows, cols = list(range(len(best))), list(best)
    return (cols, rows) if flip else (rows, cols)


def ref_permutation(a, b, fit="in_sample"):
    c = unit_corr(a, b)
    return np.mean(c[ref_matching(c)])


def ref_soft_plan(c):
    from scipy.optimize import linprog

    dx, dy = c.shape
    a_eq = np.zeros((dx + dy, dx * dy))
    for i in range(dx):
        a_eq[i, i * dy : (i + 1) * dy] = 1
    for j in range(dy):
        a_eq[dx + j, j::dy] = 1
    b_eq = np.concatenate([np.full(dx, 1 / dx), np.full(dy, 1 / dy)])
    return linprog(-c.ravel(), A_eq=a_eq, b_eq=b_eq, bounds=(0, None), method="highs").x.reshape(dx, dy)


def ref_unit_matching_cv(a, b, fit, folds, seed, soft=False):
    """Per fold: the matching fitted on the training rows' unit correlations, scored with the test rows'."""
    scores = []
    for train, test in ref_folds(len(a), folds, seed):
        fitted, held_out = unit_corr(a[train], b[train]), unit_corr(a[test], b[test])
        if soft:
            scores.append(np.sum(ref_soft_plan(fitted) * held_out))
        else:
            scores.append(np.mean(held_out[ref_matching(fitted)]))
    return np.mean(scores)


def ref_permutation_cv(a, b, fit, folds, seed):
    return ref_unit_matching_cv(a, b, fit, folds, seed)


def ref_soft_matching_cv(a, b, fit, folds, seed):
    return ref_unit_matching_cv(a, b, fit, folds, seed, soft=True)


def ref_soft_matching(a, b, fit="in_sample"):
    c = unit_corr(a, b)
    return np.sum(ref_soft_plan(c) * c)


def ref_rsa(a, b):
    from scipy.stats import spearmanr

    iu = np.triu_indices(len(a), 1)
    return spearmanr((1 - np.corrcoef(a))[iu], (1 - np.corrcoef(b))[iu]).statistic


REFERENCES = {
    "mutual_knn": (ref_mutual_knn, {"k": 4}),
    "cycle_knn": (ref_cycle_knn, {"k": 4}),
    "lcs_knn": (ref_lcs_knn, {"k": 4}),
    "edit_distance_knn": (ref_edit_knn, {"k": 4}),
    "cka": (ref_cka, {}),
    "unbiased_cka": (ref_unbiased_cka, {}),
    "cknna": (ref_cknna, {"k": 5}),
    "svcca": (ref_svcca, {"dims": 3}),
    "linear_regression": (ref_regression, {"folds": 4, "alpha": 0.0, "seed": 0}),
    "procrustes": (ref_procrustes_cv, {"fit": "cross_validated", "folds": 3, "seed": 1}),
    "permutation": (ref_permutation_cv, {"fit": "cross_validated", "folds": 3, "seed": 1}),
    "soft_matching": (ref_soft_matching_cv, {"fit": "cross_validated", "folds": 3, "seed": 1}),
    "rsa": (ref_rsa, {}),
}


def feature_sets(seed: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Random layers, and structured ones: a shared latent seen through different maps, plus clusters."""
    g = torch.Generator().manual_seed(seed)
    n = 24
    latent = torch.randn(n, 3, generator=g, dtype=torch.float64)
    clusters = torch.randn(4, 5, generator=g, dtype=torch.float64)[torch.arange(n) % 4]
    x = [
        torch.randn(n, 5, generator=g, dtype=torch.float64),
        latent @ torch.randn(3, 6, generator=g, dtype=torch.float64)
        + 0.1 * torch.randn(n, 6, generator=g, dtype=torch.float64),
    ]
    y = [
        torch.tanh(latent @ torch.randn(3, 4, generator=g, dtype=torch.float64)),
        clusters + 0.3 * torch.randn(n, 5, generator=g, dtype=torch.float64),
        torch.randn(n, 3, generator=g, dtype=torch.float64),
    ]
    return x, y


def test_every_metric_has_a_reference() -> None:
    assert set(METRICS) == set(REFERENCES)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_metric_matches_reference(name: str, seed: int) -> None:
    ref, params = REFERENCES[name]
    x, y = feature_sets(seed)
    got = score_layers(name, x, y, **params).matrix
    assert got.shape == (len(x), len(y))
    for i, a in enumerate(x):
        for j, b in enumerate(y):
            assert got[i, j].item() == pytest.approx(float(ref(a.numpy(), b.numpy(), **params)), abs=1e-6), (i, j)


@pytest.mark.parametrize("kernel, sigma", [("rbf", 1.0), ("rbf", 3.0)])
def test_rbf_cka_matches_reference(kernel: str, sigma: float) -> None:
    x, y = feature_sets(2)
    got = score_layers("cka", x, y, kernel=kernel, sigma=sigma).matrix
    for i, a in enumerate(x):
        for j, b in enumerate(y):
            assert got[i, j].item() == pytest.approx(ref_cka(a.numpy(), b.numpy(), kernel, sigma), abs=1e-6)


def test_ridge_regression_matches_sklearn() -> None:
    x, y = feature_sets(3)
    params = {"folds": 3, "alpha": 2.5, "seed": 7}
    got = score_layers("linear_regression", x, y, **params).matrix
    assert got[1, 0].item() == pytest.approx(ref_regression(x[1].numpy(), y[0].numpy(), **params), abs=1e-6)


@pytest.mark.parametrize(
    ("name", "ref"),
    [("procrustes", ref_procrustes), ("permutation", ref_permutation), ("soft_matching", ref_soft_matching)],
)
def test_in_sample_fits_match_reference(name: str, ref) -> None:
    x, y = feature_sets(3)
    got = score_layers(name, x, y, fit="in_sample").matrix
    for i, a in enumerate(x):
        for j, b in enumerate(y):
            assert got[i, j].item() == pytest.approx(ref(a.numpy(), b.numpy()), abs=1e-6), (i, j)


def ref_gcv_alpha(a, b):
    """GCV of a ridge fit with intercept, from the explicit hat matrix, over the grid relative to the mean
    nonzero eigenvalue of Xc^T Xc; ties to the larger penalty."""
    from prh_bench.align.regression import GCV_GRID

    n = len(a)
    xc = a - a.mean(0)
    eig = np.linalg.eigvalsh(xc.T @ xc)
    lam = eig[eig > eig.max() * 1e-20].mean()
    best, chosen = np.inf, None
    for rel in GCV_GRID:
        alpha = lam * rel
        hat = np.ones((n, n)) / n + xc @ np.linalg.solve(xc.T @ xc + alpha * np.eye(a.shape[1]), xc.T)
        gcv = n * np.sum((b - hat @ b) ** 2) / (n - np.trace(hat)) ** 2
        if gcv <= best * (1 + 1e-9):
            best, chosen = min(best, gcv), alpha
    return chosen


def test_gcv_regression_equals_sklearn_ridge_at_the_gcv_penalty() -> None:
    from sklearn.linear_model import Ridge

    x, y = feature_sets(3)
    folds, seed = 3, 7
    got = score_layers("linear_regression", x, y, folds=folds, seed=seed).matrix  # alpha: gcv by default
    for i, a in enumerate(x):
        for j, b in enumerate(y):
            a64, b64 = a.numpy(), b.numpy()
            sse = sst = 0.0
            for train, test in ref_folds(len(a64), folds, seed):
                alpha = ref_gcv_alpha(a64[train], b64[train])
                pred = Ridge(alpha=alpha).fit(a64[train], b64[train]).predict(a64[test])
                sse += np.sum((b64[test] - pred) ** 2)
                sst += np.sum((b64[test] - b64[test].mean(0)) ** 2)
            assert got[i, j].item() == pytest.approx(1 - sse / sst, abs=1e-6), (i, j)


@pytest.mark.parametrize(
    ("name", "params"),
    [("cka", {}), ("cka", {"kernel": "rbf", "sigma": 2.0}), ("unbiased_cka", {}), ("cknna", {"k": 5})],
)
def test_paper_epsilon_gives_the_paper_codes_values(name: str, params: dict) -> None:
    x, y = feature_sets(19)
    x = [a * 0.01 for a in x]  # small kernels, where the epsilon matters
    ref = REFERENCES[name][0]
    exact = score_layers(name, x, y, **params).matrix
    paper = score_layers(name, x, y, eps=1e-6, **params).matrix
    for i, a in enumerate(x):
        for j, b in enumerate(y):
            assert paper[i, j].item() == pytest.approx(ref(a.numpy(), b.numpy(), eps=1e-6, **params), abs=1e-9)
    assert not torch.equal(exact, paper)


def test_cross_validated_fits_sit_near_zero_on_unrelated_features_and_near_one_on_rotated_copies() -> None:
    g = torch.Generator().manual_seed(20)
    n = 320
    for d in (16, 64):
        a, b = (torch.randn(n, d, generator=g, dtype=torch.float64) for _ in range(2))
        in_sample = score_layers("procrustes", [a], [b], fit="in_sample").best
        held_out = score_layers("procrustes", [a], [b]).best
        assert in_sample > 0.15 and abs(held_out) < 0.05, (d, in_sample, held_out)
        for name in ("permutation", "soft_matching"):
            assert score_layers(name, [a], [b], fit="in_sample").best > 0.05
            assert abs(score_layers(name, [a], [b]).best) < 0.05
        copy = a @ rotation(d, d) * 2.5 - 3
        assert score_layers("procrustes", [a], [copy]).best == pytest.approx(1.0, abs=1e-9)
    # At the interpolation threshold (255 units, 256 training rows) least squares explodes; GCV does not.
    a, b = (torch.randn(n, 255, generator=g, dtype=torch.float64) for _ in range(2))
    assert score_layers("linear_regression", [a], [b], alpha=0.0).best < -100
    assert -0.1 < score_layers("linear_regression", [a], [b]).best < 0.05
    assert score_layers("linear_regression", [a], [a @ rotation(255, 1) + 1]).best > 0.99


def test_clamp_modes_match_their_definitions() -> None:
    """Layers of very different scales: per_layer clamps each at its own quantile, paper at one threshold for
    the stack (each sample's quantile over all its values, averaged), paper_exact at the sorted stack's
    int(q * numel)-th value; layers of different widths fall back to one threshold per layer."""
    g = torch.Generator().manual_seed(21)
    layers = [torch.randn(40, 12, generator=g, dtype=torch.float64) * scale for scale in (0.01, 1.0, 30.0)]
    layers[1][3, 4] = 500.0
    q = 0.95
    stack = torch.stack(layers, dim=1)  # N x L x D, as the paper pipeline loads it
    paper_t = torch.quantile(stack.abs().flatten(start_dim=1), q, dim=1).mean()
    exact_t = stack.flatten().abs().sort().values[int(q * stack.numel())]
    expected = {
        "per_layer": [x.clamp(-torch.quantile(x.abs(), q), torch.quantile(x.abs(), q)) for x in layers],
        "paper": [x.clamp(-paper_t, paper_t) for x in layers],
        "paper_exact": [x.clamp(-exact_t, exact_t) for x in layers],
    }
    for mode, want in expected.items():
        got = prepare(layers, clamp_quantile=q, l2_normalize=False, clamp=mode)
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, atol=1e-7, rtol=0, msg=mode)
        normed = prepare(layers, clamp_quantile=q, clamp=mode)
        torch.testing.assert_close(normed[2], torch.nn.functional.normalize(want[2], dim=-1), atol=1e-7, rtol=0)
    assert not torch.equal(expected["paper"][0], expected["per_layer"][0])
    ragged = [layers[0], layers[1][:, :7]]
    for mode in ("paper", "paper_exact"):
        got = prepare(ragged, clamp_quantile=q, l2_normalize=False, clamp=mode)
        for a, x in zip(got, ragged, strict=True):
            t = (
                torch.quantile(x.abs(), q, dim=1).mean()
                if mode == "paper"
                else x.flatten().abs().sort().values[int(q * x.numel())]
            )
            torch.testing.assert_close(a, x.clamp(-t, t), atol=1e-7, rtol=0, msg=mode)
    with pytest.raises(ValueError, match="clamp must be one of"):
        prepare(layers, clamp="global")


def test_calibrated_score_is_the_calibrated_similarity_definition() -> None:
    from prh_bench.align.calibrate import calibrated_score

    # R = 9 nulls and the observation: 0.05 .. 0.4 in steps of 0.05, 0.5 (observed), 0.6.
    null = torch.tensor([0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.6], dtype=torch.float64)
    # alpha = 0.2: tau is the ceil(0.8 * 10) = 8th smallest = 0.4 -> (0.5 - 0.4) / (1 - 0.4) = 1/6
    assert calibrated_score(0.5, null, alpha=0.2) == pytest.approx((0.4, 1 / 6), abs=1e-15)
    # alpha = 0.05: tau is the 10th smallest = 0.6 > observed -> clamped to 0
    assert calibrated_score(0.5, null, alpha=0.05) == pytest.approx((0.6, 0.0), abs=1e-15)
    # 19 nulls, alpha 0.05: ceil(0.95 * 20) = 19 exactly (not 20 by float rounding)
    null = torch.arange(1, 20, dtype=torch.float64) / 40  # 0.025 .. 0.475
    assert calibrated_score(0.9, null, alpha=0.05) == pytest.approx((0.475, (0.9 - 0.475) / 0.525), abs=1e-12)
    # lower is better: the order flips, and so does the way to the maximum (here 0)
    assert calibrated_score(
        0.1, torch.tensor([0.5, 0.6, 0.7, 0.8]), alpha=0.2, maximum=0.0, higher_is_better=False
    ) == pytest.approx((0.5, 0.8), abs=1e-12)


def test_float32_features_agree_with_float64() -> None:
    x, y = feature_sets(4)
    for name in ("cka", "unbiased_cka", "cknna", "mutual_knn"):
        params = {"k": 5} if name in ("cknna", "mutual_knn") else {}
        hi = score_layers(name, x, y, **params).matrix
        lo = score_layers(name, [t.float() for t in x], [t.float() for t in y], **params).matrix
        torch.testing.assert_close(lo, hi, atol=1e-5, rtol=0)


# ---- invariances ------------------------------------------------------------------------------------------


def rotation(d: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


@pytest.mark.parametrize(
    "name, params",
    [("cka", {}), ("unbiased_cka", {}), ("mutual_knn", {"k": 5}), ("cknna", {"k": 5}), ("procrustes", {})],
)
def test_invariant_to_rotation_and_isotropic_scaling(name: str, params: dict) -> None:
    x, y = feature_sets(5)
    base = score_layers(name, x, y, **params).matrix
    moved = score_layers(name, [a @ rotation(a.shape[1], 1) * 4.2 for a in x], y, **params).matrix
    torch.testing.assert_close(moved, base, atol=1e-9, rtol=0)


def test_procrustes_is_one_for_a_rotated_shifted_scaled_copy() -> None:
    x, _ = feature_sets(6)
    a = x[1]
    assert score_layers("procrustes", [a], [a @ rotation(6, 2) * 3 + 1]).best == pytest.approx(1.0, abs=1e-12)


def test_permutation_and_soft_matching_are_one_for_a_unit_permuted_copy() -> None:
    x, _ = feature_sets(7)
    a = x[1]
    copy = a[:, torch.tensor([3, 0, 5, 1, 4, 2])] * torch.tensor([2.0, 0.5, 1, 3, 1, 7], dtype=torch.float64) - 1
    for name in ("permutation", "soft_matching"):
        assert score_layers(name, [a], [copy]).best == pytest.approx(1.0, abs=1e-12)
    rotated = score_layers("permutation", [a], [a @ rotation(6, 3)]).best
    assert rotated < 0.95  # a rotation is not a relabelling of units


@pytest.mark.parametrize("name", sorted(set(REFERENCES) - {"cycle_knn"}))
def test_identical_inputs_give_the_maximum(name: str) -> None:
    # cycle_knn is excluded: with identical inputs a neighbour j of i need not have i among its own neighbours.
    x, y = feature_sets(8)
    params = dict(REFERENCES[name][1])
    same = score_layers(name, [x[1]], [x[1]], **params).best
    assert same == pytest.approx(1.0, abs=1e-9)
    assert score_layers(name, [x[1]], y, **params).best <= same + 1e-12


def test_mutual_knn_near_chance_for_independent_features() -> None:
    g = torch.Generator().manual_seed(0)
    n, k = 400, 10
    scores = [
        score_layers(
            "mutual_knn", prepare([torch.randn(n, 64, generator=g)]), prepare([torch.randn(n, 64, generator=g)]), k=k
        ).best
        for _ in range(5)
    ]
    chance = k / (n - 1)
    assert abs(np.mean(scores) - chance) < 0.01


# ---- hand-computed cases ----------------------------------------------------------------------------------

LINE = torch.tensor([[1.0], [2.0], [3.0], [4.0], [5.0]], dtype=torch.float64)
SHUFFLED = torch.tensor([[3.0], [1.0], [2.0], [5.0], [4.0]], dtype=torch.float64)


def test_hand_computed_mutual_knn() -> None:
    # Scalars: the inner product is a product. k=2 neighbour sets of 1..5: {3,4} {3,4} {3,4} {2,4} {2,3};
    # of (3,1,2,5,4): {3,4} {3,4} {3,4} {0,4} {0,3}. Shared 2,2,2,1,1 -> 8 / (5 * 2) = 0.8.
    assert score_layers("mutual_knn", [LINE], [SHUFFLED], k=2).best == pytest.approx(0.8, abs=1e-15)
    # k=1: reversing the values reverses the roles -> no shared neighbour at all.
    assert score_layers("mutual_knn", [LINE], [LINE.flip(0)], k=1).best == 0.0


def test_hand_computed_cycle_knn() -> None:
    # k=1: N_line = [4, 4, 4, 4, 3]; N_shuffled = [3, 3, 3, 4, 3]. i -> shuffled -> line -> i holds for i = 3
    # (3 -> 4 -> 3) and i = 4 (4 -> 3 -> 4): 2 of 5.
    assert score_layers("cycle_knn", [LINE], [SHUFFLED], k=1).best == pytest.approx(0.4, abs=1e-15)


def test_hand_computed_cka() -> None:
    # For one-dimensional features linear CKA is the squared Pearson correlation: x = 1..5, y = (1, 2, 3, 4, 6):
    # x_c.y_c = 12, |x_c|^2 = 10, |y_c|^2 = 14.8 -> 144 / 148 = 36/37.
    y = torch.tensor([[1.0], [2.0], [3.0], [4.0], [6.0]], dtype=torch.float64)
    assert score_layers("cka", [LINE], [y]).best == pytest.approx(36 / 37, abs=1e-12)


def test_ties_break_to_lower_index() -> None:
    from prh_bench.align.knn import knn_indices

    assert knn_indices(torch.ones(6, 3), 2).tolist() == [[1, 2], [0, 2], [0, 1], [0, 1], [0, 1], [0, 1]]


# ---- degenerate input -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, x, y, params, message",
    [
        ("unbiased_cka", torch.randn(3, 4), torch.randn(3, 4), {}, "needs at least 4 samples, got N=3"),
        ("cknna", torch.randn(3, 4), torch.randn(3, 4), {"k": 2}, "needs at least 4 samples"),
        ("mutual_knn", torch.randn(6, 3), torch.randn(6, 3), {"k": 6}, "k must be in \\[1, N-1\\]"),
        ("cknna", torch.randn(8, 3), torch.randn(8, 3), {"k": 1}, "parameter 'k' must be an integer in \\[2, "),
        (
            "mutual_knn",
            torch.randn(8, 3),
            torch.randn(8, 3),
            {"kk": 3},
            "unknown parameter 'kk' \\(did you mean 'k'\\?\\)",
        ),
        ("mutual_knn", torch.randn(8, 3), torch.randn(8, 3), {"k": "5"}, "parameter 'k' must be an integer"),
        ("mutual_knn", torch.randn(8, 3), torch.randn(8, 3), {"k": 5.5}, "parameter 'k' must be an integer"),
        ("mutual_knn", torch.randn(8, 3), torch.randn(8, 3), {"k": -1}, "parameter 'k' must be an integer in \\[1, "),
        ("mutual_knn", torch.randn(8, 3), torch.randn(8, 3), {"k": True}, "parameter 'k' must be an integer"),
        ("mutual_knn", torch.randn(8, 3), torch.randn(8, 3), {"k": 2**70}, "parameter 'k' must be an integer in"),
        ("cka", torch.randn(8, 3), torch.randn(8, 3), {"eps": float("nan")}, "parameter 'eps' must be a number >= 0"),
        ("cka", torch.randn(8, 3), torch.randn(8, 3), {"sigma": 0}, "parameter 'sigma' must be a number > 0"),
        ("linear_regression", torch.randn(8, 3), torch.randn(8, 3), {"alpha": "loo"}, "'gcv' or a number >= 0"),
        (
            "procrustes",
            torch.randn(8, 3),
            torch.randn(8, 3),
            {"fit": "in-sample"},
            "one of 'cross_validated', 'in_sample'",
        ),
        ("procrustes", torch.randn(8, 3), torch.randn(8, 3), {"folds": 5}, "folds must be in \\[2, N/2\\]"),
        ("cka", torch.ones(6, 3), torch.randn(6, 3), {}, "constant across samples"),
        ("rsa", torch.randn(6, 3), torch.full((6, 3), float("inf")), {}, "NaN or infinite"),
        ("cka", torch.randn(6, 3), torch.randn(7, 3), {}, "different sample counts \\(6 vs 7\\)"),
        ("svcca", torch.randn(6, 3), torch.randn(6, 3), {"dims": 5}, "exceeds the rank"),
        ("linear_regression", torch.randn(6, 3), torch.randn(6, 3), {"folds": 4}, "folds must be in"),
        (
            "cka",
            torch.randn(6, 3),
            torch.randn(6, 3),
            {"kernel": "poly"},
            "parameter 'kernel' must be one of 'linear', 'rbf'",
        ),
    ],
)
def test_degenerate_input_is_a_clear_error(name, x, y, params, message) -> None:
    with pytest.raises(BadInput, match=message):
        score_layers(name, [x], [y], **params)


def test_no_nan_escapes_for_any_metric_on_dead_units() -> None:
    x, y = feature_sets(9)
    dead = torch.cat([x[1], torch.zeros(24, 2, dtype=torch.float64)], dim=1)  # ReLU units that never fire
    for name in METRICS:
        params = dict(REFERENCES[name][1])
        assert torch.isfinite(score_layers(name, [dead], y, **params).matrix).all(), name


# ---- layer handling and calibration -----------------------------------------------------------------------


def test_best_index_and_3d_input() -> None:
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 30, 8, generator=g)
    y = torch.stack([torch.randn(30, 8, generator=g), x[2], torch.randn(30, 8, generator=g)])
    res = score_layers("mutual_knn", x, y, k=4)
    assert res.best_index == (2, 1) and res.best == 1.0


def test_prepare_clamps_at_quantile_normalises_and_concatenates() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(50, 7, generator=g, dtype=torch.float64)
    x[0, 0] = 1000.0
    (out,) = prepare([x], clamp_quantile=0.95)
    t = torch.quantile(x.abs().flatten(), 0.95)
    torch.testing.assert_close(out, torch.nn.functional.normalize(x.clamp(-t, t), dim=-1))
    (raw,) = prepare([x.float()], clamp_quantile=None, l2_normalize=False)
    assert raw.dtype == torch.float32 and torch.equal(raw, x.float())
    y = torch.randn(50, 3, generator=g, dtype=torch.float64)
    layers = prepare([x, y], clamp_quantile=None, concat_layers=True)
    assert len(layers) == 3 and layers[2].shape == (50, 10)
    torch.testing.assert_close(layers[2], torch.nn.functional.normalize(torch.cat([x, y], 1), dim=-1))


def test_calibration_reuses_summaries_and_separates_signal_from_chance() -> None:
    x, y = feature_sets(10)
    related = score_layers("cka", x, [x[1] @ rotation(6, 4) + 0.05 * y[1][:, :1]], permutations=200)
    cal = related.calibration
    assert cal is not None and len(cal.null) == 200
    assert cal.p_value == pytest.approx(1 / 201)
    mean = cal.null.mean().item()
    assert cal.null_normalized == pytest.approx((related.best - mean) / (1 - mean))
    tau = (
        torch.cat([torch.tensor([related.best], dtype=torch.float64), cal.null]).sort().values[191 - 1]
    )  # ceil(.95*201)
    assert cal.tau == tau.item() and cal.calibrated == pytest.approx((related.best - tau.item()) / (1 - tau.item()))
    g = torch.Generator().manual_seed(11)
    noise = score_layers(
        "mutual_knn", [torch.randn(40, 8, generator=g)], [torch.randn(40, 8, generator=g)], k=5, permutations=200
    )
    assert noise.calibration.p_value > 0.05 and noise.calibration.calibrated == 0.0
    assert abs(noise.calibration.null_normalized) < 0.1


def test_calibration_null_is_the_max_over_layer_pairs_of_permuted_copies() -> None:
    """The permuted summary must equal the summary of permuted features, for every metric."""
    from prh_bench.align import get_metric

    x, y = feature_sets(12)
    perm = torch.randperm(24, generator=torch.Generator().manual_seed(0))
    for name in METRICS:
        m = get_metric(name)
        params = m.params(**REFERENCES[name][1])
        sx = [m.summarize(a, **params) for a in x]
        via_summary = m.pair_scores(sx, [m.permute(m.summarize(b, **params), perm) for b in y], **params)
        direct = m.pair_scores(sx, [m.summarize(b[perm], **params) for b in y], **params)
        torch.testing.assert_close(via_summary, direct, atol=1e-9, rtol=0, msg=name)


# ---- whole zoos -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_many_pairs_at_once_equal_pairwise_scores(name: str) -> None:
    from prh_bench.align import get_metric, summarize_layers
    from prh_bench.align.pair_batches import score_pairs

    m = get_metric(name)
    params = m.params(**REFERENCES[name][1])
    x, y = feature_sets(13)
    z, _ = feature_sets(14)
    models = {"x": x, "y": y, "z": z[:1]}
    # The zoo from each model's summaries laid out together, the pairs from layers summarized one by one.
    summaries = {k: [m.summarize(t, **params) for t in v] for k, v in models.items()}
    zoo = score_pairs(
        m,
        {k: summarize_layers(m, v, **params) for k, v in models.items()},
        [("x", "y"), ("x", "z"), ("y", "z")],
        params,
    )
    assert len(zoo) == 6  # both orders of each pair
    for a in models:
        for b in models:
            if a != b:
                expected = m.pair_scores(summaries[a], summaries[b], **params)
                torch.testing.assert_close(zoo[(a, b)], expected, atol=1e-12, rtol=0, msg=f"{name} {a}-{b}")
    with pytest.raises(ValueError, match="with itself"):
        score_pairs(m, summaries, [("x", "x")], params)


def test_blocked_gram_on_larger_inputs() -> None:
    from prh_bench.align.search import gram

    g = torch.Generator().manual_seed(15)
    x = torch.randn(300, 20, generator=g, dtype=torch.float64)
    torch.testing.assert_close(gram(x), x @ x.T, atol=1e-12, rtol=0)
    assert torch.equal(gram(x), gram(x).T)
    y = torch.tanh(x[:, :5] @ torch.randn(5, 8, generator=g, dtype=torch.float64))
    assert score_layers("cka", [x], [y]).best == pytest.approx(ref_cka(x.numpy(), y.numpy()), abs=1e-9)
    assert score_layers("mutual_knn", [x], [y], k=10).best == pytest.approx(
        ref_mutual_knn(x.numpy(), y.numpy(), 10), abs=1e-12
    )


@pytest.mark.parametrize(
    ("name", "params"), [("cka", {}), ("cka", {"kernel": "rbf", "sigma": 2.0}), ("unbiased_cka", {})]
)
def test_kernel_blocks_at_n_of_at_least_256(name: str, params: dict) -> None:
    """From N = 256 on, kernels are kept as the blocks of their upper triangle and a model's layers as one
    stack: scores, permuted summaries and zoo blocks must still be those of the definition."""
    from prh_bench.align import get_metric, summarize_layers
    from prh_bench.align.pair_batches import score_pairs

    g = torch.Generator().manual_seed(16)
    n = 301  # blocks of unequal size
    x = [torch.randn(n, 6, generator=g, dtype=torch.float64) for _ in range(2)]
    y = [
        torch.tanh(x[0][:, :3] @ torch.randn(3, 5, generator=g, dtype=torch.float64)),
        torch.randn(n, 4, generator=g, dtype=torch.float64),
    ]
    m = get_metric(name)
    p = m.params(**params)
    ref = REFERENCES[name][0]
    got = score_layers(name, x, y, **params).matrix
    for i, j in itertools.product(range(2), range(2)):
        assert got[i, j].item() == pytest.approx(ref(x[i].numpy(), y[j].numpy(), **params), abs=1e-9)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(1))
    sx = summarize_layers(m, x, **p)
    via_summary = m.pair_scores(sx, [m.permute(s, perm) for s in summarize_layers(m, y, **p)], **p)
    direct = m.pair_scores(sx, summarize_layers(m, [b[perm] for b in y], **p), **p)
    torch.testing.assert_close(via_summary, direct, atol=1e-12, rtol=0)
    zoo = score_pairs(
        m,
        {"x": sx, "y": summarize_layers(m, y, **p), "z": summarize_layers(m, x[:1], **p)},
        [("x", "y"), ("z", "x"), ("y", "z")],
        p,
    )
    torch.testing.assert_close(zoo[("x", "y")], got, atol=1e-12, rtol=0)
    torch.testing.assert_close(zoo[("z", "x")][0, 0], torch.tensor(1.0, dtype=torch.float64), atol=1e-12, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_features_are_scored_as_their_float32_values(dtype: torch.dtype) -> None:
    """GPU extraction may store bf16/fp16 features: every metric computes on them in at least float32, so they
    score like the same values given in float32."""
    g = torch.Generator().manual_seed(17)
    latent = torch.randn(64, 4, generator=g)
    x = [
        torch.tanh(latent @ torch.randn(4, 12, generator=g)) + 0.1 * torch.randn(64, 12, generator=g) for _ in range(2)
    ]
    y = [torch.relu(latent @ torch.randn(4, 10, generator=g)) + 0.1 * torch.randn(64, 10, generator=g)]
    hx, hy = [a.to(dtype) for a in x], [b.to(dtype) for b in y]
    for name in METRICS:
        params = REFERENCES[name][1]
        half = score_layers(name, hx, hy, **params).matrix
        single = score_layers(name, [a.float() for a in hx], [b.float() for b in hy], **params).matrix
        assert half.dtype == torch.float64
        torch.testing.assert_close(half, single, atol=1e-6, rtol=0, msg=name)


def test_pair_stages_in_small_chunks_equal_one_batch() -> None:
    """CKA copied into stacks of one or two kernels, CKNNA with slot tables of at most two layers: the same
    scores as in one batch, both ways for CKNNA."""
    from prh_bench.align.kernels import CKA, CKNNA

    x, y = feature_sets(18)
    y = y + [a[:, :2] for a in x]
    small_cka, cka = CKA(), CKA()
    small_cka.stack_bytes = 8 * 24 * 24  # one kernel per stack
    sx, sy = [cka.summarize(a, **cka.params()) for a in x], [cka.summarize(b, **cka.params()) for b in y]
    torch.testing.assert_close(
        small_cka.cross_scores(sx, sy, **cka.params()), cka.cross_scores(sx, sy, **cka.params()), atol=1e-12, rtol=0
    )
    small_cknna, cknna = CKNNA(), CKNNA()
    small_cknna.chunk = 2
    p = cknna.params(k=5)
    sx, sy = [cknna.summarize(a, **p) for a in x], [cknna.summarize(b, **p) for b in y]
    for got, want in zip(small_cknna.pair_scores_both(sx, sy, **p), cknna.pair_scores_both(sx, sy, **p), strict=True):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
    xy, yx = cknna.pair_scores_both(sx, sy, **p)
    torch.testing.assert_close(
        xy[1, 2], torch.tensor(ref_cknna(x[1].numpy(), y[2].numpy(), 5), dtype=torch.float64), atol=1e-9, rtol=0
    )
    torch.testing.assert_close(
        yx[2, 1], torch.tensor(ref_cknna(y[2].numpy(), x[1].numpy(), 5), dtype=torch.float64), atol=1e-9, rtol=0
    )


def test_tf32_precision_rounds_the_prepared_features_as_a_tf32_matmul_reads_them() -> None:
    """The PRH code's measuring step (without --precise) turns on TF32 matmuls on the GPU: each input keeps 10 of
    float32's 23 mantissa bits, rounded to nearest, ties to even. `precision: tf32` rounds the prepared features
    so, on any device; checked against a float64 reference and by hand."""
    from prh_bench.align.prepare import to_tf32

    one = torch.tensor([1 + 2**-11, 1 + 3 * 2**-11, -(1 + 2**-11 + 2**-20), 2**-10 * (1 + 2**-11)], dtype=torch.float32)
    assert to_tf32(one).tolist() == [1.0, 1 + 2**-9, -(1 + 2**-10), 2**-10]
    x = torch.randn(2000, dtype=torch.float32) * torch.logspace(-6, 6, 2000)
    m, e = np.frexp(x.double().numpy())  # x = m * 2**e, 0.5 <= |m| < 1: TF32 keeps 11 significant bits
    reference = np.ldexp(np.round(m * 2**11) / 2**11, e)  # numpy rounds halves to even
    assert np.array_equal(to_tf32(x).double().numpy(), reference)
    feats = [torch.randn(40, 16), torch.randn(40, 8)]
    plain, tf32 = prepare(feats), prepare(feats, precision="tf32")
    assert all(torch.equal(to_tf32(a), b) for a, b in zip(plain, tf32, strict=True)) and not torch.equal(
        plain[0], tf32[0]
    )
    assert (plain[0] - tf32[0]).abs().max() <= 2**-11
