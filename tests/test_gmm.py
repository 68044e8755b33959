"""The Gaussian-mixture oracle against scipy, autodiff and Monte Carlo; the continuity equation."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from wgfm import gmm
from wgfm import processes as P
from wgfm.diagnostics import transport_residual


@pytest.fixture(scope="module")
def mix3():
    return gmm.random_mixture(3, 3, key=jax.random.key(0))


def test_log_density_matches_scipy(mix3):
    xs = np.asarray(mix3.sample(50, key=jax.random.key(1)))
    w, m, c = (np.asarray(a) for a in (mix3.weights, mix3.means, mix3.covs))
    ref = np.log(sum(w[k] * stats.multivariate_normal(m[k], c[k]).pdf(xs) for k in range(len(w))))
    got = jax.vmap(mix3.log_density)(jnp.asarray(xs))
    np.testing.assert_allclose(got, ref, rtol=1e-11)


def test_closed_form_score_matches_autodiff(mix3):
    xs = mix3.sample(50, key=jax.random.key(2)) * 1.5  # include points in the tails
    np.testing.assert_allclose(
        jax.vmap(mix3.score)(xs), jax.vmap(jax.grad(mix3.log_density))(xs), rtol=1e-10, atol=1e-12
    )


def test_covariance_forms_agree():
    means = jnp.array([[0.0, 1.0], [2.0, -1.0]])
    w = jnp.array([0.3, 0.7])
    iso = gmm.GaussianMixture(w, means, jnp.array([0.5, 2.0]))
    diag = gmm.GaussianMixture(w, means, jnp.array([[0.5, 0.5], [2.0, 2.0]]))
    full = gmm.GaussianMixture(w, means, jnp.array([0.5, 2.0])[:, None, None] * jnp.eye(2))
    scalar = gmm.GaussianMixture(w, means, 0.5)
    np.testing.assert_array_equal(iso.covs, diag.covs)
    np.testing.assert_array_equal(iso.covs, full.covs)
    np.testing.assert_array_equal(scalar.covs[1], 0.5 * jnp.eye(2))


def test_sample_moments(mix3):
    n = 40000
    xs, labels = mix3.sample_with_labels(n, key=jax.random.key(3))
    freq = np.bincount(np.asarray(labels), minlength=3) / n
    se = np.sqrt(np.asarray(mix3.weights) * (1 - np.asarray(mix3.weights)) / n)
    assert np.all(np.abs(freq - np.asarray(mix3.weights)) < 4 * se)
    sd = np.sqrt(np.diag(np.asarray(mix3.covariance())))
    np.testing.assert_allclose(xs.mean(0), mix3.mean(), atol=4 * sd.max() / math.sqrt(n))
    # Covariance entries: SE <= sqrt(2/n) * max variance for these moderate tails; 5 SE.
    np.testing.assert_allclose(
        np.cov(np.asarray(xs).T), mix3.covariance(), atol=5 * math.sqrt(2 / n) * sd.max() ** 2
    )


@pytest.mark.parametrize("name", ["vp", "ve", "interpolant"])
def test_marginal_matches_monte_carlo(mix3, name):
    proc = P.ALL_PROCESSES[name]()
    t = jnp.float64(0.3)
    n = 40000
    x0 = mix3.sample(n, key=jax.random.key(4))
    xt, _ = jax.vmap(lambda x, k: proc.sample_marginal(x, t, key=k))(
        x0, jax.random.split(jax.random.key(5), n)
    )
    marg = mix3.marginal(proc, t)
    np.testing.assert_allclose(marg.means, proc.alpha(t) * mix3.means, rtol=1e-14)
    sd = float(np.sqrt(np.max(np.diag(np.asarray(marg.covariance())))))
    np.testing.assert_allclose(xt.mean(0), marg.mean(), atol=4 * sd / math.sqrt(n))
    np.testing.assert_allclose(
        np.cov(np.asarray(xt).T), marg.covariance(), atol=5 * math.sqrt(2 / n) * sd**2
    )
    # And the density fits the samples: mean log-density equals minus the entropy, so the
    # average over MC samples must beat a Gaussian with the same moments (it is the true law).
    gauss = stats.multivariate_normal(np.asarray(marg.mean()), np.asarray(marg.covariance()))
    assert float(jax.vmap(marg.log_density)(xt).mean()) > gauss.logpdf(np.asarray(xt)).mean()


@pytest.mark.parametrize("name", list(P.ALL_PROCESSES))
def test_continuity_equation(name, mix3):
    """d_t log p_t + div v_t + v_t . grad log p_t = 0 for the oracle velocity (float64).

    Divergence by jax.jacfwd, d_t log p_t independently by jax.jvp of log p_t in t."""
    proc = P.ALL_PROCESSES[name]()
    v = gmm.velocity_field(mix3, proc)
    logp = gmm.log_density_field(mix3, proc)
    dlogp = gmm.dt_log_density_field(mix3, proc)

    def dlogp_by_jvp(x, t):
        return jax.jvp(lambda u: logp(x, u), (t,), (jnp.ones_like(t),))[1]

    @eqx.filter_jit
    def residuals(xs, t):
        r = jax.vmap(
            lambda x: transport_residual(v, x, t, log_density=logp, dt_log_density=dlogp_by_jvp)
        )(xs)
        closed = jax.vmap(lambda x: dlogp(x, t) - dlogp_by_jvp(x, t))(xs)
        scale = jax.vmap(lambda x: jnp.abs(dlogp_by_jvp(x, t)))(xs)
        return r, closed, scale

    key = jax.random.key(6)
    for i, t in enumerate(np.geomspace(proc.t_min * 10, proc.t_max, 4)):
        xs = mix3.marginal(proc, t).sample(16, key=jax.random.fold_in(key, i))
        r, closed, scale = residuals(xs, jnp.float64(t))
        # Terms are O(scale); float64 cancellation leaves ~1e-13 relative.
        assert np.all(np.abs(r) <= 1e-9 * (1 + scale)), (t, np.abs(r).max())
        assert np.all(np.abs(closed) <= 1e-9 * (1 + scale)), (t, np.abs(closed).max())


def test_fields_jit_vmap_and_float32(mix3):
    proc = P.VP()
    sf = gmm.score_field(mix3, proc)
    xs = mix3.sample(3, key=jax.random.key(7))
    t = 0.4
    loop = jnp.stack([sf(x, t) for x in xs])
    np.testing.assert_allclose(jax.vmap(sf, in_axes=(0, None))(xs, t), loop, rtol=1e-13)
    np.testing.assert_allclose(eqx.filter_jit(sf)(xs[0], t), loop[0], rtol=1e-13)
    m32 = gmm.GaussianMixture(
        mix3.weights.astype(jnp.float32),
        mix3.means.astype(jnp.float32),
        mix3.covs.astype(jnp.float32),
    )
    s32 = gmm.score_field(m32, proc)(xs[0].astype(jnp.float32), jnp.float32(t))
    assert s32.dtype == jnp.float32
    np.testing.assert_allclose(s32, loop[0], rtol=2e-4, atol=2e-5)  # float32 eps ~1e-7 x cond


def test_new_mixture_values_do_not_retrace(mix3):
    traces = []

    @eqx.filter_jit
    def f(m, x):
        traces.append(1)
        return m.score(x)

    f(mix3, jnp.zeros(3))
    other = gmm.GaussianMixture(mix3.weights[::-1], mix3.means * 2, mix3.covs)
    f(other, jnp.ones(3))
    assert len(traces) == 1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(weights=[0.5, 0.6], means=[[0.0], [1.0]], covs=[1.0, 1.0]), "sum to 1"),
        (dict(weights=[-0.5, 1.5], means=[[0.0], [1.0]], covs=[1.0, 1.0]), "non-negative"),
        (dict(weights=[0.5, 0.5], means=[0.0, 1.0], covs=[1.0, 1.0]), "means"),
        (dict(weights=[1.0], means=[[0.0, 0.0]], covs=[[1.0, 0.0]]), "covs"),
        (dict(weights=[0.5, 0.5], means=[[0.0], [1.0], [2.0]], covs=1.0), "weights"),
        (
            dict(weights=[1.0], means=[[0.0, 0.0]], covs=[[[1.0, 2.0], [2.0, 1.0]]]),
            "positive definite",
        ),
        (dict(weights=[1.0], means=[[0.0, 0.0]], covs=[[[1.0, 0.5], [0.0, 1.0]]]), "symmetric"),
        (dict(weights=[1.0], means=[[0.0, 0.0]], covs=[-1.0]), "positive definite"),
    ],
)
def test_bad_mixtures(kwargs, match):
    with pytest.raises(ValueError, match=match):
        gmm.GaussianMixture(**kwargs)


def test_bad_point_and_time(mix3):
    with pytest.raises(ValueError, match="`x` must be one point of shape"):
        mix3.log_density(jnp.zeros((2, 3)))
    with pytest.raises(ValueError, match="`t`"):
        mix3.marginal(P.VP(), 2.0)


@pytest.mark.parametrize(
    "make", [gmm.score_field, gmm.velocity_field, gmm.log_density_field, gmm.dt_log_density_field]
)
def test_fields_make_no_factorisation_per_evaluation(mix3, make):
    """The eigendecomposition is taken once, when the field is built: evaluating it at (x, t)
    is matrix products only. (A batched LAPACK call per sample inside a vmapped diffrax loop
    deadlocks XLA:CPU in jaxlib 0.10; this pins the fix.)"""
    field = make(mix3, P.VP())
    jaxpr = str(jax.make_jaxpr(lambda x, t: field(x, t))(jnp.zeros(3), 0.3))
    for prim in ("cholesky", "triangular_solve", "eigh", "lu", "custom_call"):
        assert prim not in jaxpr, prim
