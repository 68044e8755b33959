"""Transport of densities with diffrax: probability-flow sampling and likelihood (docs/design.md).

Generation integrates ``dx/dt = v(x, t)`` (the WGF velocity) from ``t_max`` down to ``t_min``;
the likelihood integrates the same ODE forwards together with the instantaneous change of
variables ``d/dt log p_t(x_t) = -div v(x_t, t)``. Baseline samplers live in
:mod:`wgfm.samplers`; the result types in :mod:`wgfm.results`; the step-size controller
wrappers in :mod:`wgfm.controllers`.

**Batching.** ``per_sample=False`` (the default) is one solve over the stacked batch: one
step-size sequence chosen by the RMS error over the whole batch (cheaper, but a hard sample
shares - and can be under-resolved by - the batch's steps); statistics are then scalars.
``per_sample=True`` solves the batch as ``jax.vmap`` of single-sample diffrax solves: every
sample gets its own adaptive step sizes, error control and statistics (the per-sample
adaptivity asked for in diffrax #500). Under ``vmap`` diffrax's ``while_loop`` runs in
lockstep until the slowest sample finishes, masking finished ones, so compute ~
``max(nfe) * n`` while ``nfe`` reports each sample's own count. The joint solve is the default
because on XLA:CPU the vmapped while-loop of large per-sample batches can hang in execution
(docs/xla_cpu.md); per-sample solves of small batches are fine.

**Failures.** ``throw=False`` is passed to diffrax; each result carries diffrax's result code
and ``ok`` (successful *and* finite). ``strict=True`` (the default) additionally raises a
``RuntimeError`` when any sample hit ``max_steps``, failed otherwise, or produced non-finite
values (:func:`wgfm.results.check_solve`). ``strict=False`` returns the flagged result.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, PRNGKeyArray

from ._checks import check_field_output, check_max_steps, concrete, starting_points
from .controllers import FiniteWatch, with_tolerances
from .fields import as_field
from .processes import AbstractProcess
from .results import LikelihoodResult, SampleResult, SolveStats, check_solve
from .typing import Field, Kind

__all__ = [
    "LikelihoodResult",
    "SampleResult",
    "SolveStats",
    "count_nfe",
    "log_likelihood",
    "sample_fixed_step",
    "sample_ode",
]


# ---------------------------------------------------------------------------------------------
# Public entry points.


def sample_ode(
    field: Field,
    process: AbstractProcess,
    x_init: ArrayLike | None = None,
    *,
    key: PRNGKeyArray | None = None,
    num_samples: int | None = None,
    shape: tuple[int, ...] | None = None,
    kind: Kind = "velocity",
    solver: diffrax.AbstractSolver | None = None,
    stepsize_controller: diffrax.AbstractStepSizeController | None = None,
    adjoint: diffrax.AbstractAdjoint | None = None,
    rtol: ArrayLike | None = None,
    atol: ArrayLike | None = None,
    dt0: ArrayLike | None = None,
    max_steps: int = 4096,
    save_times: ArrayLike | None = None,
    t_start: ArrayLike | None = None,
    t_end: ArrayLike | None = None,
    per_sample: bool = False,
    strict: bool = True,
) -> SampleResult:
    """Integrate the probability-flow ODE ``dx/dt = v(x, t)`` from ``t_max`` to ``t_min``.

    Starting points: ``x_init`` of shape ``(n, *shape)``, or ``num_samples`` prior draws of
    shape ``shape`` from ``key``. ``field`` predicts ``kind`` (converted to the WGF velocity
    with :func:`wgfm.fields.as_field`). Defaults: ``Dopri5`` with ``PIDController`` at
    ``rtol = atol = 1e-5``, the first step chosen by Hairer's heuristic; ``rtol``/``atol``
    (arrays, no recompile) override the controller's.
    ``save_times`` (decreasing, in ``[t_end, t_start]``) returns the trajectory there.

    Every attempted step, rejected ones included, is watched for non-finite values of the
    field (``SolveStats.num_nonfinite_steps``, ``first_nonfinite_step``): an adaptive solver
    would otherwise step over a window where the field is NaN by rejecting steps. With
    ``strict`` the solve stops at the first one (diffrax ``RESULTS.nonfinite``) and raises,
    naming the times; without, it goes on and the sample is flagged (``ok = False``).
    ``ValueError`` for a non-finite concrete ``x_init``, negative ``rtol``/``atol``,
    ``max_steps < 1``, or prior draws (``key``, ``num_samples``) with a ``t_start`` other than
    ``t_max``: the prior is the law at ``t_max`` only."""
    check_max_steps(max_steps)
    x = starting_points(
        process, x_init, key=key, num_samples=num_samples, shape=shape, t_start=t_start
    )
    t_start, t_end = _times(process, t_start, process.t_max, t_end, process.t_min, x.dtype)
    velocity = as_field(process, field, kind=kind, to="velocity")
    ts = _save_times(save_times, t_start, t_end)
    solve = _solver(solver, stepsize_controller, adjoint, rtol, atol, max_steps)
    dt0 = None if dt0 is None else jnp.asarray(dt0)
    res = _sample_jit(velocity, x, t_start, t_end, ts, dt0, solve, per_sample, strict)
    return check_solve(res, strict)


def sample_fixed_step(
    field: Field,
    process: AbstractProcess,
    x_init: ArrayLike | None = None,
    *,
    num_steps: int,
    solver: diffrax.AbstractSolver | None = None,
    **kwargs: Any,
) -> SampleResult:
    """Fixed-step probability-flow sampling: ``num_steps`` uniform steps of ``solver``
    (default ``diffrax.Euler()``; pass ``diffrax.Heun()`` for Heun) via ``diffrax.StepTo``."""
    if int(num_steps) < 1:
        raise ValueError(f"`num_steps` must be a positive integer, got {num_steps!r}.")
    t_start = kwargs.pop("t_start", process.t_max)
    t_end = kwargs.pop("t_end", process.t_min)
    ts = jnp.linspace(jnp.asarray(t_start, float), jnp.asarray(t_end, float), int(num_steps) + 1)
    return sample_ode(
        field,
        process,
        x_init,
        solver=solver or diffrax.Euler(),
        stepsize_controller=diffrax.StepTo(ts),
        max_steps=int(num_steps),
        t_start=t_start,
        t_end=t_end,
        **kwargs,
    )


def log_likelihood(
    field: Field,
    process: AbstractProcess,
    x: ArrayLike,
    *,
    kind: Kind = "velocity",
    num_probes: int | None = None,
    probe_kind: Literal["rademacher", "gaussian"] = "rademacher",
    key: PRNGKeyArray | None = None,
    chunk_size: int | None = None,
    prior_log_density: Callable[[Array], Array] | None = None,
    solver: diffrax.AbstractSolver | None = None,
    stepsize_controller: diffrax.AbstractStepSizeController | None = None,
    adjoint: diffrax.AbstractAdjoint | None = None,
    rtol: ArrayLike | None = None,
    atol: ArrayLike | None = None,
    max_steps: int = 4096,
    t_start: ArrayLike | None = None,
    t_end: ArrayLike | None = None,
    per_sample: bool = False,
    strict: bool = True,
) -> LikelihoodResult:
    """``log p_{t_start}(x)`` for a batch ``x`` by the instantaneous change of variables:
    ``log p_{t0}(x) = log p_T(x_T) + int_{t0}^{T} div v(x_t, t) dt`` (FFJORD / Song et al.).

    Divergence: exact (``num_probes=None``; forward mode, ``chunk_size`` JVPs at a time) or
    Hutchinson with ``num_probes`` probes of ``probe_kind`` ("rademacher" or "gaussian") drawn
    once per solve from ``key`` and averaged. ``prior_log_density`` (one sample -> scalar)
    defaults to the process prior. Differentiable through ``adjoint``."""
    check_max_steps(max_steps)
    x = jnp.asarray(x)
    if x.ndim < 2:
        raise ValueError(f"`x` must be a batch of shape (n, *shape), got shape {x.shape}.")
    t_start, t_end = _times(process, t_start, process.t_min, t_end, process.t_max, x.dtype)
    velocity = as_field(process, field, kind=kind, to="velocity")
    probes = None
    if num_probes is not None:
        if int(num_probes) < 1:
            raise ValueError(f"`num_probes` must be a positive integer, got {num_probes!r}.")
        if key is None:
            raise ValueError("`key` is required for Hutchinson divergence (`num_probes` given).")
        from .diagnostics.jacobian import make_probes

        keys = jax.random.split(key, x.shape[0])
        probes = jax.vmap(
            lambda k: make_probes(k, int(num_probes), x.shape[1:], kind=probe_kind, dtype=x.dtype)
        )(keys)
    prior = prior_log_density or process.prior_log_density
    solve = _solver(solver, stepsize_controller, adjoint, rtol, atol, max_steps)
    res = _likelihood_jit(velocity, prior, x, probes, t_start, t_end, solve, chunk_size, per_sample)
    return check_solve(res, strict)


def count_nfe(
    solver: diffrax.AbstractSolver,
    stepsize_controller: diffrax.AbstractStepSizeController,
    num_steps: ArrayLike,
    *,
    dt0_given: bool = False,
) -> Array:
    """Vector-field evaluations of a wgfm solve from its step count (diffrax does not count
    them): Runge–Kutta stages per step (one fewer for FSAL tableaux, plus one initial
    evaluation), plus two for the initial step size when a ``PIDController`` chooses it
    (``dt0_given=False``). Checked against a host-side evaluation counter in the tests (Tsit5
    and Dopri5 + PID, with and without ``dt0``; Heun and Euler with fixed steps)."""
    num_steps = jnp.asarray(num_steps)
    tableau = getattr(solver, "tableau", None)
    if tableau is not None:
        stages = len(tableau.c) + 1
        per_step, init = (stages - 1, 1) if tableau.fsal else (stages, 0)
    elif isinstance(solver, diffrax.Euler):
        per_step, init = 1, 0
    else:
        raise ValueError(f"count_nfe: unsupported solver {type(solver).__name__}.")
    # With dt0=None the initial-step heuristic evaluates the field twice in wgfm's solves
    # (wgfm.controllers.HairerStart; a bare diffeqsolve skips it). Checked against a host
    # callback counter in tests/test_transport.py.
    heuristic = isinstance(stepsize_controller, diffrax.PIDController) and not dt0_given
    return init + (2 if heuristic else 0) + per_step * num_steps


# ---------------------------------------------------------------------------------------------
# Compiled cores.


def _sample_impl(velocity, x, t_start, t_end, ts, dt0, spec: _Solver, per_sample, fail_fast):
    check_field_output(velocity, x[0], t_start)  # at trace time only: free on later calls
    watch = FiniteWatch(spec.stepping(x.dtype), fail_fast)
    saveat = diffrax.SaveAt(t1=True, controller_state=True)
    if ts is not None:
        saveat = diffrax.SaveAt(ts=ts, t1=True, controller_state=True)
    term = diffrax.ODETerm(lambda t, y, args: args(y, t).astype(y.dtype))

    def solve(y0, vf):
        return spec.solve(term, t_start, t_end, dt0, y0, vf, saveat=saveat, controller=watch)

    if per_sample:
        sol = jax.vmap(solve, in_axes=(0, None))(x, velocity)
        ys: Any = sol.ys  # (n, len(ts) + 1, *shape)
        samples, traj = ys[:, -1], (None if ts is None else ys[:, :-1])
    else:
        sol = solve(x, jax.vmap(velocity, in_axes=(0, None)))
        ys: Any = sol.ys  # (len(ts) + 1, n, *shape)
        samples, traj = ys[-1], (None if ts is None else jnp.moveaxis(ys[:-1], 0, 1))
    finite = jnp.all(jnp.isfinite(samples.reshape(samples.shape[0], -1)), axis=1)
    stats = spec.stats(sol, dt0 is not None, finite if per_sample else finite.all())
    _, count, first = sol.controller_state  # type: ignore[misc]
    stats = eqx.tree_at(
        lambda s: (s.ok, s.num_nonfinite_steps, s.first_nonfinite_step),
        stats,
        (stats.ok & (count == 0), count, first),
        is_leaf=lambda v: v is None,
    )
    return SampleResult(samples, traj, ts, stats)


def _likelihood_impl(
    velocity, prior, x, probes, t_start, t_end, spec: _Solver, chunk_size, per_sample
):
    from .diagnostics.jacobian import exact_trace, probe_trace

    check_field_output(velocity, x[0], t_start)  # at trace time only: free on later calls
    stepping = spec.stepping(x.dtype)

    def vf_one(t, y, p):
        xi, _ = y
        # One linearisation gives both v and div v; the solve's result is checked for
        # non-finite values once at the end, not on every evaluation.
        if p is None:
            div, v = exact_trace(velocity, xi, t, chunk_size=chunk_size)
        else:
            div, v = probe_trace(velocity, xi, t, p)
        # Cast to the state's dtype: diffrax needs a dtype-stable state (float32 solves with x64).
        return v.reshape(xi.shape).astype(xi.dtype), div.astype(xi.dtype)

    def vf_batch(t, y, p):
        return jax.vmap(vf_one, in_axes=(None, 0, None if p is None else 0))(t, y, p)

    def solve(y0, p, vf):
        return spec.solve(diffrax.ODETerm(vf), t_start, t_end, None, y0, p, controller=stepping)

    zero = jnp.zeros(x.shape[:1], dtype=x.dtype)
    if per_sample:
        sol = jax.vmap(solve, in_axes=(0, None if probes is None else 0, None))(
            (x, zero), probes, vf_one
        )
    else:
        sol = solve((x, zero), probes, vf_batch)
    # SaveAt(t1=True): one saved time, on axis 1 under vmap and axis 0 for the joint solve.
    ys: Any = sol.ys
    latents, delta = (ys[0][:, -1], ys[1][:, -1]) if per_sample else (ys[0][-1], ys[1][-1])
    prior_lp = jax.vmap(prior)(latents)
    ll = prior_lp + delta
    finite = jnp.isfinite(ll) & jnp.all(jnp.isfinite(latents.reshape(x.shape[0], -1)), axis=1)
    stats = spec.stats(sol, False, finite if per_sample else finite.all())
    return LikelihoodResult(ll, prior_lp, delta, latents, stats)


_sample_jit = eqx.filter_jit(_sample_impl)
_likelihood_jit = eqx.filter_jit(_likelihood_impl)


# ---------------------------------------------------------------------------------------------
# Helpers.


class _Solver(eqx.Module):
    """How a solve steps: its solver, step-size controller (the tolerances of a
    ``PIDController`` kept apart as arrays, so new values do not recompile), adjoint and step
    limit. One diffrax call for sampling and likelihood alike (``throw=False``: the result
    carries diffrax's code)."""

    solver: diffrax.AbstractSolver
    controller: diffrax.AbstractStepSizeController  # as given: it counts the NFE
    adjoint: diffrax.AbstractAdjoint
    tol: tuple[Array, Array] | None
    max_steps: int = eqx.field(static=True)

    def stepping(self, dtype) -> diffrax.AbstractStepSizeController:
        """The controller with the tolerances put back, in ``dtype``."""
        return with_tolerances(self.controller, self.tol, dtype)

    def solve(self, term, t0, t1, dt0, y0, args, *, controller, saveat=None) -> diffrax.Solution:
        return diffrax.diffeqsolve(
            term,
            self.solver,
            t0,
            t1,
            dt0,
            y0,
            args=args,
            saveat=diffrax.SaveAt(t1=True) if saveat is None else saveat,
            stepsize_controller=controller,
            adjoint=self.adjoint,
            max_steps=self.max_steps,
            throw=False,
        )

    def stats(self, sol, dt0_given: bool, finite) -> SolveStats:
        """The :class:`SolveStats` of ``sol`` (``finite``: whether its values are)."""
        st = sol.stats
        code = sol.result._value
        return SolveStats(
            nfe=count_nfe(self.solver, self.controller, st["num_steps"], dt0_given=dt0_given),
            num_steps=st["num_steps"],
            num_accepted_steps=st["num_accepted_steps"],
            num_rejected_steps=st["num_rejected_steps"],
            result=code,
            ok=(code == diffrax.RESULTS.successful._value) & finite,
        )


def _solver(solver, controller, adjoint, rtol, atol, max_steps: int) -> _Solver:
    # Dopri5 by measurement (the work-precision rows of compare_peer_sampling): at equal final
    # error it needs fewer NFE than Tsit5 on MLP velocity fields and about as many on the GMM
    # oracle; it is also torchdiffeq's and SciPy's (RK45) pair, so NFE compare directly.
    solver = diffrax.Dopri5() if solver is None else solver
    controller = diffrax.PIDController(rtol=1e-5, atol=1e-5) if controller is None else controller
    adjoint = diffrax.RecursiveCheckpointAdjoint() if adjoint is None else adjoint
    for name, obj, base in (
        ("solver", solver, diffrax.AbstractSolver),
        ("stepsize_controller", controller, diffrax.AbstractStepSizeController),
        ("adjoint", adjoint, diffrax.AbstractAdjoint),
    ):
        if not isinstance(obj, base):
            raise ValueError(f"`{name}` must be a diffrax {base.__name__}, got {obj!r}.")
    tol = None
    if isinstance(controller, diffrax.PIDController):
        r = controller.rtol if rtol is None else rtol
        a = controller.atol if atol is None else atol
        for name, v in (("rtol", r), ("atol", a)):
            c = concrete(v)
            if c is not None and not np.all(np.isfinite(c) & (c >= 0)):
                raise ValueError(f"`{name}` must be finite and >= 0, got {v!r}.")
        tol = (jnp.asarray(r, float), jnp.asarray(a, float))
        # Placeholders: the array tolerances are put back inside the compiled function, so
        # new values do not retrace (python floats in the controller would be static).
        controller = eqx.tree_at(lambda c: (c.rtol, c.atol), controller, (0.0, 0.0))
    elif rtol is not None or atol is not None:
        raise ValueError("`rtol`/`atol` apply only to a diffrax.PIDController.")
    return _Solver(solver, controller, adjoint, tol, int(max_steps))


def _times(process, t_start, default_start, t_end, default_end, dtype):
    t_start = default_start if t_start is None else t_start
    t_end = default_end if t_end is None else t_end
    process.check_time(t_start, "t_start")
    process.check_time(t_end, "t_end")
    if float(t_start) == float(t_end):
        raise ValueError(f"`t_start` and `t_end` must differ, got {t_start}.")
    # Times in the state's dtype, so float32 solves stay float32 with x64 enabled.
    dtype = dtype if jnp.issubdtype(dtype, jnp.floating) else jnp.result_type(float)
    return jnp.asarray(t_start, dtype), jnp.asarray(t_end, dtype)


def _save_times(save_times, t_start, t_end):
    if save_times is None:
        return None
    ts = jnp.asarray(save_times, t_start.dtype).reshape(-1)
    v, lo, hi = np.asarray(ts), float(min(t_start, t_end)), float(max(t_start, t_end))
    step = np.diff(v) * np.sign(float(t_end - t_start))
    if np.any(v < lo) or np.any(v > hi) or np.any(step < 0):
        raise ValueError(
            f"`save_times` must be ordered from t_start={float(t_start)} to "
            f"t_end={float(t_end)} and lie between them, got {v}."
        )
    return ts
