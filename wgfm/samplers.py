"""Baseline samplers to compare with probability-flow transport: the reverse-time SDE and DDIM.

* :func:`sample_sde` — ``dx = [f(x, t) - g(t)^2 s(x, t)] dt + g(t) dW`` integrated from
  ``t_max`` down to ``t_min`` (Anderson 1982; Song et al. 2021, eq. 6) by Euler–Maruyama through
  diffrax with a ``VirtualBrownianTree`` (one independent tree per sample).
* :func:`sample_ddim` — DDIM (Song, Meng & Ermon 2021, eq. 12) with its ``eta`` variant on the
  discrete DDPM schedule of a VPSigmoid/VPCosine process (``wgfm.processes.discrete_schedule``).

Fixed-step Euler/Heun on the probability-flow ODE is :func:`wgfm.transport.sample_fixed_step`.
"""

from __future__ import annotations

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax
from jaxtyping import Array, ArrayLike, PRNGKeyArray

from ._checks import check_field_output, starting_points
from .fields import as_field
from .processes import AbstractProcess, DiscreteVP, VPCosine, VPSigmoid, discrete_schedule
from .results import SampleResult, SolveStats, check_solve
from .typing import Field, Kind

__all__ = ["sample_ddim", "sample_sde"]


def sample_sde(
    field: Field,
    process: AbstractProcess,
    x_init: ArrayLike | None = None,
    *,
    key: PRNGKeyArray,
    num_samples: int | None = None,
    shape: tuple[int, ...] | None = None,
    kind: Kind = "velocity",
    num_steps: int = 1000,
    solver: diffrax.AbstractSolver | None = None,
    strict: bool = True,
) -> SampleResult:
    """Reverse-time SDE sampling with ``num_steps`` uniform steps (default solver
    ``diffrax.Euler()``, i.e. Euler–Maruyama). ``key`` drives the Brownian motion (and the prior
    draws when ``x_init`` is None). ``nfe`` counts drift evaluations (one per step)."""
    if not process.has_sde:
        raise ValueError(f"`process` {type(process).__name__} has no SDE; use sample_ode.")
    if int(num_steps) < 1:
        raise ValueError(f"`num_steps` must be a positive integer, got {num_steps!r}.")
    if key is None:
        raise ValueError("`key` is required: it drives the Brownian motion.")
    x, k_bm = _start(process, x_init, key, num_samples, shape)
    score = as_field(process, field, kind=kind, to="score")
    keys = jax.random.split(k_bm, x.shape[0])
    solver = solver or diffrax.Euler()
    return check_solve(_sde_jit(score, process, x, keys, int(num_steps), solver), strict)


@eqx.filter_jit
def _sde_jit(score, process, x, keys, num_steps, solver):
    t1, t0 = jnp.asarray(process.t_max, float), jnp.asarray(process.t_min, float)
    check_field_output(score, x[0], t1)  # at trace time only: free on later calls
    dt = (t0 - t1) / num_steps

    def drift(t, y, args):
        return process.drift(y, t) - process.g2(t) * score(y, t)

    def diffusion(t, y, args):
        return lineax.DiagonalLinearOperator(jnp.broadcast_to(process.diffusion(t), y.shape))

    def solve(y0, k):
        # The tree is defined on [t_min, t_max]; diffrax flips time for t0 > t1 and draws the
        # increment W(t_n) - W(t_n + dt), a valid Brownian increment of variance |dt|.
        bm = diffrax.VirtualBrownianTree(t0, t1, tol=jnp.abs(dt) / 4, shape=y0.shape, key=k)
        terms = diffrax.MultiTerm(diffrax.ODETerm(drift), diffrax.ControlTerm(diffusion, bm))
        return diffrax.diffeqsolve(
            terms, solver, t1, t0, dt, y0, max_steps=num_steps + 1, throw=False
        )

    sol = jax.vmap(solve)(x, keys)
    samples = sol.ys[:, -1]  # type: ignore[index]
    finite = jnp.all(jnp.isfinite(samples.reshape(samples.shape[0], -1)), axis=1)
    code = sol.result._value
    stats = SolveStats(
        nfe=sol.stats["num_steps"],
        num_steps=sol.stats["num_steps"],
        num_accepted_steps=sol.stats["num_accepted_steps"],
        num_rejected_steps=sol.stats["num_rejected_steps"],
        result=jnp.asarray(code),
        ok=(code == diffrax.RESULTS.successful._value) & finite,
    )
    return SampleResult(samples, None, None, stats)


def sample_ddim(
    field: Field,
    process: VPSigmoid | VPCosine | DiscreteVP,
    x_init: ArrayLike | None = None,
    *,
    key: PRNGKeyArray | None = None,
    num_samples: int | None = None,
    shape: tuple[int, ...] | None = None,
    kind: Kind = "velocity",
    num_steps: int = 50,
    num_train_steps: int = 1000,
    eta: float = 0.0,
    strict: bool = True,
) -> SampleResult:
    """DDIM on the discrete schedule ``(t_k, alphabar_k)`` of ``process``, visiting the steps
    ``k = (S-1-j) (K//S)`` down to 0 (S = ``num_steps``; ``K//S`` spacing as in DDIM-50 of the
    paper's authors, so ``t = 1`` is never evaluated). With ``eps`` the field's prediction and
    ``x0 = (x - sqrt(1 - ab) eps) / sqrt(ab)``:
    ``x' = sqrt(ab') x0 + sqrt(1 - ab' - s^2) eps + s z``,
    ``s = eta sqrt((1 - ab')/(1 - ab)) sqrt(1 - ab/ab')``. The last step returns ``x0``.
    ``eta > 0`` needs ``key`` (the prior is drawn from ``key`` too when ``x_init`` is None)."""
    if not isinstance(process, VPSigmoid | VPCosine | DiscreteVP):
        raise ValueError(
            f"`process` must be VPSigmoid, VPCosine or DiscreteVP, got {type(process).__name__}."
        )
    if not 1 <= int(num_steps) <= int(num_train_steps):
        raise ValueError(f"`num_steps` must be in [1, num_train_steps], got {num_steps!r}.")
    if eta < 0:
        raise ValueError(f"`eta` must be >= 0, got {eta!r}.")
    if eta > 0 and key is None:
        raise ValueError("`key` is required when `eta > 0`.")
    x, k_noise = _start(process, x_init, key, num_samples, shape)
    t_grid, ab_grid = discrete_schedule(process, int(num_train_steps))
    stride = int(num_train_steps) // int(num_steps)
    idx = (stride * jnp.arange(int(num_steps)))[::-1]
    ts, ab = jnp.asarray(t_grid)[idx], jnp.asarray(ab_grid)[idx]
    ab_next = jnp.concatenate([ab[1:], jnp.ones((1,), ab.dtype)])
    eps_field = as_field(process, field, kind=kind, to="eps")
    eta_arr = jnp.asarray(eta, float)
    return check_solve(_ddim_jit(eps_field, x, ts, ab, ab_next, eta_arr, k_noise), strict)


def _start(process, x_init, key, num_samples, shape) -> tuple[Array, PRNGKeyArray]:
    """The starting batch (:func:`wgfm._checks.starting_points`) and the key of the sampler's
    own noise: ``key`` splits into the prior's draws (used when ``x_init`` is None) and the
    noise's (a fixed key without ``key``, for a noiseless sampler)."""
    k_prior, k_noise = jax.random.split(key) if key is not None else (None, jax.random.key(0))
    x = starting_points(
        process,
        x_init,
        key=None if x_init is not None else k_prior,
        num_samples=num_samples,
        shape=shape,
    )
    return x, k_noise


@eqx.filter_jit
def _ddim_jit(eps_field, x, ts, ab, ab_next, eta, key):
    check_field_output(eps_field, x[0], ts[0])  # at trace time only: free on later calls

    def step(y, inp):
        t, a, a_next, k = inp
        # The schedule is float64 under x64; the state's dtype must survive the scan.
        a, a_next, eta_y = a.astype(y.dtype), a_next.astype(y.dtype), eta.astype(y.dtype)
        eps = jax.vmap(eps_field, in_axes=(0, None))(y, t.astype(y.dtype))
        x0 = (y - jnp.sqrt(1 - a) * eps) / jnp.sqrt(a)
        s = eta_y * jnp.sqrt((1 - a_next) / (1 - a)) * jnp.sqrt(1 - a / a_next)
        noise = jax.random.normal(k, y.shape, y.dtype)
        y_next = jnp.sqrt(a_next) * x0 + jnp.sqrt(jnp.maximum(1 - a_next - s**2, 0.0)) * eps
        return y_next + s * noise, None

    keys = jax.random.split(key, ts.shape[0])
    samples, _ = jax.lax.scan(step, x, (ts, ab, ab_next, keys))
    n = x.shape[0]
    finite = jnp.all(jnp.isfinite(samples.reshape(n, -1)), axis=1)
    steps = jnp.full((n,), ts.shape[0])
    zero = jnp.zeros((n,), steps.dtype)
    stats = SolveStats(steps, steps, steps, zero, zero, finite)
    return SampleResult(samples, None, None, stats)
