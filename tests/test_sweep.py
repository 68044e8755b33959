"""Tests for wgfm.diagnostics.sweep: compiled sweeps over samples x times."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wgfm.diagnostics.jacobian import asymmetry, jacobian, probe_asymmetry
from wgfm.diagnostics.sweep import noised_samples, sweep
from wgfm.processes import VP

PROC = VP()


@pytest.fixture(scope="module")
def data():
    m = jax.random.normal(jax.random.key(0), (3, 3))
    field = lambda x, t: jnp.tanh(m @ x) * (1 + t) - x  # noqa: E731  non-conservative
    ts = jnp.linspace(0.1, 1.0, 4)
    xs = jax.random.normal(jax.random.key(1), (4, 6, 3))
    return field, xs, ts


def test_sweep_matches_a_python_loop_and_numpy_quantiles(data):
    field, xs, ts = data
    res = sweep("lambda", field, xs, ts)
    one = jax.jit(lambda x, t: asymmetry(jacobian(field, x, t)).ratio)  # no vmap / lax.map
    loop = np.array([[float(one(x, t)) for x in xs[i]] for i, t in enumerate(ts)])
    np.testing.assert_allclose(res.values, loop, rtol=1e-12)
    np.testing.assert_allclose(res.mean, loop.mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(
        res.quantiles, np.quantile(loop, np.asarray(res.levels), axis=1), rtol=1e-12
    )
    assert res.values.shape == (4, 6) and res.quantiles.shape == (5, 4)
    for bs in (1, 4):  # samples in chunks (4 does not divide 6): the same numbers
        np.testing.assert_allclose(
            sweep("lambda", field, xs, ts, batch_size=bs).values, loop, rtol=1e-12
        )
    with pytest.raises(ValueError, match="batch_size"):
        sweep("lambda", field, xs, ts, batch_size=0)


def test_noised_samples_follow_the_marginal():
    x0 = jnp.zeros((4000, 1))
    ts = jnp.array([0.2, 0.9])
    xs = noised_samples(PROC, x0, ts, key=jax.random.key(3))
    # x_t | x0 = 0 ~ N(0, sigma_t^2): sample std within ~4 SE (1.1%) of sigma_t
    np.testing.assert_allclose(xs.std(axis=(1, 2)), PROC.sigma(ts), rtol=0.05)


def test_compiles_once_per_shape(data):
    field, xs, ts = data
    traces = []

    def counted(f, x, t):
        traces.append(1)
        return jnp.sum(f(x, t) ** 2)

    sweep(counted, field, xs, ts)
    sweep(counted, field, xs + 1.0, ts * 0.5)
    assert len(traces) == 1


def test_keyed_probe_diagnostic_is_unbiased(data):
    field, xs, ts = data
    probe = functools.partial(_probe_asym_sq, num_probes=64)
    est = sweep(probe, field, xs, ts, key=jax.random.key(4))
    exact = sweep(lambda f, x, t: asymmetry(jacobian(f, x, t)).asym_fro ** 2, field, xs, ts)
    # 24 points x 64 Rademacher probes: pooled relative error ~ a few %; 3 SE bound
    err = np.asarray(est.values - exact.values) / np.asarray(exact.values)
    assert abs(err.mean()) < 3 * err.std() / np.sqrt(err.size)


def _probe_asym_sq(f, x, t, *, key, num_probes):
    return probe_asymmetry(f, x, t, key=key, num_probes=num_probes).asym_sq


def test_bad_inputs_and_nonfinite_naming(data):
    field, xs, ts = data
    with pytest.raises(ValueError, match="diagnostic"):
        sweep("curl", field, xs, ts)
    with pytest.raises(ValueError, match="xs"):
        sweep("norm", field, xs[0], ts)
    bad_xs = xs.at[2, 3, 0].set(-1.0)
    # non-finite field values: the in-jit error is turned into one naming the input
    with pytest.raises(ValueError, match=r"`field` values .*time index 2 .*sample index 3"):
        sweep("divergence", lambda x, t: x / (x[0] + 1.0), bad_xs, ts)
    # a diagnostic that itself returns a non-finite value is named too
    with pytest.raises(ValueError, match=r"diagnostic values .*time index 2 .*sample index 3"):
        sweep(lambda f, x, t: 1.0 / (x[0] + 1.0), field, bad_xs, ts)


def test_progress_runs_level_by_level_with_the_same_values(data, capsys):
    field, xs, ts = data
    key = jax.random.key(5)
    probe = functools.partial(probe_asymmetry, num_probes=3)
    stats = lambda f, x, t, *, key: probe(f, x, t, key=key).stats.ratio  # noqa: E731
    for diag, kw in (("lambda", {}), (stats, {"key": key})):
        whole = sweep(diag, field, xs, ts, **kw)
        by_level = sweep(diag, field, xs, ts, progress="levels", **kw)
        # float64: one program per level instead of one for all; only fusion may differ.
        np.testing.assert_allclose(by_level.values, whole.values, rtol=1e-12)
        np.testing.assert_allclose(by_level.quantiles, whole.quantiles, rtol=1e-12)
    assert "levels" in capsys.readouterr().err  # the bar, labelled
    traces = []

    def counted(f, x, t):
        traces.append(1)
        return jnp.sum(f(x, t) ** 2)

    sweep(counted, field, xs, ts, progress="levels")
    assert len(traces) == 1  # every level reuses the single-level program
