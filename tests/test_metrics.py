"""Metrics against closed forms and NumPy/SciPy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from wgfm import gmm, metrics

KEY = jax.random.key(0)


def _gauss(n, d, key, shift=0.0):
    return jax.random.normal(key, (n, d)) + shift


def test_sliced_wasserstein_1d_equals_sorted_w2():
    # In 1D every projection is +-1, so SW2 is exactly the empirical W2 by sorting.
    x = _gauss(300, 1, jax.random.key(1))
    y = 2.0 * _gauss(300, 1, jax.random.key(2)) + 0.5
    ref = np.sqrt(np.mean((np.sort(np.asarray(x[:, 0])) - np.sort(np.asarray(y[:, 0]))) ** 2))
    got = metrics.sliced_wasserstein(x, y, key=KEY, num_projections=8)
    np.testing.assert_allclose(got, ref, rtol=1e-12)


def test_sliced_wasserstein_shift_closed_form():
    # y = x + delta: every 1D projection is shifted by theta.delta, so SW2^2 = E(theta.delta)^2
    # = |delta|^2 / d exactly in expectation over theta. Monte Carlo over 4000 directions in
    # d = 3: the relative SE of the mean of (theta.delta)^2 is ~sqrt(0.8/4000) ~ 1.4%, so 6%
    # on SW2^2 (3% on SW2) is > 4 SE.
    d, delta = 3, jnp.array([1.0, -2.0, 0.5])
    x = _gauss(500, d, jax.random.key(3))
    got = metrics.sliced_wasserstein(x, x + delta, key=KEY, num_projections=4000)
    np.testing.assert_allclose(got, jnp.linalg.norm(delta) / np.sqrt(d), rtol=0.03)


def test_sliced_wasserstein_unequal_sizes_and_jit():
    x = _gauss(400, 2, jax.random.key(4))
    y = _gauss(1000, 2, jax.random.key(5), shift=1.0)
    eager = metrics.sliced_wasserstein(x, y, key=KEY, num_projections=64)
    jitted = jax.jit(lambda a, b: metrics.sliced_wasserstein(a, b, key=KEY, num_projections=64))
    np.testing.assert_allclose(eager, jitted(x, y), rtol=1e-10)
    # Population value |delta| / sqrt(2) = 1; finite-sample error ~0.1 at these sizes.
    assert abs(float(eager) - 1.0) < 0.15
    # Same set repeated (empirical laws equal): quantile matching gives ~0.
    assert metrics.sliced_wasserstein(x, jnp.concatenate([x, x]), key=KEY) < 0.02


def test_mmd_matches_numpy_reference():
    x = _gauss(60, 2, jax.random.key(6))
    y = _gauss(80, 2, jax.random.key(7), shift=0.7)
    hs = (0.5, 2.0)
    xn, yn = np.asarray(x), np.asarray(y)

    def k(a, b):
        d2 = ((a[:, None] - b[None]) ** 2).sum(-1)
        return sum(np.exp(-d2 / (2 * h**2)) for h in hs)

    kxx, kyy = k(xn, xn), k(yn, yn)
    ref = (
        (kxx.sum() - np.trace(kxx)) / (60 * 59)
        + (kyy.sum() - np.trace(kyy)) / (80 * 79)
        - 2 * k(xn, yn).mean()
    )
    np.testing.assert_allclose(metrics.mmd(x, y, bandwidths=hs), ref, rtol=1e-10)


def test_energy_distance_matches_scipy_in_1d():
    # scipy's energy_distance is sqrt(2 E|X-Y| - E|X-X'| - E|Y-Y'|) with V-statistics (the
    # diagonal zeros included); rebuild ours from the same terms.
    x = _gauss(50, 1, jax.random.key(8))
    y = _gauss(70, 1, jax.random.key(9), shift=1.0)
    xn, yn = np.asarray(x[:, 0]), np.asarray(y[:, 0])
    exy = np.abs(xn[:, None] - yn[None]).mean()
    exx = np.abs(xn[:, None] - xn[None]).sum() / (50 * 49)
    eyy = np.abs(yn[:, None] - yn[None]).sum() / (70 * 69)
    np.testing.assert_allclose(metrics.energy_distance(x, y), 2 * exy - exx - eyy, rtol=1e-10)
    v_stat = 2 * exy - exx * 49 / 50 - eyy * 69 / 70
    np.testing.assert_allclose(np.sqrt(v_stat), scipy.stats.energy_distance(xn, yn), rtol=1e-10)


def test_mode_metrics_and_cross_entropy():
    mix = gmm.ring(num_modes=4, radius=6.0, std=0.3)
    x, labels = mix.sample_with_labels(4000, key=jax.random.key(10))
    # Modes 6 apart with std 0.3: misassignment probability ~ exp(-50), assignment is exact.
    np.testing.assert_array_equal(metrics.mode_assignment(mix, x), labels)
    np.testing.assert_allclose(metrics.mode_weights(mix, x), np.bincount(labels) / 4000)
    assert float(metrics.mode_coverage(mix, x)) == 1.0
    assert float(metrics.mode_coverage(mix, x[labels != 0])) == 0.75
    z = metrics.mode_weight_zscores(mix, x)
    assert np.all(np.abs(z) < 4.0)  # binomial z-scores of exact samples
    # Cross-entropy of exact samples -> entropy of well-separated equal mixture:
    # log 4 + entropy of N(0, 0.09 I_2) = log 4 + log(2 pi e 0.09). MC SE ~ 1/sqrt(4000) ~ 0.016.
    h = np.log(4) + np.log(2 * np.pi * np.e * 0.09)
    np.testing.assert_allclose(metrics.cross_entropy(mix, x), h, atol=0.06)


def test_noise_floor_is_below_a_real_difference():
    def sampler(n, *, key):
        return jax.random.normal(key, (n, 2))

    def metric(a, b):
        return metrics.sliced_wasserstein(a, b, key=KEY, num_projections=32)

    floor = metrics.noise_floor(metric, sampler, 500, key=jax.random.key(11), num_repeats=4)
    assert floor.shape == (4,)
    shifted = metric(sampler(500, key=jax.random.key(12)), sampler(500, key=KEY) + 0.5)
    assert float(floor.max()) < 0.5 * float(shifted)


def test_sinkhorn_w2_against_exact_discrete_transport():
    # ott-jax is in the dev extra: this runs wherever the tests do.
    from scipy.optimize import linear_sum_assignment

    # A translated copy: the exact W2 of the two empirical measures is |delta| = sqrt(2) (the
    # translation is the optimal map).
    x = _gauss(300, 2, jax.random.key(13))
    got = metrics.sinkhorn_w2(x, x + jnp.array([1.0, 1.0]), epsilon=1e-3)
    # The debiased divergence's entropic bias at epsilon = 1e-3 x the mean cost: 1e-4 relative
    # here; 1e-3 leaves room for summation order and fails on any wrong scaling or cost.
    np.testing.assert_allclose(got, np.sqrt(2.0), rtol=1e-3)
    # Two independent clouds of equal size: the exact W2 is an optimal assignment (Birkhoff),
    # computed by scipy (the Hungarian algorithm) as the independent reference.
    y = 1.5 * _gauss(200, 2, jax.random.key(14)) + 0.3
    x = x[:200]
    cost = np.sum((np.asarray(x)[:, None] - np.asarray(y)[None]) ** 2, -1)
    rows, cols = linear_sum_assignment(cost)
    exact = np.sqrt(cost[rows, cols].mean())
    # Without a translation the coupling is spread by epsilon: 1e-3 relative here, and the
    # bias shrinks with epsilon (10x smaller epsilon, at least 5x closer) as it must.
    got3 = float(metrics.sinkhorn_w2(x, y, epsilon=1e-3))
    got2 = float(metrics.sinkhorn_w2(x, y, epsilon=1e-2))
    np.testing.assert_allclose(got3, exact, rtol=5e-3)
    assert abs(got3 - exact) < 0.2 * abs(got2 - exact), (got3, got2, exact)


def test_shape_errors():
    with pytest.raises(ValueError, match="same d"):
        metrics.mmd(jnp.zeros((5, 2)), jnp.zeros((5, 3)))
    with pytest.raises(ValueError, match="num_projections"):
        metrics.sliced_wasserstein(jnp.zeros((5, 2)), jnp.zeros((5, 2)), key=KEY, num_projections=0)
    with pytest.raises(ValueError, match=r"\(n, 2\)"):
        metrics.mode_weights(gmm.ring(), jnp.zeros((5, 3)))


def test_eager_metrics_compile_once_per_shape():
    # Called eagerly on thousands of samples, the distances run as one compiled program each
    # (op by op, MMD materialised every (n, n, bandwidth) intermediate): new values of the
    # same shapes reuse it, and the mixture sampler likewise compiles once per sample count.
    mix = gmm.ring(dtype=jnp.float32)
    before = (metrics._mmd._cache_size(), metrics._sliced_wasserstein._cache_size())
    for i in range(3):
        x = mix.sample(300, key=jax.random.key(i))
        y = mix.sample(300, key=jax.random.key(10 + i))
        metrics.mmd(x, y)
        metrics.sliced_wasserstein(x, y, key=jax.random.key(i))
    after = (metrics._mmd._cache_size(), metrics._sliced_wasserstein._cache_size())
    assert after[0] - before[0] <= 1 and after[1] - before[1] <= 1
    # Eager and traced calls agree (the public function only validates, then calls the program).
    x, y = mix.sample(50, key=jax.random.key(1)), mix.sample(60, key=jax.random.key(2))
    jitted = jax.jit(lambda a, b: metrics.mmd(a, b))(x, y)
    np.testing.assert_allclose(float(metrics.mmd(x, y)), float(jitted), rtol=1e-6)
