"""Bad inputs at the public edge (issue #17): each gives an error of the right type naming the
argument, or an explicit flag, instead of a silent NaN/inf or a plausible wrong number."""

import io
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wgfm import data, fields, gmm, losses, metrics, processes, transport
from wgfm.diagnostics.residual import transport_residual

VP = processes.VP()
MIX = gmm.ring()
V_TRUE = gmm.velocity_field(MIX, VP)


def _eps_model(x, t):
    return jnp.zeros_like(x)


# --- times -------------------------------------------------------------------------------


def test_process_times_outside_the_schedule_are_refused():
    with pytest.raises(ValueError, match="`t` must lie in"):
        VP.sigma(-0.01)
    with pytest.raises(ValueError, match="`t` must lie in"):
        processes.OU().alpha(8.5)
    assert float(VP.sigma(0.0)) == 0.0  # the edge itself is defined
    # Traced times are not checked (the formula stays check-free in compiled code).
    assert np.isnan(jax.jit(VP.sigma)(-0.01))


def test_field_conversions_refuse_division_by_zero_and_vector_times():
    score = fields.as_field(VP, _eps_model, kind="eps", to="score")
    x = jnp.ones(2)
    with pytest.raises(ValueError, match="`t`.*divides by sigma_t = 0"):
        score(x, 0.0)
    with pytest.raises(ValueError, match="`t` must be a scalar"):
        score(x, jnp.array([0.5, 0.6]))
    with pytest.raises(ValueError, match="`t` must be a scalar"):  # static: under jit too
        jax.jit(score)(x, jnp.array([0.5, 0.6]))
    with pytest.raises(ValueError, match="`field` must return"):
        fields.as_field(VP, lambda x, t: x[:1], kind="eps", to="score")(x, 0.5)
    assert np.all(np.isfinite(score(x, 0.5)))


@pytest.mark.parametrize(
    "build",
    [gmm.score_field, gmm.velocity_field, gmm.log_density_field, gmm.dt_log_density_field],
)
def test_oracle_fields_refuse_a_vector_of_times(build):
    # Issue #25: a vector t used to broadcast against the sample into a plausible array.
    field = build(MIX, VP)
    x, ts = jnp.ones(2), jnp.array([0.3, 0.5])
    with pytest.raises(ValueError, match="`t` must be a scalar: one time per field call"):
        field(x, ts)
    with pytest.raises(ValueError, match="`t` must be a scalar"):  # static: under jit too
        jax.jit(lambda x, t: field(x, t))(x, ts)
    assert np.all(np.isfinite(field(x, 0.3)))


def test_conversions_and_model_fields_refuse_a_vector_of_times():
    from wgfm.models import get_model

    x, ts = jnp.ones(2), jnp.array([0.3, 0.5])
    for src, dst in (("score", "velocity"), ("eps", "eps")):  # the identity too
        with pytest.raises(ValueError, match="`t` must be a scalar: one time per field call"):
            fields.convert(VP, x, ts, x, kind=src, to=dst)
    with pytest.raises(ValueError, match="`t` must be a scalar"):
        fields.to_score(VP, x, ts, x, "eps")
    with pytest.raises(ValueError, match="`t` must be a scalar"):
        fields.from_score(VP, x, ts, x, "eps")
    model = get_model("mlp-small", kind="velocity", width=8)
    params = model.init(jax.random.key(0), (2,))
    field = model.velocity(params, VP)  # the model's own field (no conversion)
    with pytest.raises(ValueError, match="`t` must be a scalar: one time per field call"):
        field(x, ts)
    assert field(x, 0.3).shape == (2,)


@pytest.mark.parametrize("loss", [losses.dsm_loss, losses.eps_loss, losses.fm_loss])
def test_losses_check_time_and_shapes(loss):
    x0, eps = jnp.ones(2), jnp.ones(2)
    with pytest.raises(ValueError, match="`t` must lie in"):
        loss(_eps_model, VP, x0, 0.0, eps)
    with pytest.raises(ValueError, match="`eps` must have the shape"):
        loss(_eps_model, VP, x0, 0.5, jnp.ones(1))
    with pytest.raises(ValueError, match="`model` must return"):
        loss(lambda x, t: jnp.zeros(1), VP, x0, 0.5, eps)
    with pytest.raises(ValueError, match="`t` must be a scalar"):
        loss(_eps_model, VP, x0, jnp.array([0.5, 0.5]), eps)
    assert np.isfinite(loss(_eps_model, VP, x0, 0.5, eps))


# --- Gaussian mixtures, residual, metrics ------------------------------------------------


def test_mixture_validates_means_and_sample_count():
    with pytest.raises(ValueError, match="`means` must be finite"):
        gmm.GaussianMixture(jnp.array([0.5, 0.5]), jnp.array([[0.0, jnp.nan], [1.0, 1.0]]), 1.0)
    m = gmm.GaussianMixture(np.array([1, 0]), np.array([[0, 0], [1, 1]]), np.array([1, 1]))
    assert jnp.issubdtype(m.means.dtype, jnp.floating)
    np.testing.assert_allclose(m.weights, [1.0, 0.0])
    with pytest.raises(ValueError, match="`n` must be a non-negative integer"):
        MIX.sample(-5, key=jax.random.PRNGKey(0))


def test_transport_residual_needs_scalar_densities():
    lp = gmm.log_density_field(MIX, VP)
    dlp = gmm.dt_log_density_field(MIX, VP)
    x = jnp.ones(2)
    with pytest.raises(ValueError, match="`dt_log_density` must return a scalar"):
        transport_residual(V_TRUE, x, 0.5, log_density=lp, dt_log_density=lambda x, t: x)
    with pytest.raises(ValueError, match="`log_density` must return a scalar"):
        transport_residual(
            V_TRUE, x, 0.5, log_density=lambda x, t: lp(x, t)[None], dt_log_density=dlp
        )
    assert abs(float(transport_residual(V_TRUE, x, 0.5, log_density=lp, dt_log_density=dlp))) < 1e-6


def test_metrics_refuse_empty_and_meaningless_inputs():
    x = np.random.default_rng(0).normal(size=(20, 2))
    with pytest.raises(ValueError, match="`bandwidths`"):
        metrics.mmd(x, x + 1, bandwidths=())
    with pytest.raises(ValueError, match="`bandwidths`"):
        metrics.mmd(x, x + 1, bandwidths=(0.0,))
    for fn in (metrics.mode_weights, metrics.cross_entropy):
        with pytest.raises(ValueError, match=r"`x` must have shape \(n, 2\) with n >= 1"):
            fn(MIX, np.zeros((0, 2)))
    with pytest.raises(ValueError, match="`x` must be floating point"):
        metrics.sliced_wasserstein(x.astype(int), x, key=jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="`x` must be floating point"):
        metrics.cross_entropy(MIX, x.astype(int))
    assert float(metrics.mmd(x, x + 1)) > 0


# --- sample_ode ---------------------------------------------------------------------------


def _nan_window(x, t):
    return jnp.where((t > 0.4) & (t < 0.45), jnp.nan, 1.0) * V_TRUE(x, t)


def _solve(field, strict=True):
    return transport.sample_ode(
        field,
        VP,
        key=jax.random.PRNGKey(0),
        num_samples=4,
        shape=(2,),
        max_steps=256,
        strict=strict,
    )


def test_sample_ode_flags_a_non_finite_field_and_names_the_time():
    out = _solve(_nan_window, strict=False)
    assert not out.stats.converged and np.asarray(out.stats.num_nonfinite_steps) > 0
    a, b = np.asarray(out.stats.first_nonfinite_step)
    assert a > 0.4 and b < 0.45  # a step (going down) whose stages reached into the window
    with pytest.raises(RuntimeError, match=rf"non-finite .* from t={a:.6g} to t={b:.6g}"):
        _solve(_nan_window)
    # A NaN field fails fast (one step), not after max_steps with advice about tolerances.
    with pytest.raises(RuntimeError, match=r"non-finite .* from t=1 .*\(1 such steps\)"):
        _solve(lambda x, t: x * jnp.nan)
    good = _solve(V_TRUE)
    assert good.stats.converged and np.asarray(good.stats.num_nonfinite_steps) == 0
    assert np.all(np.isnan(np.asarray(good.stats.first_nonfinite_step)))


@pytest.mark.parametrize(
    "kw, named",
    [
        (dict(rtol=-1.0), "`rtol`"),
        (dict(atol=-1e-3), "`atol`"),
        (dict(max_steps=0), "`max_steps`"),
        (dict(rtol=float("nan")), "`rtol`"),
    ],
)
def test_sample_ode_checks_tolerances_and_max_steps(kw, named):
    with pytest.raises(ValueError, match=named):
        transport.sample_ode(V_TRUE, VP, key=jax.random.PRNGKey(0), num_samples=2, shape=(2,), **kw)


def test_sample_ode_refuses_non_finite_starting_points():
    x = jnp.zeros((3, 2)).at[1, 0].set(jnp.nan)
    with pytest.raises(ValueError, match="`x_init` must be finite; sample 1"):
        transport.sample_ode(V_TRUE, VP, x)


def test_prior_draws_start_only_at_t_max():
    # Issue #25: prior draws used to be started at any `t_start`, e.g. t_min.
    prior = dict(key=jax.random.PRNGKey(0), num_samples=2, shape=(2,))
    with pytest.raises(ValueError, match="`t_start`.*prior draws .* at t_max = 1.0 only"):
        transport.sample_ode(V_TRUE, VP, t_start=VP.t_min, t_end=VP.t_max, **prior)
    with pytest.raises(ValueError, match="`t_start`.*at t_max"):
        transport.sample_ode(V_TRUE, VP, t_start=0.5, **prior)
    with pytest.raises(ValueError, match="`t_start`.*at t_max"):
        transport.sample_fixed_step(V_TRUE, VP, num_steps=4, t_start=0.5, **prior)
    # Starting points given as `x_init` may start anywhere.
    x = MIX.marginal(VP, 0.5).sample(2, key=jax.random.PRNGKey(1))
    out = transport.sample_fixed_step(V_TRUE, VP, x, num_steps=4, t_start=0.5)
    assert out.samples.shape == (2, 2)


def test_check_helpers():
    from wgfm import _checks

    _checks.check_scalar_time(0.5)
    _checks.check_scalar_time(jnp.float32(0.5))
    with pytest.raises(ValueError, match="`s` must be a scalar"):
        _checks.check_scalar_time(jnp.zeros(1), "s")
    _checks.check_max_steps(np.int64(3))
    for bad in (0, 2.0, "3"):
        with pytest.raises(ValueError, match="`max_steps` must be an integer >= 1"):
            _checks.check_max_steps(bad)
    _checks.check_field_output(lambda x, t: x * t, jnp.ones(3), 0.5)
    with pytest.raises(ValueError, match=r"`field` must map one sample of shape \(3,\)"):
        _checks.check_field_output(lambda x, t: x[:2], jnp.ones(3), 0.5)
    with pytest.raises(ValueError, match="`field` could not be evaluated"):
        _checks.check_field_output(lambda x, t: x @ jnp.ones(4), jnp.ones(3), 0.5)
    key = jax.random.PRNGKey(0)
    x = _checks.starting_points(VP, None, key=key, num_samples=3, shape=(2,), t_start=VP.t_max)
    assert x.shape == (3, 2)
    with pytest.raises(ValueError, match="`t0`=0.5: prior draws"):
        _checks.starting_points(
            VP, None, key=key, num_samples=3, shape=(2,), t_start=0.5, name="t0"
        )
    with pytest.raises(ValueError, match="not both"):
        _checks.starting_points(VP, x, key=key, num_samples=3, shape=(2,))
    # Given points are the starting points, unchanged.
    given = _checks.starting_points(VP, x, key=None, num_samples=None, shape=(2,))
    np.testing.assert_array_equal(given, x)


# --- data readers ----------------------------------------------------------------------------


class _Evil:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))  # creates the file if it is ever called


def test_cifar_reader_refuses_arbitrary_pickled_objects(tmp_path):
    path = tmp_path / "data_batch_1"
    ran = tmp_path / "ran"
    path.write_bytes(pickle.dumps({b"data": _Evil(ran), b"labels": [0]}))
    with pytest.raises(ValueError, match="refusing to load global .*open"):
        data.read_cifar_batch(path)
    assert not ran.exists()
    # A genuine batch (protocol 2, as the original Python 2 files) still reads.
    flat = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072)
    for protocol in (2, 5):
        path.write_bytes(pickle.dumps({b"data": flat, b"labels": [3, 4]}, protocol=protocol))
        images, labels = data.read_cifar_batch(path)
        assert images.shape == (2, 32, 32, 3) and labels.tolist() == [3, 4]
    path.write_bytes(pickle.dumps({b"data": flat, b"labels": np.array([[3], [4]])}))
    with pytest.raises(ValueError, match=r"b'labels' must be 2 integers .*shape \(2, 1\)"):
        data.read_cifar_batch(path)


def test_idx_header_whose_sizes_overflow_is_refused(tmp_path):
    buf = io.BytesIO()
    buf.write(bytes([0, 0, 0x08, 4]))
    # Four dims of 2^16: their product 2^64 wraps to 0 in int64, matching an empty payload.
    buf.write(np.array([2**16] * 4, ">u4").tobytes())
    path = tmp_path / "bad-idx"
    path.write_bytes(buf.getvalue())
    with pytest.raises(ValueError, match="expected .* data bytes"):
        data.read_idx(path)
