"""Tests for wgfm.diagnostics.helmholtz: the density-weighted 2D Helmholtz split."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wgfm import gmm
from wgfm.diagnostics.helmholtz import _split, grid_2d, helmholtz_split, helmholtz_split_field
from wgfm.processes import VP


def log_p(z):
    """An anisotropic two-component (unnormalised) mixture in 2D."""
    return jnp.logaddexp(
        -0.5 * ((z[0] - 1) ** 2 + z[1] ** 2 / 2), -0.5 * ((z[0] + 1.5) ** 2 / 0.5 + (z[1] - 1) ** 2)
    )


def phi_true(z):
    return jnp.sin(z[0]) + 0.5 * z[0] * z[1]


def on_grid(fn, pts):
    return jax.vmap(jax.vmap(fn))(pts)


def weighted_norm(f, p, h):
    pn = p / (jnp.sum(p) * h * h)
    return float(jnp.sqrt(jnp.sum(pn * jnp.sum(f**2, axis=-1)) * h * h))


@pytest.fixture(scope="module")
def problem():
    pts, h = grid_2d(-8.0, 8.0, 96)
    p = jnp.exp(on_grid(log_p, pts))
    grad_phi = on_grid(jax.grad(phi_true), pts)
    gl = on_grid(jax.grad(log_p), pts)
    # A grad log p with A antisymmetric: div(p A grad log p) = div(A grad p) = 0 (harmless)
    rot = 0.8 * jnp.stack([gl[..., 1], -gl[..., 0]], axis=-1)
    split = jax.jit(helmholtz_split)
    return pts, h, p, grad_phi, rot, split


def test_recovers_known_split(problem):
    pts, h, p, grad_phi, rot, split = problem
    out = split(grad_phi + rot, p, h)
    ref = weighted_norm(grad_phi, p, h)
    # second-order finite volumes at h = 1/6 on a window holding all of p's mass: ~1% error
    assert weighted_norm(out.grad_phi - grad_phi, p, h) < 2e-2 * ref
    np.testing.assert_allclose(out.harmful, ref, rtol=5e-3)
    np.testing.assert_allclose(out.harmless, weighted_norm(rot, p, h), rtol=5e-3)
    # exact discrete orthogonality (exact adjoint), up to the CG tolerance 1e-10
    np.testing.assert_allclose(out.harmful**2 + out.harmless**2, out.total**2, rtol=1e-8)
    assert float(out.solver_residual) < 1e-9


def test_pure_parts_and_convergence(problem):
    pts, h, p, grad_phi, rot, split = problem
    only_rot = split(rot, p, h)
    only_grad = split(grad_phi, p, h)
    assert float(only_rot.harmful) < 1e-2 * float(only_rot.total)
    assert float(only_grad.harmless) < 1e-2 * float(only_grad.total)
    # discretisation error of the harmless field's leak into grad phi falls ~4x per halving of h
    leaks = []
    for n in (32, 64):
        pts2, h2 = grid_2d(-8.0, 8.0, n)
        p2 = jnp.exp(on_grid(log_p, pts2))
        gl = on_grid(jax.grad(log_p), pts2)
        r2 = 0.8 * jnp.stack([gl[..., 1], -gl[..., 0]], axis=-1)
        leaks.append(float(split(r2, p2, h2).harmful))
    assert 3.0 < leaks[0] / leaks[1] < 5.0


def test_eager_call_compiles_once_and_matches_jit(problem):
    from wgfm.diagnostics import helmholtz as hm

    pts, h, p, grad_phi, rot, split = problem
    hm._split.clear_cache()
    eager = [helmholtz_split(w, p, h) for w in (grad_phi + rot, rot, 2.0 * rot)]
    assert hm._split._cache_size() == 1  # one program for the grid shape, not one per call
    np.testing.assert_allclose(eager[0].harmful, split(grad_phi + rot, p, h).harmful, rtol=1e-10)
    np.testing.assert_allclose(eager[2].harmless, 2.0 * eager[1].harmless, rtol=1e-8)


def test_float32_inputs_are_solved_in_float64_eagerly(problem):
    # float32 CG does not converge on a density spanning many decades (traced, it would run in
    # float32): eagerly the solve runs in float64 and only the results are rounded to float32.
    _, h, p, grad_phi, rot, split = problem
    w = grad_phi + rot
    ref = split(w, p, h)  # float64 inputs (tests run with x64)
    out = helmholtz_split(w.astype(jnp.float32), p.astype(jnp.float32), h)
    assert out.harmful.dtype == jnp.float32 and out.phi.dtype == jnp.float32
    assert float(out.solver_residual) < 1e-8  # a float64 residual; float32 CG stalls near 1
    # float32 inputs (relative rounding ~6e-8) move the norms by no more than ~1e-6
    np.testing.assert_allclose(out.harmful, ref.harmful, rtol=1e-5)
    np.testing.assert_allclose(out.harmless, ref.harmless, rtol=1e-5)
    np.testing.assert_allclose(out.harmful**2 + out.harmless**2, out.total**2, rtol=1e-5)


def test_field_wrapper_with_gmm_oracle():
    mix, proc, t = gmm.ring(dtype=jnp.float64), VP(), 0.5
    score = gmm.score_field(mix, proc)
    logp = gmm.log_density_field(mix, proc)
    anti = jnp.array([[0.0, 1.0], [-1.0, 0.0]])
    out = jax.jit(
        lambda: helmholtz_split_field(
            lambda x, s: anti @ score(x, s), logp, t, lo=-7.0, hi=7.0, num=48
        )
    )()
    # the harmless oracle error has (almost) no harmful part
    assert float(out.harmful) < 2e-2 * float(out.total)


def test_bad_inputs():
    p = jnp.ones((4, 4))
    with pytest.raises(ValueError, match="`w`"):
        helmholtz_split(jnp.ones((4, 4, 3)), p, 0.1)
    with pytest.raises(ValueError, match="`p`"):
        helmholtz_split(jnp.ones((4, 2)), jnp.ones(4), 0.1)
    with pytest.raises(ValueError, match="spacing"):
        helmholtz_split(jnp.ones((4, 4, 2)), p, -0.1)
    with pytest.raises(ValueError, match="lo"):
        grid_2d(1.0, 0.0, 8)


def test_nonfinite_or_negative_inputs_raise_eagerly_and_traced():
    """Eager calls check ``p`` and ``w`` on the host (the compiled solve then holds no host
    callback, so the persistent cache keeps it); traced calls check inside the program."""
    w, p = jnp.zeros((4, 4, 2)), jnp.ones((4, 4))
    with pytest.raises(ValueError, match="`p` must be finite and >= 0"):
        helmholtz_split(w, p.at[1, 1].set(-1.0), 0.1)
    with pytest.raises(ValueError, match="`w` must be finite"):
        helmholtz_split(w.at[0, 0, 0].set(jnp.nan), p, 0.1)
    with pytest.raises(Exception, match="`p` must be finite"):
        jax.jit(lambda q: helmholtz_split(w, q, 0.1).total)(
            p.at[1, 1].set(-1.0)
        ).block_until_ready()
    hs = jnp.full((2,), 0.1)

    def program(checked):
        return str(jax.make_jaxpr(lambda a, b: _split(a, b, hs, 1e-10, 10, checked))(w, p))

    assert "callback" in program(True) and "callback" not in program(False)
