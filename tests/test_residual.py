"""Tests for wgfm.diagnostics.residual: which velocity errors harm transport."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wgfm import gmm
from wgfm.diagnostics.jacobian import (
    asymmetry,
    divergence,
    jacobian,
    make_probes,
    probe_divergence,
)
from wgfm.diagnostics.residual import transport_residual
from wgfm.processes import VP

PROC = VP()
T = 0.3


def setup(dim=2):
    mix = (
        gmm.ring(dtype=jnp.float64)
        if dim == 2
        else gmm.random_mixture(dim, 3, key=jax.random.key(dim))
    )
    v = gmm.velocity_field(mix, PROC)
    score = gmm.score_field(mix, PROC)
    kw = dict(
        log_density=gmm.log_density_field(mix, PROC),
        dt_log_density=gmm.dt_log_density_field(mix, PROC),
    )
    xs = mix.marginal(PROC, T).sample(64, key=jax.random.key(0))
    return v, score, kw, xs


def l2p(w, xs):
    """Monte-Carlo ``||w||_{L2(p_t)}`` over samples of p_t."""
    return jnp.sqrt(jnp.mean(jnp.sum(jax.jit(jax.vmap(lambda x: w(x, T)))(xs) ** 2, axis=-1)))


def test_oracle_and_harmless_perturbation_vanish_generic_does_not():
    v, score, kw, xs = setup()
    anti = jnp.array([[0.0, 1.0], [-1.0, 0.0]])
    harmless = lambda x, t: anti @ score(x, t)  # noqa: E731  div(p A grad log p) = 0
    generic = lambda x, t: jnp.array([[0.6, 0.2], [-0.1, 0.4]]) @ x + jnp.sin(x)  # noqa: E731
    scale = l2p(harmless, xs) / l2p(generic, xs)  # same L2(p) size as the harmless error
    fields = {
        "oracle": v,
        "harmless": lambda x, t: v(x, t) + harmless(x, t),
        "generic": lambda x, t: v(x, t) + scale * generic(x, t),
    }
    res = {
        k: jax.jit(jax.vmap(lambda x, f=f: transport_residual(f, x, T, **kw)))(xs)
        for k, f in fields.items()
    }
    ref = float(
        jnp.sqrt(jnp.mean(jax.jit(jax.vmap(lambda x: kw["dt_log_density"](x, T)))(xs) ** 2))
    )
    # float64 closed forms: the exact residual is rounding-level relative to d_t log p
    assert float(jnp.max(jnp.abs(res["oracle"]))) < 1e-9 * (1 + ref)
    assert float(jnp.max(jnp.abs(res["harmless"]))) < 1e-9 * (1 + ref)
    assert float(jnp.sqrt(jnp.mean(res["generic"] ** 2))) > 0.1 * (1 + ref)
    # ... although the harmless error makes the field strongly non-conservative
    lam = jax.jit(jax.vmap(lambda x: asymmetry(jacobian(fields["harmless"], x, T)).ratio))(xs[:16])
    assert float(jnp.median(lam)) > 0.3


def test_probe_and_chunked_divergence_options():
    v, _, kw, xs = setup(dim=4)
    x = xs[0]
    exact, chunked = jax.jit(
        lambda y: (
            transport_residual(v, y, T, **kw),
            transport_residual(v, y, T, **kw, chunk_size=3),
        )
    )(x)
    np.testing.assert_allclose(chunked, exact, atol=1e-12)  # same terms, batched differently
    pert = lambda y, t: v(y, t) + jnp.tanh(y[::-1])  # noqa: E731
    probes = make_probes(jax.random.key(1), 4, (4,))
    both = jax.jit(
        lambda y: (
            transport_residual(pert, y, T, **kw, probes=probes)
            - transport_residual(pert, y, T, **kw),
            probe_divergence(pert, y, T, probes) - divergence(pert, y, T),
        )
    )
    got, want = both(x)
    # the probe option swaps exactly the divergence term (whose estimator is tested, for
    # unbiasedness and 1/sqrt(K) spread, in test_jacobian.py)
    np.testing.assert_allclose(got, want, atol=1e-12)
    assert abs(float(want)) > 1e-3  # the probe path really ran (4 probes are not exact)


def gaussian_case():
    """Cheap closed form for eager checks: p_t = N(0, s_t^2 I) with s_t^2 = 1 + t, transported
    by v = x / (2 (1 + t)); d_t log p = -D/(2(1+t)) + |x|^2 / (2(1+t)^2)."""
    kw = dict(
        log_density=lambda x, t: -0.5 * jnp.sum(x**2) / (1 + t) - 0.5 * x.size * jnp.log(1 + t),
        dt_log_density=lambda x, t: -0.5 * x.size / (1 + t) + 0.5 * jnp.sum(x**2) / (1 + t) ** 2,
    )
    return (lambda x, t: x / (2 * (1 + t))), kw


def test_default_signature_jit_equals_eager_and_trace_once():
    v, kw = gaussian_case()
    xs = jax.random.normal(jax.random.key(3), (3, 3))

    @jax.jit
    @chex.assert_max_traces(n=1)
    def r(x, t):
        return transport_residual(v, x, t, **kw)

    chex.clear_trace_counter()
    got = [r(x, jnp.asarray(t)) for x, t in zip(xs, (0.3, 0.2, 0.4), strict=True)]
    # the original keyword `divergence=` (used by wgfm.check) still works, eagerly
    a = transport_residual(v, xs[0], 0.3, **kw, divergence=divergence)
    np.testing.assert_allclose(got[0], a, atol=1e-14)  # jit == eager
    np.testing.assert_allclose(np.array(got), 0.0, atol=1e-14)  # exact transport: R = 0
    wrong = transport_residual(lambda x, t: 2 * v(x, t), xs[0], 0.3, **kw)
    assert abs(float(wrong)) > 0.1


def test_bad_inputs():
    v, kw = gaussian_case()
    x = jnp.ones(3)
    with pytest.raises(ValueError, match="shaped like"):
        transport_residual(lambda x, t: x[:1], x, T, **kw)
    with pytest.raises(ValueError, match=r"non-finite.*x="):
        transport_residual(lambda x, t: v(x, t) + jnp.log(x - 100.0), x, T, **kw)


@pytest.mark.parametrize("kind", ["exact", "chunked", "probes"])
def test_unchecked_residual_same_numbers_no_callback(kind):
    v, _, dens, _ = setup()
    kw = {
        "exact": {},
        "chunked": {"chunk_size": 1},
        "probes": {"probes": make_probes(jax.random.key(0), 4, (2,))},
    }[kind]

    def res(field, x, **extra):
        return transport_residual(field, x, T, **dens, **kw, **extra)

    x = jnp.array([0.7, -1.2])
    np.testing.assert_array_equal(res(v, x, checked=False), res(v, x))
    assert "callback" in str(jax.make_jaxpr(lambda y: res(v, y))(x))
    assert "callback" not in str(jax.make_jaxpr(lambda y: res(v, y, checked=False))(x))
    bad = lambda y, t: y / 0.0  # noqa: E731
    assert not np.isfinite(res(bad, x, checked=False))
    with pytest.raises(ValueError, match="non-finite"):
        res(bad, x)
