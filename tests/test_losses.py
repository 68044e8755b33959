"""Per-example losses, weightings and time samplers."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wgfm import fields, gmm, losses
from wgfm import processes as P


def _eps_model(x, t):
    """An arbitrary smooth 'network' predicting eps."""
    return jnp.tanh(1.3 * x + 0.4 * t) - 0.2 * x[::-1]


@pytest.mark.parametrize("name", ["vp", "ou", "vp-sigmoid", "sub-vp", "ve", "interpolant", "edm"])
def test_eps_loss_equals_weighted_fm_loss(name):
    """fm_loss(v_theta) = eps_to_fm_weight(t) * eps_loss(eps_theta), per example, exactly."""
    proc = P.ALL_PROCESSES[name]()
    v_model = fields.as_field(proc, _eps_model, kind="eps", to="velocity")
    x0, eps = jax.random.normal(jax.random.key(0), (2, 5, 3))
    ts = jnp.linspace(proc.t_min, proc.t_max, 5)
    fm = jax.vmap(lambda a, b, t: losses.fm_loss(v_model, proc, a, t, b))(x0, eps, ts)
    ep = jax.vmap(lambda a, b, t: losses.eps_loss(_eps_model, proc, a, t, b))(x0, eps, ts)
    w = jax.vmap(lambda t: losses.eps_to_fm_weight(proc, t))(ts)
    np.testing.assert_allclose(fm, w * ep, rtol=1e-9)


def test_dsm_times_sigma2_is_eps_loss():
    proc = P.VP()
    s_model = fields.as_field(proc, _eps_model, kind="eps", to="score")
    x0, eps = jax.random.normal(jax.random.key(1), (2, 3))
    t = 0.37
    np.testing.assert_allclose(
        losses.dsm_loss(s_model, proc, x0, t, eps) * proc.sigma(t) ** 2,
        losses.eps_loss(_eps_model, proc, x0, t, eps),
        rtol=1e-12,
    )
    x0_model = fields.as_field(proc, _eps_model, kind="eps", to="x0")
    np.testing.assert_allclose(
        losses.x0_loss(x0_model, proc, x0, t, eps) * proc.snr(t),
        losses.eps_loss(_eps_model, proc, x0, t, eps),
        rtol=1e-10,
    )


@pytest.mark.parametrize("kind", ["velocity", "score", "eps", "x0"])
def test_oracle_minimises_each_loss(kind):
    """E[L(f* + delta)] - E[L(f*)] = |delta|^2 for a constant shift delta, because the oracle f*
    is the conditional mean of the regression target (Monte Carlo within 4 SE)."""
    mix = gmm.ring(num_modes=4, radius=2.0, std=0.5)
    proc = P.VP()
    t = 0.3
    oracle = fields.as_field(proc, gmm.score_field(mix, proc), kind="score", to=kind)  # type: ignore[arg-type]
    delta = jnp.array([0.3, -0.2])
    loss = losses.get_loss(kind)
    n = 100000
    x0 = mix.sample(n, key=jax.random.key(2))
    eps = jax.random.normal(jax.random.key(3), (n, 2))
    diff = jax.vmap(
        lambda a, b: (
            loss(lambda x, u: oracle(x, u) + delta, proc, a, t, b) - loss(oracle, proc, a, t, b)
        )
    )(x0, eps)
    se = float(diff.std()) / math.sqrt(n)
    assert abs(float(diff.mean()) - float(delta @ delta)) < 4 * se, (diff.mean(), se)


def test_weightings():
    proc = P.VPSigmoid()
    ts = jnp.linspace(0.01, 0.99, 7)
    snr = proc.alpha(ts) ** 2 / proc.sigma(ts) ** 2
    np.testing.assert_allclose(losses.min_snr_weight(proc, ts, gamma=5.0), np.minimum(snr, 5) / snr)
    np.testing.assert_allclose(losses.likelihood_weight(proc, ts), proc.g2(ts))
    np.testing.assert_allclose(losses.sigma2_weight(proc, ts), 1 - proc.alpha(ts) ** 2, rtol=1e-12)
    np.testing.assert_array_equal(losses.uniform_weight(proc, ts), np.ones(7))
    for name in losses.WEIGHTINGS:
        assert losses.get_weighting(name)(proc, ts).shape == (7,)
    with pytest.raises(ValueError, match="`weighting`"):
        losses.get_weighting("snr")
    with pytest.raises(ValueError, match="`kind`"):
        losses.get_loss("noise")


def test_time_samplers():
    key = jax.random.key(4)
    for name, sampler in losses.TIME_SAMPLERS.items():
        t = sampler(1000, key=key, t_min=0.1, t_max=0.9)
        assert t.shape == (1000,) and float(t.min()) >= 0.1 and float(t.max()) <= 0.9, name
        assert abs(float(t.mean()) - 0.5) < 4 * 0.8 / math.sqrt(12 * 1000), name
    t = losses.stratified_times(10, key=key, t_min=0.0, t_max=1.0)
    np.testing.assert_array_equal(np.floor(np.asarray(t) * 10), np.arange(10))
    t = np.sort(np.asarray(losses.low_discrepancy_times(8, key=key, t_min=0.0, t_max=1.0)))
    np.testing.assert_allclose(np.diff(t), 1 / 8, rtol=1e-10)


def test_losses_jit_and_float32():
    proc = P.VP()
    x0 = jnp.ones(3, jnp.float32)
    eps = jnp.full(3, 0.5, jnp.float32)
    t = jnp.float32(0.4)
    for kind, loss in losses.LOSSES.items():
        eager = loss(_eps_model, proc, x0, t, eps)
        assert eager.dtype == jnp.float32, kind
        np.testing.assert_allclose(
            jax.jit(lambda a, b, u, loss=loss: loss(_eps_model, proc, a, u, b))(x0, eps, t),
            eager,
            rtol=1e-6,
        )
