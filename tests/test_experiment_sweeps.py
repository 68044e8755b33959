"""The diagnosis kernels' sweeps (``wgfm.diagnostics.sweep`` with ``checked=False``): no host
callback in their programs (so that JAX's persistent cache keeps them and a rerun skips their
compilation), the same numbers as the checked diagnostics, and a clear error from the host check
when a field is non-finite."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import measures
from experiments.assets import Context
from experiments.config import ReproduceConfig
from wgfm import gmm
from wgfm.diagnosis import Controls, measure_asymmetry, measure_circulation
from wgfm.diagnostics import (
    DIAGNOSTICS,
    FAMILIES,
    Circulation,
    ExactAsymmetry,
    SubAndProbe,
    asymmetry,
    jacobian,
    noised_samples,
    require_finite,
    sweep,
)
from wgfm.diagnostics.sweep import _run


@pytest.fixture(scope="module")
def setup():
    ctx = Context(ReproduceConfig(quick=True, preset="mixtures"))
    ts = jnp.asarray([0.2, 0.6], jnp.float32)
    x0 = ctx.clean_samples("2d", 3, jax.random.key(0))
    xt = noised_samples(ctx.process, x0, ts, key=jax.random.key(2))
    return ctx, ctx.oracle_score("2d"), x0, xt, ts


def _circulation(ctx) -> Circulation:
    return Circulation(ctx.process, FAMILIES, 8, 20, 3, 8)


def _program_text(fn, *args) -> str:
    return str(eqx.filter_make_jaxpr(fn)(*args)[0])


def test_sweep_programs_hold_no_host_callback(setup):
    ctx, field, x0, xt, ts = setup
    v = gmm.velocity_field(ctx.mix2d, ctx.process)
    residual = measures.Residual(
        gmm.log_density_field(ctx.mix2d, ctx.process),
        gmm.dt_log_density_field(ctx.mix2d, ctx.process),
    )
    keys = jax.random.split(jax.random.key(1), 2)
    pairs = (jnp.broadcast_to(x0, xt.shape), xt)
    programs = {  # _run(diagnostic, field, xs, ts, keys, batch_size, checked) as sweep calls it
        "asymmetry": (ExactAsymmetry(), field, xt, ts, None, None, False),
        "large D": (SubAndProbe(2, 4), field, xt, ts, keys, 2, False),
        "circulation": (_circulation(ctx), field, pairs, ts, keys, None, False),
        "ratio": (DIAGNOSTICS["lambda"], field, xt, ts, None, None, False),
        "residual": (residual, v, xt, ts, None, None, False),
    }
    for name, args in programs.items():
        assert "callback" not in _program_text(_run, *args), name
    # the detection is not vacuous: the checked Jacobian's program has one
    checked = eqx.filter_jit(lambda f, x, t: jacobian(f, x, t))
    assert "callback" in _program_text(checked, field, xt[0, 0], ts[0])


def test_unchecked_sweeps_match_the_checked_diagnostics(setup):
    _, score, _, xt, ts = setup
    rot = jnp.array([[0.0, 1.0], [-1.0, 0.0]], jnp.float32)

    def field(x, t):  # not a gradient: lambda of order 1, not float32 rounding noise
        return score(x, t) + rot @ score(x, t)

    ratio, _ = sweep(ExactAsymmetry(), field, xt, ts, checked=False).values
    ref = np.array(
        [[asymmetry(jacobian(field, xt[j, i], ts[j])).ratio for i in range(3)] for j in range(2)]
    )
    # float32; the same operations, fused differently under jit: rounding-level differences
    np.testing.assert_allclose(ratio, ref, rtol=1e-5)
    assert ratio.shape == (2, 3)


def test_host_check_names_the_first_non_finite_entry(setup):
    ctx, field, x0, xt, ts = setup

    def bad(x, t):  # non-finite at one sample only
        return jnp.where(x[0] == xt[1, 2, 0], jnp.nan, 1.0) * field(x, t)

    with pytest.raises(ValueError, match=r"Jacobian .* time index 1 .*sample index 2.* 1 of 6"):
        sweep(ExactAsymmetry(), bad, xt, ts, checked=False, what="Jacobian asymmetry values are")

    def bad_late(x, t):  # non-finite at the second level (loops never pass through xt itself)
        return jnp.where(t > 0.5, jnp.nan, 1.0) * field(x, t)

    pairs = (jnp.broadcast_to(x0, xt.shape), xt)
    with pytest.raises(ValueError, match=r"loop circ.* time index 1 .*sample index 0.* 3 of 6"):
        sweep(
            _circulation(ctx),
            bad_late,
            pairs,
            ts,
            key=jax.random.key(1),
            checked=False,
            what="loop circulation values are",
        )
    finite = {"a": np.ones((2, 3)), "b": jnp.zeros((2, 1))}
    out = require_finite(finite, ts, "x")
    assert all(isinstance(a, np.ndarray) for a in jax.tree.leaves(out))
    with pytest.raises(ValueError, match=r"x non-finite at time index 1 .*sample index 0.* 2 of 6"):
        require_finite(np.array([[1.0, 2, 3], [np.inf, 1, np.nan]]), ts, "x")


def test_oracle_circulation_is_rounding_level_in_the_compiled_sweep(setup):
    """Regression: without a check pinning the loops down, XLA fused their construction into
    each use and the copies rounded differently, so the loops no longer telescoped (at
    t = 0.001 the oracle's median pair-rotation |I| was 4e-7 and the noisy-copy one 1e-6 here,
    against ~5e-9 with the points computed once; float64: ~1e-16)."""
    ctx, field, x0, *_ = setup
    ts = jnp.asarray([0.001, 0.5], jnp.float32)
    xt = noised_samples(ctx.process, x0, ts, key=jax.random.key(2))
    pairs = (jnp.broadcast_to(x0, xt.shape), xt)
    out = sweep(_circulation(ctx), field, pairs, ts, key=jax.random.key(1), checked=False).values
    for family in ("pair rotation", "noisy copies"):
        # |score| ~ 1e2 at t = 0.001; float32 rounding of the loop's 24-64 terms: ~1e-8
        assert np.median(np.asarray(out[family][0])[0]) < 5e-8, family


def test_measurements_take_any_field_with_or_without_controls(setup):
    ctx, field, x0, _, ts = setup
    rot = jnp.array([[0.0, 1.0], [-1.0, 0.0]], jnp.float32)

    def curl(x, t):  # the score plus a rotation: clearly not a gradient
        return field(x, t) + rot @ x

    key = jax.random.key(3)
    m = measure_asymmetry(
        curl, ctx.process, x0, np.asarray(ts), key=key, controls=Controls(field), label="toy"
    )
    assert [r.verdict for r in m.rows][0] and list(m.figures) == ["lambda_toy"]
    assert set(m.numbers["median_ratio"]) == {"trained", "oracle score"}
    m = measure_circulation(
        curl,
        ctx.process,
        x0,
        np.asarray(ts),
        key=key,
        label="toy",
        bridge_steps=20,
        noisy_copies=3,
        noisy_points=8,
        loop_points=8,
    )
    assert len(m.rows) == 4 and all(r.verdict for r in m.rows), m.rows
    assert "no gradient control" in m.rows[0].control and list(m.figures) == [
        "circulation_toy_bridge"
    ]
