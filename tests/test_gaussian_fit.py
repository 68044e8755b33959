"""The low-rank Gaussian-fit control (wgfm.diagnostics.gaussian_fit) against dense float64
references: the full-covariance control, scipy's log-density, finite differences."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

import wgfm
from wgfm.diagnosis import QUICK
from wgfm.diagnostics import gaussian_fit_score
from wgfm.diagnostics.gaussian_fit import LowRankLogDensity, LowRankScore, fit_low_rank_gaussian

TIMES = (0.001, 0.3, 0.9)


def _samples(n, d, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    # correlated, with an offset mean and two constant coordinates (an image's border)
    x = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) / np.sqrt(d) + 0.5
    x[:, :2] = 0.25
    return (scale * x).astype(np.float32)


def _dense_inverse_cov(x, process, t, floor=1e-3):
    """``C_t^{-1}`` and the mean in float64 from the dense sample covariance."""
    x = np.asarray(x, np.float64)
    a, s = float(process.alpha(t)), float(process.sigma(t))
    cov = a**2 * (np.cov(x.T) + floor * np.eye(x.shape[1])) + s**2 * np.eye(x.shape[1])
    return np.linalg.inv(cov), a * x.mean(0), cov


@pytest.mark.parametrize("n", [20, 4])  # more and fewer samples than dimensions
def test_low_rank_equals_the_full_covariance_control(n):
    x, process = _samples(n, 6), wgfm.VP()
    low = gaussian_fit_score(x, process)
    full = gaussian_fit_score(x, process, covariance="full")
    pts = jnp.asarray(_samples(5, 6, seed=1))
    for t in TIMES:
        got = np.asarray(jax.vmap(low, (0, None))(pts, t))
        ref = np.asarray(jax.vmap(full, (0, None))(pts, t))
        inv, m, _ = _dense_inverse_cov(x, process, t)
        exact = -(np.asarray(pts, np.float64) - m) @ inv
        # both are float32 fits of a covariance whose condition number at t = 0.001 is
        # ~1e3 (floor 1e-3 vs unit variance): float32 eps (6e-8) x 1e3 x a few, relative to
        # |score|. The full control eigendecomposes the float32 D x D covariance, whose
        # rounding is relative to its largest entry: measured 1.2e-4 at N = 4, so 5e-4 there
        scale = np.abs(exact).max()
        np.testing.assert_allclose(got, exact, atol=1e-4 * scale)
        np.testing.assert_allclose(ref, exact, atol=5e-4 * scale)
    with pytest.raises(ValueError, match="'low_rank' or 'full'"):
        gaussian_fit_score(x, process, covariance="diag")  # pyright: ignore[reportArgumentType]


def test_log_density_is_scipys_and_the_score_its_finite_difference_gradient():
    x, process, t = _samples(5, 8).astype(np.float64), wgfm.VP(), 0.2
    fit = fit_low_rank_gaussian(x)
    logp = LowRankLogDensity(fit, process)
    score = gaussian_fit_score(x, process)
    _, m, cov = _dense_inverse_cov(x, process, t)
    pt = np.asarray(_samples(1, 8, seed=3)[0], np.float64)
    ref = scipy.stats.multivariate_normal(mean=m, cov=cov).logpdf(pt)  # pyright: ignore
    np.testing.assert_allclose(float(logp(jnp.asarray(pt), t)), ref, rtol=1e-10)  # float64
    # central differences, step 1e-4: truncation h^2 |d^3 log p| = 0 (quadratic) and rounding
    # eps |log p| / h ~ 1e-12 / 1e-4: 1e-8 is far above both
    h, eye = 1e-4, np.eye(8)
    lp = jax.jit(lambda y, s: logp(y, s))
    fd = [(lp(jnp.asarray(pt + h * e), t) - lp(jnp.asarray(pt - h * e), t)) / (2 * h) for e in eye]
    np.testing.assert_allclose(np.asarray(score(jnp.asarray(pt), t)), np.array(fd), atol=1e-8)


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
def test_float32_fit_is_finite_symmetric_and_exact_at_any_scale(scale):
    """Fewer samples than dimensions, constant coordinates, samples scaled by 1e-3 and 1e3, all
    in float32: the score is finite, its Jacobian symmetric and equal to -C_t^{-1}."""
    d, process = 48, wgfm.VP()
    x = _samples(8, d, scale=scale)
    score = gaussian_fit_score(x, process)
    assert isinstance(score, LowRankScore)
    assert score.fit.basis.dtype == jnp.float32 and score.fit.basis.shape == (d, 8)
    pt = jnp.asarray(_samples(1, d, seed=2, scale=scale)[0])
    for t in TIMES:
        jac = np.asarray(jax.jacfwd(score)(pt, t), np.float64)
        assert jac.dtype == np.float64 and np.isfinite(jac).all()
        inv, _, _ = _dense_inverse_cov(x, process, t)
        norm = float(np.linalg.norm(inv))
        # J is assembled in float32 from D x 8 products: rounding ~ 1e-7 x a few x ||J||
        assert np.linalg.norm(jac - jac.T) <= 1e-5 * norm
        np.testing.assert_allclose(-jac, inv, atol=1e-5 * norm)
        assert np.isfinite(np.asarray(score(pt, t))).all()


def test_the_full_fit_fails_where_the_low_rank_one_does_not():
    """The failure the issue reports: a float32 full covariance of large latents is not
    positive definite after rounding; the low-rank fit never validates one."""
    x = _samples(4, 64, scale=1e3)
    with pytest.raises(ValueError, match="positive definite"):
        gaussian_fit_score(x, wgfm.VP(), covariance="full")
    assert np.isfinite(np.asarray(gaussian_fit_score(x, wgfm.VP())(jnp.asarray(x[0]), 0.001))).all()


def test_bad_input():
    with pytest.raises(ValueError, match="at least 2 samples"):
        fit_low_rank_gaussian(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="non-finite"):
        fit_low_rank_gaussian(np.full((3, 2), np.nan))
    with pytest.raises(ValueError, match="`floor`"):
        fit_low_rank_gaussian(np.zeros((3, 2)), floor=0.0)
    with pytest.raises(ValueError, match="3 entries"):
        gaussian_fit_score(np.zeros((3, 3)), wgfm.VP())(jnp.zeros(4), 0.5)


def test_the_fit_keeps_at_most_its_cap_of_samples_drawn_by_key():
    from wgfm.diagnostics.gaussian_fit import fit_sample_cap, subsample_for_fit

    # hand-computed: 512 MiB / (4 bytes x 262,144) = 512 samples; 10,000 at D = 784
    assert fit_sample_cap(128 * 128 * 16) == 512
    assert fit_sample_cap(784) == 10_000
    assert fit_sample_cap(10, max_bytes=4 * 10 * 7) == 7
    assert fit_sample_cap(10**9) == 2  # a fit needs two samples, whatever it costs
    x = np.arange(30 * 4, dtype=np.float32).reshape(30, 2, 2)
    same = subsample_for_fit(x, key=jax.random.key(0), max_bytes=4 * 4 * 30)
    assert same is x or np.array_equal(same, x)  # under the cap: every sample, in order
    a = subsample_for_fit(x, key=jax.random.key(0), max_bytes=4 * 4 * 8)
    b = subsample_for_fit(x, key=jax.random.key(0), max_bytes=4 * 4 * 8)
    c = subsample_for_fit(x, key=jax.random.key(1), max_bytes=4 * 4 * 8)
    rows = a[:, 0, 0] // 4
    assert a.shape == (8, 2, 2) and np.array_equal(a, b) and not np.array_equal(a, c)
    # distinct samples of x, in their order, not just its first 8
    assert np.all(np.diff(rows) > 0) and rows.max() > 7
    assert np.array_equal(a, x[rows.astype(int)])
    with pytest.raises(ValueError, match="`dim`"):
        fit_sample_cap(0)


def test_a_diagnosis_fits_its_gaussian_to_the_capped_subset(monkeypatch):
    from wgfm.diagnosis import api

    rng = np.random.default_rng(0)
    images = rng.normal(size=(12, 3)).astype(np.float32)
    seen = {}

    def capped(x, *, key):
        seen["n"] = len(x)
        return wgfm.diagnostics.gaussian_fit.subsample_for_fit(x, key=key, max_samples=5)

    monkeypatch.setattr(api, "subsample_for_fit", capped)
    sizes = dataclasses.replace(
        QUICK, num_levels=2, num_samples=2, max_exact_dim=64, jacobians="auto"
    )
    field = lambda x, t: -x  # noqa: E731  a score
    d = api.diagnose(
        field,
        wgfm.VP(),
        images,
        key=jax.random.key(0),
        kind="score",
        sizes=sizes,
        claims=("differential",),
        untrained=None,
    )
    rows = next(iter(d.rows.values()))
    assert seen["n"] == 12
    assert "fitted to 5 clean images (a random subset of the 12)" in rows[0].control
