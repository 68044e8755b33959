"""Tests for wgfm.diagnostics.loops: loop families, line integrals, circulation reports."""

import chex
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wgfm import gmm
from wgfm.diagnostics.loops import (
    brownian_bridge,
    circle,
    line_integral,
    loop_report,
    loop_reports,
    noisy_copy_cycle,
    pair_rotation,
    parametric_line_integral,
    parametric_loop,
    path_dependence,
    polyline,
    rectangle,
    refine,
    triangle_identity,
)
from wgfm.processes import VP

D = 5


def plane(key, dim=D):
    """Random orthonormal (u, v) in R^dim."""
    q, _ = jnp.linalg.qr(jax.random.normal(key, (dim, 2)))
    return q[:, 0], q[:, 1]


def antisymmetric(key, dim=D):
    m = jax.random.normal(key, (dim, dim))
    return m - m.T


def potential_gradient(dim=D):
    """``grad phi`` for a smooth random potential (exactly conservative)."""
    k1, k2 = jax.random.split(jax.random.key(42))
    w1 = jax.random.normal(k1, (12, dim)) / np.sqrt(dim)
    w2 = jax.random.normal(k2, (12,))
    return jax.grad(lambda x, t: w2 @ jnp.tanh(w1 @ x * (1 + t)))


def test_circle_is_closed_planar_and_on_radius():
    u, v = plane(jax.random.key(0))
    c = jnp.arange(D) / D
    loop = circle(c, u, v, 2.0, 12)
    assert loop.shape == (13, D) and bool(jnp.all(loop[-1] == loop[0]))
    np.testing.assert_allclose(jnp.linalg.norm(loop - c, axis=1), 2.0, rtol=1e-14)
    off = loop - c
    resid = off - jnp.outer(off @ u, u) - jnp.outer(off @ v, v)
    assert float(jnp.max(jnp.abs(resid))) < 1e-13
    sampled = parametric_loop(lambda th: c + 2.0 * (jnp.cos(th) * u + jnp.sin(th) * v), 12)
    np.testing.assert_allclose(sampled, loop, atol=1e-14)


def test_gauss_legendre_circulation_of_rotation_field():
    u, v = plane(jax.random.key(1))
    a = antisymmetric(jax.random.key(2))
    c, r = jnp.ones(D) * 0.3, 1.7
    curve = lambda th: c + r * (jnp.cos(th) * u + jnp.sin(th) * v)  # noqa: E731
    got = parametric_line_integral(lambda x, t: a @ x, curve, 0.0)
    exact = 2 * np.pi * r**2 * (v @ a @ u)
    # smooth periodic integrand, 128 Gauss-Legendre nodes: exact to rounding (issue asks 1e-10)
    assert abs(float(got - exact)) < 1e-10


@pytest.mark.parametrize("rule", ["midpoint", "trapezoid"])
def test_sampled_circulation_converges_at_second_order(rule):
    u, v = plane(jax.random.key(3))
    a = antisymmetric(jax.random.key(4))
    exact = 2 * np.pi * (v @ a @ u)
    field = lambda x, t: a @ x + 0.3 * jnp.sin(x)  # noqa: E731  (sin part is a gradient)
    errs = [
        abs(float(line_integral(field, circle(jnp.zeros(D), u, v, 1.0, n), 0.0, rule=rule)) - exact)
        for n in (16, 32, 64)
    ]
    # polygon + quadrature error is c/n^2 + O(n^-4): halving h divides it by 4 (to ~2%)
    np.testing.assert_allclose(np.array(errs[:-1]) / np.array(errs[1:]), 4.0, rtol=0.03)


def loop_families(x, key):
    """Every loop family, each with 12 segments (so they batch into one compiled call)."""
    u, v = plane(key)
    k1, k2, k3 = jax.random.split(key, 3)
    return {
        "circle": circle(x, u, v, 0.8, 12),
        "rectangle": rectangle(x, u, v, 1.0, 0.5, 3),
        "brownian": brownian_bridge(x, 12, 0.2, key=k1),
        "pair_rotation": pair_rotation(x, x + 0.3, 12, key=k2),
        "noisy_copy": noisy_copy_cycle(VP(), x, 0.4, num_copies=3, points_per_segment=4, key=k3),
    }


@pytest.mark.parametrize("which", ["mlp", "gmm"])
def test_gradient_fields_have_vanishing_circulation_second_order(which):
    if which == "mlp":
        field = potential_gradient()
    else:
        field = gmm.score_field(gmm.random_mixture(D, 3, key=jax.random.key(5)), VP())
    x = jax.random.normal(jax.random.key(6), (D,))
    fams = loop_families(x, jax.random.key(7))
    circ = jax.jit(jax.vmap(lambda p: loop_report(field, p, 0.4).I))
    i1, i2, i4 = (
        np.abs(circ(jnp.stack([refine(lp, k) for lp in fams.values()]))) for k in (4, 8, 16)
    )
    # a gradient's circulation over a closed polygon is exactly 0; the midpoint rule's error
    # is sum_k c_k h_k^3 -> divides by 4 per halving (the O(h^4) remainder allows +-25%)
    for name, r1, r2 in zip(fams, i1 / i2, i2 / i4, strict=True):
        assert 3.0 < r1 < 5.0 and 3.0 < r2 < 5.0, (name, r1, r2)


def test_rectangle_and_report_closed_forms():
    u, v = plane(jax.random.key(8))
    a = antisymmetric(jax.random.key(9))
    rect = rectangle(jnp.zeros(D), u, v, 2.0, 0.5, 3)
    rep = loop_report(lambda x, t: a @ x, rect, 0.0)
    # midpoint rule is exact for linear fields: circulation = 2 * area * v^T A u
    np.testing.assert_allclose(rep.I, 2 * 1.0 * (v @ a @ u), rtol=1e-12)
    np.testing.assert_allclose(rep.L, 5.0, rtol=1e-14)
    np.testing.assert_allclose(rep.I_over_L, rep.I / 5.0, rtol=1e-14)
    # rotation confined to the (u, v) plane has constant norm a r cos(pi/n) at chord midpoints
    rot = 1.3 * (jnp.outer(v, u) - jnp.outer(u, v))
    n, r = 10, 2.0
    rep = loop_report(lambda x, t: rot @ x, circle(jnp.zeros(D), u, v, r, n), 0.0)
    np.testing.assert_allclose(rep.I_norm, rep.I / (1.3 * r * np.cos(np.pi / n)), rtol=1e-12)


def test_loop_reports_one_evaluation_same_numbers():
    u, v = plane(jax.random.key(20))
    a = antisymmetric(jax.random.key(21))
    x = jax.random.normal(jax.random.key(22), (D,))
    lps = [
        rectangle(jnp.zeros(D), u, v, 2.0, 0.5, 3),  # closed form: 2 * area * v^T A u
        brownian_bridge(x, 37, 0.1, key=jax.random.key(23)),
        pair_rotation(x, jnp.zeros(D), 11, key=jax.random.key(24)),
    ]
    for rule in ("midpoint", "trapezoid"):
        calls = []

        def field(y, t, calls=calls):
            calls.append(1)  # traced once per batched evaluation
            return jnp.tanh(a @ y) * (1 + t)

        together = loop_reports(field, lps, 0.3, rule=rule)
        assert len(calls) == 1
        for lp, got in zip(lps, together, strict=True):
            alone = loop_report(field, lp, 0.3, rule=rule)
            for name in ("I", "I_norm", "L", "I_over_L"):
                np.testing.assert_allclose(getattr(got, name), getattr(alone, name), rtol=1e-12)
    lin = loop_reports(lambda y, t: a @ y, lps[:1], 0.0)[0]
    np.testing.assert_allclose(lin.I, 2 * 1.0 * (v @ a @ u), rtol=1e-12)
    with pytest.raises(ValueError, match="at least one"):
        loop_reports(lambda y, t: y, [], 0.0)
    with pytest.raises(ValueError, match="sample shape"):
        loop_reports(
            lambda y, t: y,
            [
                lps[0],
                circle(
                    jnp.zeros(2),
                    u[:2] / jnp.linalg.norm(u[:2]),
                    jnp.array([-u[1], u[0]]) / jnp.linalg.norm(u[:2]),
                    1.0,
                    8,
                ),
            ],
            0.0,
        )
    with pytest.raises(ValueError, match=r"loops\[1\].*closed"):
        loop_reports(lambda y, t: y, [lps[0], polyline(jnp.eye(D)[:3], 4)], 0.0)


def test_path_dependence_and_triangle_identity():
    a_mat = antisymmetric(jax.random.key(10))
    lin = lambda x, t: a_mat @ x  # noqa: E731
    a, b, c = jax.random.normal(jax.random.key(11), (3, D))
    # for antisymmetric A the straight integral from p to q is q^T A p (midpoint rule exact)
    expected = b @ a_mat @ a + c @ a_mat @ b + a @ a_mat @ c
    np.testing.assert_allclose(triangle_identity(lin, a, b, c, 0.0), expected, rtol=1e-12)
    pd = path_dependence(lin, a, b, c, 0.0)
    np.testing.assert_allclose(pd.straight, b @ a_mat @ a, rtol=1e-12)
    np.testing.assert_allclose(pd.difference, pd.straight - pd.detour, rtol=1e-14)
    grad = potential_gradient()
    # conservative: both are pure O(h^2) quadrature error, so doubling the points quarters them
    tri = [abs(float(triangle_identity(grad, a, b, c, 0.2, num_points=n))) for n in (32, 64)]
    dif = [
        abs(float(path_dependence(grad, a, b, c, 0.2, num_points=n).difference)) for n in (32, 64)
    ]
    np.testing.assert_allclose([tri[0] / tri[1], dif[0] / dif[1]], 4.0, rtol=0.1)
    assert max(tri + dif) < 1e-3


def test_pair_rotation_bridge_and_noisy_cycle_geometry():
    key = jax.random.key(12)
    x, ctr = jax.random.normal(key, (2, 3, 3))  # image-shaped input, 9 coordinates
    loop = pair_rotation(x, ctr, 8, key=key)
    assert loop.shape == (9, 3, 3) and bool(jnp.all(loop[-1] == loop[0]))
    dist = jnp.linalg.norm((loop - ctr).reshape(9, -1), axis=1)
    np.testing.assert_allclose(dist, jnp.linalg.norm(x - ctr), rtol=1e-13)
    # at angle pi every paired coordinate is negated; the odd one out stays fixed
    half = (loop[4] - ctr).reshape(-1) / (x - ctr).reshape(-1)
    assert sorted(np.round(np.asarray(half), 12).tolist()) == [-1.0] * 8 + [1.0]

    bridges = jax.vmap(lambda k: brownian_bridge(jnp.zeros(2), 8, 0.5, key=k))(
        jax.random.split(key, 4000)
    )
    assert bool(jnp.all(bridges[:, 0] == 0)) and bool(jnp.all(bridges[:, -1] == 0))
    # bridge variance at the midpoint is step^2 * n/4 = 0.5; 8000 draws -> ~1.6% sampling error
    np.testing.assert_allclose(jnp.var(bridges[:, 4]), 0.5, rtol=0.06)

    proc, t = VP(), 0.6
    cyc = noisy_copy_cycle(proc, x, t, num_copies=4, points_per_segment=5, key=key)
    assert cyc.shape == (21, 3, 3) and bool(jnp.all(cyc[-1] == cyc[0]))
    radii = jnp.linalg.norm((cyc - proc.alpha(t) * x).reshape(21, -1), axis=1)
    corners = radii[::5]
    interp = jnp.concatenate([jnp.linspace(corners[i], corners[i + 1], 6)[:-1] for i in range(4)])
    np.testing.assert_allclose(radii[:-1], interp, rtol=1e-13)


def test_jit_vmap_and_trace_once():
    m = jnp.array([[0.5, -1.0], [0.3, 0.2]])
    field = lambda x, t: jnp.tanh(m @ x) * (1 + t)  # noqa: E731  non-conservative
    u, v = jnp.array([1.0, 0.0]), jnp.array([0.0, 1.0])

    @eqx.filter_jit
    @chex.assert_max_traces(n=1)
    def report(loop, t):
        return loop_report(field, loop, t)

    chex.clear_trace_counter()
    loops = jnp.stack([circle(jnp.array([c, 0.0]), u, v, 1.0, 16) for c in (0.0, 1.0, 2.0)])
    ts = jnp.array([0.1, 0.5, 0.9])
    got = [report(lp, t) for lp, t in zip(loops, ts, strict=True)]
    eager = loop_report(field, loops[1], ts[1])
    np.testing.assert_allclose(got[1].I, eager.I, rtol=1e-12)
    batched = jax.jit(jax.vmap(lambda lp, t: loop_report(field, lp, t, chunk_size=4)))(loops, ts)
    np.testing.assert_allclose(batched.I_norm, jnp.stack([g.I_norm for g in got]), rtol=1e-12)


def test_bad_inputs():
    u, v = plane(jax.random.key(13))
    f = lambda x, t: x  # noqa: E731
    open_path = polyline(jnp.eye(D)[:3], 4)
    with pytest.raises(ValueError, match="closed"):
        loop_report(f, open_path, 0.0)
    with pytest.raises(eqx.EquinoxRuntimeError, match="closed"):
        eqx.filter_jit(lambda p: loop_report(f, p, 0.0))(open_path)
    with pytest.raises(ValueError, match="orthonormal"):
        circle(jnp.zeros(D), u, 2 * v, 1.0, 8)
    with pytest.raises(ValueError, match="radius"):
        circle(jnp.zeros(D), u, v, -1.0, 8)
    with pytest.raises(ValueError, match="rule"):
        line_integral(f, open_path, 0.0, rule="simpson")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shaped like"):
        line_integral(lambda x, t: x[:2], open_path, 0.0)
    with pytest.raises(ValueError, match=r"non-finite.*x="):
        line_integral(lambda x, t: jnp.log(x), open_path, 0.0)
    with pytest.raises(ValueError, match="num_copies"):
        noisy_copy_cycle(VP(), jnp.zeros(D), 0.5, num_copies=1, points_per_segment=2, key=None)  # type: ignore[arg-type]


def test_unchecked_loop_reports_same_numbers_no_callback():
    """``checked=False``: the same reports, no host callback in the program, and a non-finite
    field gives non-finite reports instead of raising."""
    field = gmm.score_field(gmm.ring(dtype=jnp.float64), VP())
    x = jnp.array([1.0, 0.5])
    lps = [
        circle(x, jnp.array([1.0, 0.0]), jnp.array([0.0, 1.0]), 0.5, 32),
        brownian_bridge(x, 40, 0.1, key=jax.random.key(0)),
    ]
    ref = loop_reports(field, lps, 0.3)
    out = loop_reports(field, lps, 0.3, checked=False)
    chex.assert_trees_all_equal(out, ref)
    chex.assert_trees_all_equal(loop_report(field, lps[1], 0.3, checked=False), ref[1])
    for fn in (
        lambda *p: loop_reports(field, list(p), 0.3),
        lambda *p: loop_report(field, p[0], 0.3),
    ):
        assert "callback" in str(jax.make_jaxpr(fn)(*lps))
    for fn in (
        lambda *p: loop_reports(field, list(p), 0.3, checked=False),
        lambda *p: loop_report(field, p[0], 0.3, checked=False),
    ):
        assert "callback" not in str(jax.make_jaxpr(fn)(*lps))
    bad = lambda y, t: y / 0.0  # noqa: E731
    assert not np.isfinite(loop_report(bad, lps[0], 0.3, checked=False).I)
    with pytest.raises(ValueError, match="non-finite"):
        loop_report(bad, lps[0], 0.3)
    with pytest.raises(ValueError, match="closed"):  # eager loops: checked either way
        loop_report(field, lps[0][:-1], 0.3, checked=False)
