"""The skew part's effective rank from probe terms (wgfm.diagnostics.spectrum) and adaptive
stopping (wgfm.diagnostics.adaptive), against exact Jacobians of linear fields with known skew
spectra: flat (an orthogonal M, r_eff = D) and rank k (k/2 equal pairs, r_eff = k)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wgfm.diagnostics import asymmetry, probe_asymmetry
from wgfm.diagnostics.adaptive import adaptive_probe_asymmetry
from wgfm.diagnostics.jacobian import make_probes, probe_terms, summarise_terms
from wgfm.diagnostics.spectrum import (
    estimate_effective_rank,
    probes_for_target,
    rademacher_rank,
    skew_effective_rank,
)

D = 32


def _matrix(
    rank: int | None, lam: float = 0.3, seed: int = 0, diagonal: bool = False
) -> np.ndarray:
    """``A = S + c W`` with ``||A - A^T|| / ||A|| = lam``; ``W``'s singular values all equal, on
    a random basis, ``rank`` of them (``None``: all D, W orthogonal); ``S`` Gaussian symmetric,
    or diagonal (``diagonal``: where Rademacher probes see no spread from ``S`` at all)."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(D, D)))
    k = D if rank is None else rank
    w = np.zeros((D, D))
    for j in range(0, k, 2):
        w += np.outer(q[:, j], q[:, j + 1]) - np.outer(q[:, j + 1], q[:, j])
    g = rng.normal(size=(D, D))
    s = np.diag(rng.uniform(0.5, 2.0, D)) if diagonal else (g + g.T) / 2
    c = lam * np.linalg.norm(s) / (np.linalg.norm(w) * np.sqrt(4 - lam**2))
    return s + c * w


def _terms(a, kind, num, seed=1):
    field = lambda x, t: jnp.asarray(a) @ x  # noqa: E731
    probes = make_probes(jax.random.key(seed), num, (D,), kind=kind)
    return probe_terms(field, jnp.ones(D), 0.0, probes, method="vjp")


@pytest.mark.parametrize("rank", [None, 4])
def test_exact_effective_rank_of_known_spectra(rank):
    a = _matrix(rank)
    assert float(skew_effective_rank(jnp.asarray(a))) == pytest.approx(rank or D, rel=1e-10)
    assert float(skew_effective_rank(jnp.asarray(a + a.T))) == 0.0  # symmetric: no skew part


@pytest.mark.parametrize("rank", [None, 4])
def test_gaussian_probe_estimate_of_the_effective_rank(rank):
    """Gaussian probes: r_hat estimates r_eff (consistent; its bias is O(1/K) relative). K =
    4000: the relative s.e. of a sample variance of chi^2_k terms is sqrt((2 + 12 / k) / K), 6%
    at k = 4, 2.4% at 32; 4 s.e. plus a 1/K bias is within 25% / 10%."""
    a = _matrix(rank)
    a2 = _terms(a, "gaussian", 4000)[0]
    est = float(estimate_effective_rank(a2, D, kind="gaussian"))
    assert est == pytest.approx(rank or D, rel=0.25 if rank else 0.1)


def test_rademacher_probe_estimate_and_its_bound():
    """Rademacher probes: r_hat estimates r_R (rademacher_rank, exact), and the returned
    1 / (1 / r_hat + 1 / D) bounds r_eff from above, equal to it for a flat, orthogonal M
    (every term is D: no spread at all)."""
    flat = _matrix(None)
    a2 = _terms(flat, "rademacher", 64)[0]
    assert float(estimate_effective_rank(a2, D)) == pytest.approx(D, rel=1e-6)
    low = _matrix(4)
    r_r = float(rademacher_rank(jnp.asarray(low)))
    assert r_r >= float(skew_effective_rank(jnp.asarray(low)))
    a2 = _terms(low, "rademacher", 4000)[0]
    est = float(estimate_effective_rank(a2, D))
    # the same 4 s.e. (a few % here: Rademacher terms have lighter tails than chi^2_4)
    assert est == pytest.approx(1 / (1 / r_r + 1 / D), rel=0.25)
    assert float(estimate_effective_rank(a2[:1], D)) == 0.0  # one probe: no spread
    with pytest.raises(ValueError, match="`kind`"):
        estimate_effective_rank(a2, D, kind="sobol")  # pyright: ignore[reportArgumentType]


def test_masked_summary_equals_probe_asymmetry_on_the_same_probes():
    a = jnp.asarray(_matrix(4))
    field = lambda x, t: a @ x  # noqa: E731
    key, x = jax.random.key(3), jnp.ones(D)
    ref = probe_asymmetry(field, x, 0.0, key=key, num_probes=12)
    a2, f2, _ = probe_terms(field, x, 0.0, make_probes(key, 12, (D,), dtype=x.dtype))
    pad = jnp.concatenate
    got = summarise_terms(pad([a2, a2 * 7]), pad([f2, f2 * 3]), jnp.arange(24) < 12)
    for g, r in zip(jax.tree.leaves(got), jax.tree.leaves(ref), strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-12)  # float64: the same sums in another order


def test_adaptive_stopping_reaches_the_target_and_is_unbiased():
    """vmapped over 200 keys at lambda = 0.3 on a rank-4 skew part: every estimate stops at its
    own round with relative s.e. <= 0.1 (or spends the budget), and the mean over keys is within
    3 of its s.e. of the exact ratio. Stopping when the estimated s.e. is small makes the
    reported s.e. optimistic (root mean square 0.82-0.86 of the spread over three seeds, 2-s.e.
    coverage 87-92%): bounded at 0.7 and 80% (200 estimates: binomial s.e. of the coverage 2%,
    the spread's own relative s.e. 5%)."""
    a = jnp.asarray(_matrix(4))
    field = lambda x, t: a @ x  # noqa: E731
    lam = float(asymmetry(a).ratio)
    keys = jax.random.split(jax.random.key(4), 200)
    run = jax.jit(jax.vmap(lambda k: adaptive_probe_asymmetry(field, jnp.ones(D), 0.0, key=k)))
    out = run(keys)
    n, rel = np.asarray(out.num_probes), np.asarray(out.relative_se)
    assert np.all((rel <= 0.1) | (n == 256)) and np.all(n % 8 == 0) and n.min() >= 8
    assert len(np.unique(n)) > 1  # stopped at different rounds
    np.testing.assert_array_equal(np.asarray(out.passes), 2 * n + 1)
    est = np.asarray(out.estimate.stats.ratio)
    assert abs(est.mean() - lam) <= 3 * est.std(ddof=1) / np.sqrt(len(est))
    se = np.asarray(out.estimate.ratio_se)
    assert 0.7 <= np.sqrt(np.mean(se**2)) / est.std(ddof=1) <= 1.3
    assert np.mean(np.abs(est - lam) <= 2 * se) >= 0.8
    r = np.asarray(out.effective_rank)
    assert np.median(r) == pytest.approx(float(skew_effective_rank(a)), rel=0.5)
    # the forward estimator: no effective rank from its terms
    fwd = adaptive_probe_asymmetry(field, jnp.ones(D), 0.0, key=keys[0], method="forward")
    assert fwd.effective_rank is None and float(fwd.num_probes) >= 8
    with pytest.raises(ValueError, match="multiple of `round_probes`"):
        adaptive_probe_asymmetry(field, jnp.ones(D), 0.0, key=keys[0], max_probes=12)
    with pytest.raises(ValueError, match="`rel_se`"):
        adaptive_probe_asymmetry(field, jnp.ones(D), 0.0, key=keys[0], rel_se=0.0)


@pytest.mark.parametrize(
    "method,rank,diagonal", [("vjp", 4, False), ("forward", 4, False), ("vjp", None, True)]
)
def test_probes_for_target_predicts_the_spread_of_the_estimates(method, rank, diagonal):
    """The exact delta-method probe count against 400 estimates of 32 Rademacher probes at
    lambda = 0.1, on a rank-4 skew part and on a flat one beside a diagonal S (an orthogonal M:
    every VJP term is the same; the spread comes from ||J v||^2, mostly in R's diagonal, which
    Rademacher probes do not see):
    the predicted relative s.e. at 32 probes,
    0.1 sqrt(K / 32), matches the estimates' spread over the exact lambda to 15% (the spread's
    own relative s.e. is 1 / sqrt(2 x 400) = 3.5%; the delta method's error at 32 probes is
    smaller still)."""
    a = jnp.asarray(_matrix(rank, lam=0.1, diagonal=diagonal))
    field = lambda x, t: a @ x  # noqa: E731
    lam = float(asymmetry(a).ratio)
    keys = jax.random.split(jax.random.key(7), 400)
    est = jax.jit(
        jax.vmap(
            lambda k: (
                probe_asymmetry(
                    field, jnp.ones(D), 0.0, key=k, num_probes=32, method=method
                ).stats.ratio
            )
        )
    )(keys)
    k = float(probes_for_target(a, method=method))
    assert np.std(np.asarray(est), ddof=1) / lam == pytest.approx(0.1 * np.sqrt(k / 32), rel=0.15)
    assert float(probes_for_target(a + a.T)) == 0.0


def test_adaptive_kernel_is_the_sub_jacobian_and_the_adaptive_estimate():
    from wgfm.diagnostics.adaptive import AdaptiveSubAndProbe
    from wgfm.diagnostics.jacobian import random_indices, sub_jacobian

    a = jnp.asarray(_matrix(4))
    field = lambda x, t: a @ x  # noqa: E731
    key, x = jax.random.key(9), jnp.ones(D)
    sub, ratio, se, passes, rank = AdaptiveSubAndProbe(8, 0.1, 64)(field, x, 0.0, key=key)
    k1, k2 = jax.random.split(key)
    idx = random_indices(k1, D, 8)
    assert float(sub) == float(asymmetry(sub_jacobian(field, x, 0.0, idx)).ratio)
    ref = adaptive_probe_asymmetry(field, x, 0.0, key=k2, max_probes=64)
    assert float(ratio) == float(ref.estimate.stats.ratio)
    assert float(se) == float(ref.estimate.ratio_se) and int(passes) == int(ref.passes)
    assert float(rank) == float(ref.effective_rank)  # pyright: ignore[reportArgumentType]
