"""Conversions between score, eps, x0 and the WGF velocity; the flow-matching target."""

import itertools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wgfm import fields, gmm
from wgfm import processes as P

KINDS = ("score", "eps", "x0", "velocity")


@pytest.mark.parametrize("name", list(P.ALL_PROCESSES))
def test_conversions_round_trip(name):
    proc = P.ALL_PROCESSES[name]()
    key = jax.random.key(0)
    x, value = jax.random.normal(key, (2, 4))
    t = jnp.float64(0.3 * proc.t_max)
    for src, dst in itertools.permutations(KINDS, 2):
        there = fields.convert(proc, x, t, value, kind=src, to=dst)
        back = fields.convert(proc, x, t, there, kind=dst, to=src)
        np.testing.assert_allclose(back, value, rtol=1e-9, atol=1e-9, err_msg=f"{src}->{dst}")


@pytest.mark.parametrize("name", list(P.ALL_PROCESSES))
def test_conversions_agree_with_oracle(name):
    """For x_t = alpha x0 + sigma eps with a single known (x0, eps): eps -> x0 gives x0 back,
    and the velocity of the conditional law is u_t = alpha' x0 + sigma' eps (Tweedie per point)."""
    proc = P.ALL_PROCESSES[name]()
    x0, eps = jax.random.normal(jax.random.key(1), (2, 3))
    t = jnp.float64(0.4 * proc.t_max)
    xt = proc.alpha(t) * x0 + proc.sigma(t) * eps
    np.testing.assert_allclose(
        fields.convert(proc, xt, t, eps, kind="eps", to="x0"), x0, rtol=1e-10
    )
    v = fields.convert(proc, xt, t, eps, kind="eps", to="velocity")
    np.testing.assert_allclose(
        v, fields.conditional_velocity(proc, x0, eps, t), rtol=1e-10, atol=1e-12
    )


@pytest.mark.parametrize("name", list(P.ALL_PROCESSES))
def test_conditional_velocity_is_time_derivative(name):
    proc = P.ALL_PROCESSES[name]()
    x0, eps = jax.random.normal(jax.random.key(2), (2, 3))
    t = jnp.float64(0.5 * proc.t_max)
    _, d = jax.jvp(lambda u: proc.alpha(u) * x0 + proc.sigma(u) * eps, (t,), (1.0,))
    np.testing.assert_allclose(fields.conditional_velocity(proc, x0, eps, t), d, rtol=1e-10)


def _posterior_sample(mix, proc, xt, t, n, key):
    """Exact draws of x0 | x_t for a Gaussian mixture prior (independent closed form):
    component k has posterior weight r_k(x_t) and N(m_k, C_k) with
    C_k = (Sigma_k^-1 + a^2/s^2 I)^-1, m_k = C_k (Sigma_k^-1 mu_k + a/s^2 x_t)."""
    a, s = proc.alpha(t), proc.sigma(t)
    r = mix.marginal(proc, t).responsibilities(xt)
    prec = jnp.linalg.inv(mix.covs) + (a / s) ** 2 * jnp.eye(mix.dim)
    C = jnp.linalg.inv(prec)
    m = jnp.einsum(
        "kij,kj->ki",
        C,
        jnp.einsum("kij,kj->ki", jnp.linalg.inv(mix.covs), mix.means) + a / s**2 * xt,
    )
    kc, kz = jax.random.split(key)
    comp = jax.random.choice(kc, mix.num_components, (n,), p=r)
    z = jax.random.normal(kz, (n, mix.dim))
    return m[comp] + jnp.einsum("nij,nj->ni", jnp.linalg.cholesky(C)[comp], z)


@pytest.mark.parametrize("name", ["vp", "ve", "interpolant"])
def test_conditional_target_mean_is_oracle_velocity(name):
    """E[u_t(x0, eps) | x_t] = v_t(x_t): Monte Carlo over the exact posterior of x0 given x_t."""
    mix = gmm.GaussianMixture(
        jnp.array([0.3, 0.7]),
        jnp.array([[-2.0, 0.0], [1.5, 1.0]]),
        jnp.array([[[0.5, 0.0], [0.0, 0.5]], [[1.0, 0.3], [0.3, 0.6]]]),
    )
    proc = P.ALL_PROCESSES[name]()
    t = jnp.float64(0.3 * proc.t_max)
    xt = jnp.array([0.4, 0.2])
    n = 200000
    x0 = _posterior_sample(mix, proc, xt, t, n, jax.random.key(3))
    eps = (xt - proc.alpha(t) * x0) / proc.sigma(t)
    u = jax.vmap(lambda a, b: fields.conditional_velocity(proc, a, b, t))(x0, eps)
    v = gmm.velocity_field(mix, proc)(xt, t)
    se = u.std(0) / np.sqrt(n)
    assert np.all(np.abs(u.mean(0) - v) < 4 * se), (u.mean(0), v, se)


def test_wgf_velocity_of_oracle_score():
    mix = gmm.ring()
    for name, cls in P.ALL_PROCESSES.items():
        proc = cls()
        v = fields.wgf_velocity(proc, gmm.score_field(mix, proc))
        x, t = jnp.array([1.0, -3.0]), 0.5 * proc.t_max
        np.testing.assert_allclose(
            v(x, t), gmm.velocity_field(mix, proc)(x, t), rtol=1e-6, err_msg=name
        )
        if proc.has_sde:
            ref = proc.drift(x, t) - 0.5 * proc.diffusion(t) ** 2 * gmm.score_field(mix, proc)(x, t)
            np.testing.assert_allclose(v(x, t), ref, rtol=1e-6, err_msg=name)


def test_as_field_against_the_path_derivative_and_identity():
    proc = P.VP()
    eps_field = lambda x, t: jnp.tanh(x) * t  # noqa: E731
    assert fields.as_field(proc, eps_field, kind="eps", to="eps") is eps_field
    vf = fields.as_field(proc, eps_field, kind="eps", to="velocity")
    x = jnp.array([0.3, -0.2])
    # Independent reference: v = alpha_t' x0 + sigma_t' eps with x0 = (x - sigma_t eps) /
    # alpha_t and the derivatives by central differences of alpha_t and sigma_t (float64,
    # step 1e-5: truncation ~1e-10, rounding ~1e-11 relative).
    t, h = 0.5, 1e-5
    eps = eps_field(x, t)
    x0 = (x - proc.sigma(t) * eps) / proc.alpha(t)
    da = (proc.alpha(t + h) - proc.alpha(t - h)) / (2 * h)
    ds = (proc.sigma(t + h) - proc.sigma(t - h)) / (2 * h)
    np.testing.assert_allclose(vf(x, t), da * x0 + ds * eps, rtol=1e-8)
    np.testing.assert_allclose(eqx.filter_jit(vf)(x, 0.5), vf(x, 0.5), rtol=1e-14)
    xs = jnp.stack([x, 2 * x])
    np.testing.assert_allclose(
        jax.vmap(vf, in_axes=(0, None))(xs, 0.5)[1], vf(2 * x, 0.5), rtol=1e-14
    )


def test_bad_kind():
    with pytest.raises(ValueError, match="`kind` must be one of"):
        fields.to_score(P.VP(), jnp.zeros(2), 0.5, jnp.zeros(2), "noise")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`to`"):
        fields.as_field(P.VP(), lambda x, t: x, kind="eps", to="velocityy")  # type: ignore[arg-type]
