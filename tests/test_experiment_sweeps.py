"""The experiments' compiled sweeps: no host callback in them (so that JAX's persistent cache
keeps them and a rerun skips their compilation), the same numbers as the checked diagnostics,
and a clear error from the host check when a field is non-finite."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import differential, integral, measures
from experiments.common import Context, clean_and_noised, require_finite
from experiments.config import QUICK, ReproduceConfig
from wgfm import gmm
from wgfm.diagnostics import asymmetry, jacobian

SIZES = dataclasses.replace(QUICK, num_levels=2, num_diag_samples=3, bridge_steps=20,
                            noisy_copies=3, noisy_points=8, loop_points=(8,))  # fmt: skip


@pytest.fixture(scope="module")
def setup():
    ctx = Context(ReproduceConfig(quick=True, preset="mixtures"), sizes=SIZES)
    ts = jnp.asarray([0.2, 0.6], jnp.float32)
    x0, xt = clean_and_noised(ctx, "2d", np.asarray(ts), 3, jax.random.key(0))
    return ctx, ctx.oracle_score("2d"), x0, xt, ts


def _program_text(fn, *args) -> str:
    return str(eqx.filter_make_jaxpr(fn)(*args)[0])


def test_sweep_programs_hold_no_host_callback(setup):
    ctx, field, x0, xt, ts = setup
    v = gmm.velocity_field(ctx.mix2d, ctx.process)
    logp = gmm.log_density_field(ctx.mix2d, ctx.process)
    dlogp = gmm.dt_log_density_field(ctx.mix2d, ctx.process)
    key = jax.random.key(1)
    programs = {
        "asymmetry": (differential._asymmetry_sweep, field, xt, ts),
        "large D": (differential._large_d_sweep, field, xt, ts, key, 2, 4, 2),
        "circulation": (integral.circulation_program(ctx), field, x0, xt, ts, key),
        "ratio": (measures._ratio_sweep, field, xt, ts),
        "residual": (measures._residual_sweep, v, logp, dlogp, xt, ts),
    }
    for name, (fn, *args) in programs.items():
        assert "callback" not in _program_text(fn, *args), name
    # the detection is not vacuous: the checked Jacobian's program has one
    checked = eqx.filter_jit(lambda f, x, t: jacobian(f, x, t))
    assert "callback" in _program_text(checked, field, xt[0, 0], ts[0])


def test_unchecked_sweeps_match_the_checked_diagnostics(setup):
    _, score, _, xt, ts = setup
    rot = jnp.array([[0.0, 1.0], [-1.0, 0.0]], jnp.float32)

    def field(x, t):  # not a gradient: lambda of order 1, not float32 rounding noise
        return score(x, t) + rot @ score(x, t)

    ratio, _ = differential.asymmetry_sweep(field, xt, ts)
    ref = np.array([[asymmetry(jacobian(field, xt[j, i], ts[j])).ratio for j in range(2)]
                    for i in range(3)])  # fmt: skip
    # float32; the same operations, fused differently under jit: rounding-level differences
    np.testing.assert_allclose(ratio, ref, rtol=1e-5)
    assert isinstance(ratio, np.ndarray) and ratio.shape == (3, 2)


def test_host_check_names_the_first_non_finite_entry(setup):
    ctx, field, x0, xt, ts = setup

    def bad(x, t):  # non-finite at one sample only
        return jnp.where(x[0] == xt[1, 2, 0], jnp.nan, 1.0) * field(x, t)

    with pytest.raises(FloatingPointError, match="Jacobian asymmetry: 1 of 6 .* sample 2, level 1"):
        differential.asymmetry_sweep(bad, xt, ts)

    def bad_late(x, t):  # non-finite at the second level (loops never pass through xt itself)
        return jnp.where(t > 0.5, jnp.nan, 1.0) * field(x, t)

    with pytest.raises(FloatingPointError, match="loop circulation: 3 of 6 .* sample 0, level 1"):
        integral.circulation_sweep(ctx)(bad_late, x0, xt, ts, jax.random.key(1))
    finite = {"a": np.ones((2, 3)), "b": jnp.zeros(2)}
    out = require_finite(finite, "x")
    assert all(isinstance(a, np.ndarray) for a in jax.tree.leaves(out))
    with pytest.raises(FloatingPointError, match="x: 2 of 6 .* level 1, sample 0"):
        require_finite(np.array([[1.0, 2, 3], [np.inf, 1, np.nan]]), "x")


def test_oracle_circulation_is_rounding_level_in_the_compiled_sweep(setup):
    """Regression: without a check pinning the loops down, XLA fused their construction into
    each use and the copies rounded differently, so the loops no longer telescoped (at
    t = 0.001 the oracle's median pair-rotation |I| was 4e-7 and the noisy-copy one 1e-6 here,
    against ~5e-9 with the points computed once; float64: ~1e-16)."""
    ctx, field, *_ = setup
    ts = np.array([0.001, 0.5])
    x0, xt = clean_and_noised(ctx, "2d", ts, 3, jax.random.key(0))
    out = integral.circulation_program(ctx)(field, x0, xt, jnp.asarray(ts, jnp.float32),
                                            jax.random.key(1))  # fmt: skip
    for family in ("pair rotation", "noisy copies"):
        # |score| ~ 1e2 at t = 0.001; float32 rounding of the loop's 24-64 terms: ~1e-8
        assert np.median(np.asarray(out[family][0])[:, 0]) < 5e-8, family
