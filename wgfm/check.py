"""``wgfm check``: verify the core's identities on an exact Gaussian mixture, for every process.

For each process and a grid of times it reports, over points drawn from the exact marginal:
the continuity-equation residual ``d_t log p_t + div v_t + v_t . grad log p_t`` of the oracle WGF
velocity (autodiff divergence, closed-form ``d_t log p_t``), the closed-form score against
``jax.grad`` of the log-density, and the score -> eps -> x0 -> velocity -> score round trip.
All in float64; each should be at rounding level.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from . import fields, gmm
from .diagnostics.residual import transport_residual
from .processes import ALL_PROCESSES, AbstractProcess

# Pass thresholds, relative (the rows' scales). Float64 rounding puts the score and the
# conversion cycle at a few 1e-16 in any dimension; the residual sums D second derivatives of
# the log-density, so its rounding grows with D (up to 2e-12 in 2-10D and 2e-11 in 50D over all
# processes). The thresholds sit 50-1000x above: an identity off by 1e-9 (the residual) or 1e-12
# (the others) fails.
TOLERANCES = {"residual": 1e-9, "score_error": 1e-12, "roundtrip_error": 1e-12}


@dataclasses.dataclass(frozen=True)
class CheckRow:
    process: str
    residual: float  # max |R| / max(1, |d_t log p|)
    score_error: float  # max relative error, closed form vs autodiff
    roundtrip_error: float  # max error of the conversion cycle, relative to its conditioning
    passed: bool


def _mixture(dim: int, key) -> gmm.GaussianMixture:
    if dim == 2:
        return gmm.ring(num_modes=8, radius=4.0, std=0.5, dtype=jnp.float64)
    return gmm.random_mixture(dim, 4, key=key)


def check_process(
    name: str, process: AbstractProcess, mixture: gmm.GaussianMixture, num_points: int, key
) -> CheckRow:
    """Evaluate the three identities on ``num_points`` points at 6 times in [t_min, t_max]."""
    ts = np.geomspace(process.t_min, process.t_max, 6)
    v = gmm.velocity_field(mixture, process)
    logp = gmm.log_density_field(mixture, process)
    dlogp = gmm.dt_log_density_field(mixture, process)
    score = gmm.score_field(mixture, process)

    def per_point(x, t):
        r = transport_residual(v, x, t, log_density=logp, dt_log_density=dlogp)
        scale = 1.0 + jnp.abs(dlogp(x, t))
        s = score(x, t)
        s_ad = jax.grad(logp)(x, t)
        s_err = jnp.max(jnp.abs(s - s_ad)) / (1.0 + jnp.max(jnp.abs(s)))
        y = s
        for src, dst in [
            ("score", "eps"),
            ("eps", "x0"),
            ("x0", "velocity"),
            ("velocity", "score"),
        ]:
            y = fields.convert(process, x, t, y, kind=src, to=dst)  # type: ignore[arg-type]
        # The x0 step loses digits like |x| / (sigma^2 |s|): measure on that scale.
        scale_rt = 1.0 + jnp.max(jnp.abs(s)) + jnp.max(jnp.abs(x)) / process.sigma(t) ** 2
        rt = jnp.max(jnp.abs(y - s)) / scale_rt
        return jnp.abs(r) / scale, s_err, rt

    @jax.jit
    def at_time(t, key):
        xs = mixture.marginal(process, t).sample(num_points, key=key)
        return jax.vmap(per_point, in_axes=(0, None))(xs, t)

    worst = np.zeros(3)
    for i, t in enumerate(ts):
        out = at_time(jnp.float64(t), jax.random.fold_in(key, i))
        worst = np.maximum(worst, [float(jnp.max(o)) for o in out])
    passed = bool(
        np.all(worst < [TOLERANCES[k] for k in ("residual", "score_error", "roundtrip_error")])
    )
    return CheckRow(name, float(worst[0]), float(worst[1]), float(worst[2]), passed)


def run_check(dim: int = 2, num_points: int = 64, seed: int = 0) -> list[CheckRow]:
    """Run :func:`check_process` for every process in ``ALL_PROCESSES`` (float64)."""
    for name, value in (("num_points", num_points), ("dim", dim)):
        if int(value) < 1:
            raise ValueError(f"`{name}` must be a positive integer, got {value}.")
    key = jax.random.key(seed)
    with jax.enable_x64(True):
        mixture = _mixture(dim, key)
        return [
            check_process(name, cls(), mixture, num_points, jax.random.fold_in(key, i))
            for i, (name, cls) in enumerate(ALL_PROCESSES.items())
        ]
