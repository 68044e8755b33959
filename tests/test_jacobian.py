"""Tests for wgfm.diagnostics.jacobian: full/sub Jacobians, exact and probe divergences."""

import chex
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wgfm.diagnostics.jacobian import (
    asymmetry,
    curl_2d,
    divergence,
    exact_trace,
    jacobian,
    make_probes,
    probe_asymmetry,
    probe_divergence,
    probe_trace,
    random_indices,
    sub_jacobian,
)


def nonlinear_field(dim, key):
    """A non-gradient smooth field with a time dependence, any input shape."""
    m = jax.random.normal(key, (dim, dim)) / np.sqrt(dim)

    def f(x, t):
        y = jnp.reshape(x, (-1,))
        return jnp.reshape(jnp.tanh(m.astype(y.dtype) @ y) * (1 + t) + jnp.sin(y) * t, jnp.shape(x))

    return f


def reference_jacobian(f, x, t):
    """Independent reference: reverse-mode jax.jacrev of the flattened field."""
    flat = jnp.reshape(x, (-1,))
    return jax.jacrev(lambda y: jnp.reshape(f(y.reshape(x.shape), t), (-1,)))(flat)


@pytest.mark.parametrize("shape", [(3,), (2, 3, 2)])
def test_jacobian_matches_reverse_mode_any_shape(shape):
    d = int(np.prod(shape))
    f = nonlinear_field(d, jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), shape)
    ref = reference_jacobian(f, x, 0.3)
    # forward vs reverse mode in float64: agree to rounding
    np.testing.assert_allclose(jacobian(f, x, 0.3), ref, atol=1e-13)


@pytest.mark.parametrize("chunk", [1, 4, 5, 12])
def test_chunked_equals_unchunked(chunk):
    f = nonlinear_field(12, jax.random.key(2))
    x = jax.random.normal(jax.random.key(3), (12,))
    full = jacobian(f, x, 0.7)
    # identical arithmetic per column, only batched differently: equal to rounding
    np.testing.assert_allclose(jacobian(f, x, 0.7, chunk_size=chunk), full, atol=1e-14)
    np.testing.assert_allclose(divergence(f, x, 0.7, chunk_size=chunk), jnp.trace(full), atol=1e-13)


def test_linear_field_jacobian_and_divergence_exact():
    m = jax.random.normal(jax.random.key(4), (6, 6))
    f = lambda x, t: m @ x  # noqa: E731
    x = jnp.ones(6)
    np.testing.assert_allclose(jacobian(f, x, 0.0), m, atol=1e-14)
    np.testing.assert_allclose(divergence(f, x, 0.0), jnp.trace(m), atol=1e-13)


def test_sub_jacobian_equals_block():
    f = nonlinear_field(10, jax.random.key(5))
    x = jax.random.normal(jax.random.key(6), (2, 5))
    idx = jnp.array([7, 2, 9, 0])
    full = jacobian(f, x, 0.1)
    np.testing.assert_allclose(sub_jacobian(f, x, 0.1, idx), full[idx][:, idx], atol=1e-14)
    for chunk in (1, 3):  # chunked tangents (3 does not divide 4): the same block
        np.testing.assert_allclose(
            sub_jacobian(f, x, 0.1, idx, chunk_size=chunk), full[idx][:, idx], atol=1e-14
        )
    ridx = random_indices(jax.random.key(7), 10, 10)
    assert sorted(np.asarray(ridx).tolist()) == list(range(10))


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_probe_divergence_unbiased_and_se_scaling(kind):
    f = nonlinear_field(8, jax.random.key(8))
    x = jax.random.normal(jax.random.key(9), (8,))
    exact = float(divergence(f, x, 0.5))
    est = jax.jit(
        jax.vmap(
            lambda k, n: probe_divergence(f, x, 0.5, make_probes(k, n, (8,), kind=kind)),
            in_axes=(0, None),
        ),
        static_argnums=1,
    )
    keys = jax.random.split(jax.random.key(10), 2000)
    e1, e16 = np.asarray(est(keys, 1)), np.asarray(est(keys, 16))
    for e in (e1, e16):
        se = e.std() / np.sqrt(e.size)
        # unbiased: the mean over 2000 keys is within 3 standard errors of the exact trace
        assert abs(e.mean() - exact) < 3 * se
    # the estimator's spread falls like 1/sqrt(K): K=16 vs 1 -> 1/4 (sampling error of a
    # std estimate over 2000 keys is ~2-3%, so 15% slack cannot hide a wrong rate)
    np.testing.assert_allclose(e16.std() / e1.std(), 0.25, rtol=0.15)


def test_make_probes_moments_and_errors():
    p = make_probes(jax.random.key(0), 3, (2, 2), dtype=jnp.float32)
    assert p.shape == (3, 2, 2) and p.dtype == jnp.float32
    assert set(np.unique(np.asarray(p)).tolist()) <= {-1.0, 1.0}
    with pytest.raises(ValueError, match="kind"):
        make_probes(jax.random.key(0), 3, (2,), kind="uniform")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_probes"):
        make_probes(jax.random.key(0), 0, (2,))
    f = nonlinear_field(4, jax.random.key(1))
    with pytest.raises(ValueError, match="probes"):
        probe_divergence(f, jnp.ones(4), 0.0, jnp.ones((3, 5)))


def test_float32_stays_float32():
    f = nonlinear_field(5, jax.random.key(11))
    x = jnp.ones(5, jnp.float32)
    assert jacobian(f, x, jnp.float32(0.2)).dtype == jnp.float32
    assert divergence(f, x, jnp.float32(0.2)).dtype == jnp.float32


def test_jit_and_vmap_consistency():
    f = nonlinear_field(6, jax.random.key(12))
    xs = jax.random.normal(jax.random.key(13), (4, 6))
    probes = make_probes(jax.random.key(14), 3, (6,))
    batched = jax.jit(jax.vmap(lambda x: divergence(f, x, 0.4, chunk_size=4)))(xs)
    loop = jnp.stack([divergence(f, x, 0.4) for x in xs])
    np.testing.assert_allclose(batched, loop, atol=1e-13)
    pj = jax.jit(lambda x: probe_divergence(f, x, 0.4, probes))
    np.testing.assert_allclose(pj(xs[0]), probe_divergence(f, xs[0], 0.4, probes), atol=1e-13)
    jb = jax.vmap(lambda x: jacobian(f, x, 0.4))(xs)
    np.testing.assert_allclose(jb[2], jacobian(f, xs[2], 0.4), atol=1e-14)


def test_traces_once_for_new_values():
    f = nonlinear_field(5, jax.random.key(15))

    @jax.jit
    @chex.assert_max_traces(n=1)
    def div(x, t):
        return divergence(f, x, t, chunk_size=2)

    chex.clear_trace_counter()
    for i in range(3):
        div(jnp.full(5, 0.1 * i), jnp.asarray(0.1 * i))


def test_bad_inputs():
    f = nonlinear_field(4, jax.random.key(16))
    x = jnp.ones(4)
    with pytest.raises(ValueError, match="duplicates"):
        sub_jacobian(f, x, 0.0, jnp.array([1, 1]))
    with pytest.raises(ValueError, match="idx"):
        sub_jacobian(f, x, 0.0, jnp.array([0, 4]))
    with pytest.raises(ValueError, match="shaped like"):
        jacobian(lambda y, t: y[:2], x, 0.0)
    with pytest.raises(ValueError, match="chunk_size"):
        divergence(f, x, 0.0, chunk_size=0)
    bad = lambda y, t: jnp.log(y)  # noqa: E731  non-finite at y <= 0
    with pytest.raises(ValueError, match=r"non-finite.*x=\[-1"):
        divergence(bad, -x, 0.0)
    with pytest.raises(eqx.EquinoxRuntimeError, match="non-finite"):
        eqx.filter_jit(lambda y: jacobian(bad, y, 0.0))(-x)


# ---------------------------------------------------------------------------------------------
# Asymmetry statistics


def mlp_potential_gradient(dim, key, dtype):
    """``x -> grad phi(x, t)`` for a random 2-hidden-layer tanh MLP potential ``phi``."""
    k1, k2, k3 = jax.random.split(key, 3)
    w1 = (jax.random.normal(k1, (16, dim)) / np.sqrt(dim)).astype(dtype)
    w2 = (jax.random.normal(k2, (16, 16)) / 4).astype(dtype)
    w3 = jax.random.normal(k3, (16,)).astype(dtype)

    def phi(x, t):
        return w3 @ jnp.tanh(w2 @ jnp.tanh(w1 @ x + t))

    return jax.grad(phi)


def gmm_score(dim, key, dtype):
    from wgfm import gmm
    from wgfm.processes import VP

    m = gmm.random_mixture(dim, 3, key=key)
    m = gmm.GaussianMixture(m.weights.astype(dtype), m.means.astype(dtype), m.covs.astype(dtype))
    return gmm.score_field(m, VP())


@pytest.mark.parametrize("dtype, tol", [(jnp.float32, 1e-5), (jnp.float64, 1e-12)])
# D = 5 repeats D = 2 and 16 with a third size: kept for the slow run only
@pytest.mark.parametrize("dim", [2, pytest.param(5, marks=pytest.mark.slow), 16])
@pytest.mark.parametrize("make", [mlp_potential_gradient, gmm_score])
def test_gradient_fields_are_symmetric(make, dim, dtype, tol):
    field = make(dim, jax.random.key(dim), dtype)
    xs = jax.random.normal(jax.random.key(1), (3, dim), dtype=dtype)
    t = jnp.asarray(0.3, dtype)
    # A Hessian computed by autodiff is symmetric up to rounding: the tolerances
    # (1e-5 in float32, 1e-12 in float64) sit ~100x above eps * condition of these fields.
    ratios = jax.jit(jax.vmap(lambda x: asymmetry(jacobian(field, x, t)).ratio))(xs)
    assert ratios.dtype == dtype
    assert float(jnp.max(ratios)) <= tol


def test_linear_field_ratio_closed_form():
    m = jax.random.normal(jax.random.key(20), (7, 7))
    stats = asymmetry(jacobian(lambda x, t: m @ x, jnp.zeros(7), 0.0))
    a, f = np.linalg.norm(m - m.T), np.linalg.norm(m)
    np.testing.assert_allclose(stats.ratio, a / f, rtol=1e-13)
    np.testing.assert_allclose(stats.asym, a**2 / 2, rtol=1e-13)
    np.testing.assert_allclose(stats.nasym, a**2 / (4 * f**2), rtol=1e-13)
    np.testing.assert_allclose([stats.fro, stats.asym_fro], [f, a], rtol=1e-13)
    anti = m - m.T
    np.testing.assert_allclose(asymmetry(anti).ratio, 2.0, rtol=1e-14)
    assert float(asymmetry(jnp.zeros((3, 3))).ratio) == 0.0
    # a non-finite J gives a non-finite ratio, not the J = 0 convention's 0
    for bad in (jnp.nan, jnp.inf):
        assert not np.isfinite(asymmetry(jnp.eye(3).at[0, 1].set(bad)).ratio)
    with pytest.raises(ValueError, match="square"):
        asymmetry(jnp.zeros((2, 3)))


def test_curl_2d_of_rotation():
    a = jnp.array([[0.3, -1.5], [1.5, 0.2]])
    # curl of x -> A x is A[1, 0] - A[0, 1], everywhere
    np.testing.assert_allclose(curl_2d(lambda x, t: a @ x, jnp.array([0.4, -2.0]), 0.0), 3.0)
    with pytest.raises(ValueError, match="planar"):
        curl_2d(lambda x, t: x, jnp.zeros(3), 0.0)


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_probe_asymmetry_unbiased_and_se_scaling(kind):
    f = nonlinear_field(6, jax.random.key(21))
    x = jax.random.normal(jax.random.key(22), (6,))
    exact = asymmetry(jacobian(f, x, 0.5))
    est = jax.jit(
        jax.vmap(
            lambda k, n: probe_asymmetry(f, x, 0.5, key=k, num_probes=n, kind=kind),
            in_axes=(0, None),
        ),
        static_argnums=1,
    )
    keys = jax.random.split(jax.random.key(23), 2000)
    e1, e16 = est(keys, 1), est(keys, 16)
    for e in (e1, e16):
        for got, want in [(e.asym_sq, exact.asym_fro**2), (e.fro_sq, exact.fro**2)]:
            got = np.asarray(got)
            # unbiased: mean over 2000 keys within 3 standard errors of the exact value
            assert abs(got.mean() - want) < 3 * got.std() / np.sqrt(got.size)
    # spread ~ 1/sqrt(K): 16 probes -> 1/4 (2000 keys: ~2-3% sampling error of a std)
    np.testing.assert_allclose(np.std(e16.asym_sq) / np.std(e1.asym_sq), 0.25, rtol=0.15)
    # the reported per-call SE (16 probes) matches the spread across keys, on average
    np.testing.assert_allclose(np.mean(e16.asym_sq_se), np.std(e16.asym_sq), rtol=0.15)
    assert np.all(np.isinf(e1.fro_sq_se))


def test_unchecked_traces_match_the_checked_ones_and_skip_the_check():
    """``exact_trace``/``probe_trace`` (for ODE right-hand sides) return the same numbers as
    ``divergence``/``probe_divergence`` plus the field value, and do not raise on non-finite
    output (the solve checks once at the end)."""
    f = nonlinear_field(5, jax.random.key(1))
    x = jax.random.normal(jax.random.key(2), (5,))
    div, fx = exact_trace(f, x, 0.4, chunk_size=2)
    np.testing.assert_allclose(div, jnp.trace(reference_jacobian(f, x, 0.4)), rtol=1e-12)
    np.testing.assert_allclose(fx, f(x, 0.4), rtol=1e-14)
    probes = make_probes(jax.random.key(3), 7, (5,))
    est, _ = probe_trace(f, x, 0.4, probes)
    np.testing.assert_allclose(est, probe_divergence(f, x, 0.4, probes), rtol=1e-14)
    bad = lambda y, t: y / 0.0  # noqa: E731
    assert not np.isfinite(exact_trace(bad, x, 0.4)[0])
    with pytest.raises(ValueError, match="non-finite"):
        divergence(bad, x, 0.4)


def _has_callback(fn, *args) -> bool:
    """Whether ``fn``'s program holds a host callback (JAX's persistent cache skips those)."""
    return "callback" in str(jax.make_jaxpr(fn)(*args))


@pytest.mark.parametrize(
    "name",
    ["jacobian", "sub_jacobian", "probe_asymmetry", "divergence", "probe_divergence", "curl_2d"],
)
def test_unchecked_diagnostics_give_the_same_numbers_without_a_callback(name):
    """``checked=False``: bit-identical numbers, no host callback in the traced program (so
    the persistent cache can keep a sweep), and non-finite values are returned, not raised."""
    dim = 2 if name == "curl_2d" else 6
    f = nonlinear_field(dim, jax.random.key(4))
    x = jax.random.normal(jax.random.key(5), (dim,))
    idx, probes = jnp.array([4, 0, 2]), make_probes(jax.random.key(6), 5, (dim,))
    calls = {
        "jacobian": lambda g, y, **kw: jacobian(g, y, 0.3, **kw),
        "sub_jacobian": lambda g, y, **kw: sub_jacobian(g, y, 0.3, idx, **kw),
        "probe_asymmetry": lambda g, y, **kw: (
            probe_asymmetry(g, y, 0.3, key=jax.random.key(7), num_probes=5, **kw).asym_sq
        ),
        "divergence": lambda g, y, **kw: divergence(g, y, 0.3, **kw),
        "probe_divergence": lambda g, y, **kw: probe_divergence(g, y, 0.3, probes, **kw),
        "curl_2d": lambda g, y, **kw: curl_2d(g, y, 0.3, **kw),
    }
    call = calls[name]
    np.testing.assert_array_equal(call(f, x, checked=False), call(f, x))
    assert _has_callback(lambda y: call(f, y), x)  # the detection works: checked has one
    assert not _has_callback(lambda y: call(f, y, checked=False), x)
    bad = lambda y, t: y / 0.0  # noqa: E731
    assert not np.all(np.isfinite(call(bad, x, checked=False)))
    with pytest.raises(ValueError, match="non-finite"):
        call(bad, x)


def test_unchecked_sub_jacobian_skips_the_traced_index_check():
    f = nonlinear_field(4, jax.random.key(8))
    x = jnp.ones(4)
    checked = lambda i: sub_jacobian(f, x, 0.3, i)  # noqa: E731
    assert _has_callback(checked, jnp.array([0, 1]))
    assert not _has_callback(lambda i: sub_jacobian(f, x, 0.3, i, checked=False), jnp.array([0, 1]))
    with pytest.raises(ValueError, match="duplicates"):  # eager indices: checked either way
        sub_jacobian(f, x, 0.3, jnp.array([1, 1]), checked=False)


def _forward_only(a):
    """``x -> A x`` whose tangents come from a host callback: it has forward-mode derivatives
    but no transpose rule, as :func:`wgfm.interop.torch_field` fields."""
    a_np = np.asarray(a)

    @jax.custom_jvp
    def f(x):
        return jnp.asarray(a) @ x

    @f.defjvp
    def f_jvp(primals, tangents):
        (x,), (v,) = primals, tangents
        out = jax.ShapeDtypeStruct(v.shape, v.dtype)
        return f(x), jax.pure_callback(
            lambda u: (a_np @ np.asarray(u)).astype(u.dtype), out, v, vmap_method="sequential"
        )

    return lambda x, t: f(x)


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_forward_only_probe_asymmetry_is_unbiased(kind):
    f = nonlinear_field(6, jax.random.key(21))
    x = jax.random.normal(jax.random.key(22), (6,))
    exact = asymmetry(jacobian(f, x, 0.5))

    def run(k, n):
        return probe_asymmetry(f, x, 0.5, key=k, num_probes=n, kind=kind, method="forward")

    est = jax.jit(jax.vmap(run, in_axes=(0, None)), static_argnums=1)
    # 16 probes per call: the per-call SE (a sample std of 16 terms) is then close to unbiased
    e = est(jax.random.split(jax.random.key(23), 2000), 16)
    for got, want in [(e.asym_sq, exact.asym_fro**2), (e.fro_sq, exact.fro**2)]:
        got = np.asarray(got)
        # unbiased: mean over 2000 keys within 3 standard errors of the exact value
        assert abs(got.mean() - want) < 3 * got.std() / np.sqrt(got.size)
    np.testing.assert_allclose(np.mean(e.asym_sq_se), np.std(e.asym_sq), rtol=0.15)


def test_auto_probe_method_uses_the_vjp_where_it_exists_and_forward_mode_otherwise():
    f = nonlinear_field(5, jax.random.key(1))
    x = jax.random.normal(jax.random.key(2), (5,))
    key = jax.random.key(3)
    auto = probe_asymmetry(f, x, 0.4, key=key, num_probes=3)
    vjp = probe_asymmetry(f, x, 0.4, key=key, num_probes=3, method="vjp")
    np.testing.assert_array_equal(auto.asym_sq, vjp.asym_sq)
    a = jax.random.normal(jax.random.key(4), (5, 5))
    g = _forward_only(a)
    with pytest.raises(ValueError, match="method='forward'"):
        probe_asymmetry(g, x, 0.4, key=key, num_probes=3, method="vjp")
    got = probe_asymmetry(g, x, 0.4, key=key, num_probes=3)
    ref = probe_asymmetry(lambda y, t: a @ y, x, 0.4, key=key, num_probes=3, method="forward")
    np.testing.assert_allclose(got.asym_sq, ref.asym_sq, rtol=1e-12)
    # per probe, 2||Av||^2 - 2 v.A(Av) = ||(A - A^T) v||^2 only in expectation: check the mean
    # of the exact per-probe identity over the same probes instead
    v = make_probes(key, 3, (5,), dtype=x.dtype)
    per = [2 * (a @ vi) @ (a @ vi) - 2 * vi @ (a @ (a @ vi)) for vi in v]
    np.testing.assert_allclose(got.asym_sq, np.mean(per), rtol=1e-12)


def test_the_forward_estimator_is_noisier_at_small_asymmetry():
    """Its per-probe term ``2 ||Jv||^2 - 2 v.J(Jv)`` is a difference of two terms of size
    ``~||J||_F^2`` whose mean is ``lambda^2 ||J||_F^2``: its relative standard error grows like
    ``1 / lambda``, where the VJP estimator's ``||(J - J^T) v||^2`` does not. At lambda ~ 0.1 it
    is several times larger."""
    key = jax.random.key(7)
    s = jax.random.normal(key, (16, 16))
    sym, anti = s + s.T, jax.random.normal(jax.random.key(8), (16, 16))
    a = sym + 0.05 * (anti - anti.T)
    lam = float(asymmetry(a).ratio)
    assert 0.05 < lam < 0.2
    x = jnp.zeros(16)
    keys = jax.random.split(jax.random.key(9), 400)

    def rel_se(method):
        one = jax.vmap(
            lambda k: (
                probe_asymmetry(
                    lambda y, t: a @ y, x, 0.0, key=k, num_probes=1, method=method
                ).asym_sq
            )
        )(keys)
        return float(np.std(one) / np.mean(one))

    assert rel_se("forward") > 3 * rel_se("vjp")


def _linear_at(lam: float, dim: int, seed: int):
    """``A = S + c W`` (``S`` symmetric, ``W`` antisymmetric, Frobenius-orthogonal), with ``c``
    set so ``||A - A^T|| / ||A|| = lam`` exactly: ``||A - A^T|| = 2 c ||W||`` and ``||A||^2 =
    ||S||^2 + c^2 ||W||^2``."""
    g, h = np.random.default_rng(seed).standard_normal((2, dim, dim))
    s, w = g + g.T, h - h.T
    c = lam * np.linalg.norm(s) / (np.linalg.norm(w) * np.sqrt(4 - lam**2))
    return jnp.asarray(s + c * w)


@pytest.mark.parametrize("method", ["vjp", "forward"])
def test_probe_ratio_standard_error_covers_the_exact_ratio(method):
    """At lambda = 0.1 both estimators' means agree with the exact ``||A - A^T||^2`` and
    ``lambda``; the reported ``ratio_se`` matches the spread of the estimates across keys and
    every estimate lies within 4 of its own s.e. of the exact lambda."""
    lam = 0.1
    a = _linear_at(lam, 24, 0)
    np.testing.assert_allclose(float(asymmetry(a).ratio), lam, rtol=1e-12)
    x = jnp.ones(24)
    keys = jax.random.split(jax.random.key(31), 400)
    est = jax.jit(
        jax.vmap(
            lambda k: probe_asymmetry(
                lambda y, t: a @ y, x, 0.0, key=k, num_probes=32, method=method
            )
        )
    )(keys)
    ratio, se, a2 = (np.asarray(v) for v in (est.stats.ratio, est.ratio_se, est.asym_sq))
    exact_a2 = float(np.sum((a - a.T) ** 2))
    # the unbiased quantity: mean over 400 keys within 4 of its standard errors of the exact
    assert abs(a2.mean() - exact_a2) < 4 * a2.std() / np.sqrt(a2.size)
    # the ratio is consistent, not unbiased: sqrt of a noisy A is low by ~ (rel. s.e. of A)^2 / 8
    # of lambda, second order, so well within one s.e. of the ratio
    assert abs(ratio.mean() - lam) < np.median(se)
    # the reported s.e. (delta method) is the spread across keys: 400 keys pin a std to ~4%
    np.testing.assert_allclose(np.median(se), ratio.std(), rtol=0.25)
    assert np.all(np.abs(ratio - lam) <= 4 * se)  # 4 s.e.: P ~ 6e-5 per estimate if right


def test_probe_ratio_standard_error_edge_cases():
    x = jnp.ones(5)
    zero = probe_asymmetry(lambda y, t: 0.0 * y, x, 0.0, key=jax.random.key(0), num_probes=4)
    assert float(zero.stats.ratio) == 0.0 and float(zero.ratio_se) == 0.0  # J = 0: exact 0
    a = _linear_at(0.5, 5, 1)
    one = probe_asymmetry(lambda y, t: a @ y, x, 0.0, key=jax.random.key(0), num_probes=1)
    assert np.isinf(one.ratio_se)  # one probe gives no spread
    # forward estimates of a nearly symmetric J with 4 probes: A falls below its own s.e. (often
    # below 0, ratio 0), where the s.e. is that of a ratio the probes cannot tell from 0:
    # finite, ~ sqrt(se_A / F) / 2 (the delta method's 1 / sqrt(A) would blow up)
    b = _linear_at(0.01, 5, 1)
    p = jax.vmap(
        lambda k: probe_asymmetry(lambda y, t: b @ y, x, 0.0, key=k, num_probes=4, method="forward")
    )(jax.random.split(jax.random.key(2), 64))
    low = np.asarray(p.asym_sq < p.asym_sq_se)
    assert low.sum() > 10 and np.all(np.asarray(p.stats.ratio)[np.asarray(p.asym_sq < 0)] == 0)
    se, scale = (np.asarray(v)[low] for v in (p.ratio_se, 0.5 * jnp.sqrt(p.asym_sq_se / p.fro_sq)))
    assert np.all(np.isfinite(se)) and np.all((se > 0.3 * scale) & (se < 3 * scale))
