"""Measurements shared by several claims: asymmetry, transport residual, sample quality."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array
from scipy import stats

from experiments.assets import Context
from wgfm import gmm, metrics
from wgfm.diagnosis import AbstractClaim, Controls
from wgfm.diagnostics import noised_samples, sweep, transport_residual
from wgfm.presets import MIXTURES
from wgfm.report import Measurement
from wgfm.transport import sample_ode


def measure_claim(
    ctx: Context, claim: AbstractClaim, data: str, *, keys: tuple[str, str], control_name: str
) -> Measurement:
    """``claim`` on the score of the network trained on ``data``, beside the exact gradient
    (:meth:`Context.oracle_score`) and the untrained network, at the run's sizes of ``data``.

    Args:
        ctx: the run's assets.
        claim: an entry of :data:`wgfm.diagnosis.CLAIMS`, with the options of this data set.
        data: a data set of the run (a mixture or an image set).
        keys: the names of the clean samples' key and of the measurement's (``ctx.key``).
        control_name: what the rows call the exact-gradient control.

    Returns:
        The claim's measurement, labelled ``data``.
    """
    image = data not in MIXTURES
    x_key, key = keys
    x0 = ctx.clean_samples(data, claim.num_samples(ctx.sizes.diagnosis(image)), ctx.key(x_key))
    return claim.measure(
        ctx.network(data).score(),
        ctx.process,
        x0,
        ctx.sizes.diagnosis(image, dim=x0[0].size),
        key=ctx.key(key),
        controls=Controls(
            gradient=ctx.oracle_score(data),
            untrained=ctx.network(data, steps=0).score(),
            control_name=control_name,
        ),
        label=data,
    )


def marginal_samples(ctx: Context, mixture: gmm.GaussianMixture, ts, n: int, key) -> jax.Array:
    """``(L, n, D)``: ``n`` exact samples of ``p_t`` at each level (``n`` draws of the data law,
    noised afresh at every level)."""
    k1, k2 = jax.random.split(key)
    x0 = mixture.sample(n, key=k1)
    return noised_samples(ctx.process, x0, jnp.asarray(ts, x0.dtype), key=k2)


def median_lambda(field, xs, ts) -> np.ndarray:
    """Median asymmetry ratio per level of ``field`` over samples ``xs`` ``(L, n, D)``."""
    res = sweep(
        "lambda", field, xs, jnp.asarray(ts, xs.dtype), checked=False, what="asymmetry ratios are"
    )
    return np.median(np.asarray(res.values), axis=1)


class Residual(eqx.Module):
    """``(R(x, t), d_t log p_t(x))``: the transport residual of a velocity field against the
    marginals ``logp`` (and ``dlogp``, its time derivative), with the scale of its terms."""

    logp: Callable[..., Array]
    dlogp: Callable[..., Array]

    def __call__(self, field, x, t, *, checked: bool = True):
        r = transport_residual(
            field, x, t, log_density=self.logp, dt_log_density=self.dlogp, checked=checked
        )
        return r, self.dlogp(x, t)  # type: ignore[operator]


def relative_residual(ctx: Context, velocity, mixture: gmm.GaussianMixture, xs, ts) -> np.ndarray:
    """Per level ``RMS_x R(x, t) / RMS_x d_t log p_t(x)``: the transport residual of
    ``velocity`` against the exact marginals, on the scale of the continuity equation's terms."""
    diag = Residual(
        gmm.log_density_field(mixture, ctx.process), gmm.dt_log_density_field(mixture, ctx.process)
    )
    res = sweep(
        diag, velocity, xs, jnp.asarray(ts, xs.dtype), checked=False, what="transport residuals are"
    )
    r, d = (np.asarray(v) for v in res.values)
    return np.sqrt(np.mean(r**2, 1)) / np.sqrt(np.mean(d**2, 1))


def sample_quality(ctx: Context, velocity, mixture: gmm.GaussianMixture, n: int, key) -> dict:
    """Probability-flow samples of ``velocity`` from ``n`` prior draws, with sliced W2 and MMD
    against ``n`` exact samples and the mean NFE."""
    k1, k2, k3 = jax.random.split(key, 3)
    res = sample_ode(
        velocity, ctx.process, key=k1, num_samples=n, shape=(mixture.dim,), rtol=1e-4, atol=1e-4
    )
    ref = mixture.sample(n, key=k2)
    x = res.samples
    return {
        "samples": np.asarray(x),
        "sw2": float(metrics.sliced_wasserstein(x, ref, key=k3)),
        "mmd": float(metrics.mmd(x, ref)),
        "nfe": float(np.mean(np.asarray(res.stats.nfe))),
    }


def floors(ctx: Context, mixture: gmm.GaussianMixture, n: int) -> dict:
    """Noise floors (mean + 3 std over 20 repeats) of sliced W2 and MMD at ``n`` samples: the
    values two independent exact sample sets reach (float32 MMD alone fluctuates by ~2e-3 at
    n = 1000, so a handful of repeats would understate the floor). Computed once per mixture and
    ``n`` in a run: several claims compare against the same floor."""
    digest = hashlib.sha1(b"".join(np.asarray(a).tobytes() for a in jax.tree.leaves(mixture)))
    name = f"floor-{digest.hexdigest()}-{n}"
    return dict(ctx.cached(name, lambda: _floors(ctx, mixture, n)))


def _floors(ctx: Context, mixture: gmm.GaussianMixture, n: int) -> dict:
    k1, k2 = jax.random.split(ctx.key(f"floor-{mixture.dim}-{n}"))
    sw = np.asarray(
        metrics.noise_floor(
            lambda a, b: metrics.sliced_wasserstein(a, b, key=k1),
            mixture.sample,
            n,
            key=k2,
            num_repeats=20,
        )
    )
    mm = np.asarray(metrics.noise_floor(metrics.mmd, mixture.sample, n, key=k2, num_repeats=20))
    return {"sw2": float(sw.mean() + 3 * sw.std()), "mmd": float(mm.mean() + 3 * mm.std())}


def spearman(a, b) -> float:
    """Spearman rank correlation: the Pearson correlation of the (tie-averaged) ranks."""
    ra, rb = stats.rankdata(np.asarray(a)), stats.rankdata(np.asarray(b))
    return float(np.corrcoef(ra, rb)[0, 1])
