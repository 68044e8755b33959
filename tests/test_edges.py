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
    score = fields.as_field(VP, _eps_model, src="eps", dst="score")
    x = jnp.ones(2)
    with pytest.raises(ValueError, match="`t`.*divides by sigma_t = 0"):
        score(x, 0.0)
    with pytest.raises(ValueError, match="`t` must be a scalar"):
        score(x, jnp.array([0.5, 0.6]))
    with pytest.raises(ValueError, match="`t` must be a scalar"):  # static: under jit too
        jax.jit(score)(x, jnp.array([0.5, 0.6]))
    with pytest.raises(ValueError, match="`field` must return"):
        fields.as_field(VP, lambda x, t: x[:1], src="eps", dst="score")(x, 0.5)
    assert np.all(np.isfinite(score(x, 0.5)))


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
    return transport.sample_ode(field, VP, key=jax.random.PRNGKey(0), num_samples=4, shape=(2,),
                                max_steps=256, strict=strict)  # fmt: skip


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
    [(dict(rtol=-1.0), "`rtol`"), (dict(atol=-1e-3), "`atol`"), (dict(max_steps=0), "`max_steps`"),
     (dict(rtol=float("nan")), "`rtol`")],
)  # fmt: skip
def test_sample_ode_checks_tolerances_and_max_steps(kw, named):
    with pytest.raises(ValueError, match=named):
        transport.sample_ode(V_TRUE, VP, key=jax.random.PRNGKey(0), num_samples=2, shape=(2,),
                             **kw)  # fmt: skip


def test_sample_ode_refuses_non_finite_starting_points():
    x = jnp.zeros((3, 2)).at[1, 0].set(jnp.nan)
    with pytest.raises(ValueError, match="`x_init` must be finite; sample 1"):
        transport.sample_ode(V_TRUE, VP, x)


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
