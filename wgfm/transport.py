"""Transport of densities with diffrax: probability-flow sampling and likelihood (DESIGN.md §1).

Generation integrates ``dx/dt = v(x, t)`` (the WGF velocity) from ``t_max`` down to ``t_min``;
the likelihood integrates the same ODE forwards together with the instantaneous change of
variables ``d/dt log p_t(x_t) = -div v(x_t, t)``. Baseline samplers live in
:mod:`wgfm.samplers`.

**Batching.** A batch is solved as ``jax.vmap`` of single-sample diffrax solves
(``per_sample=True``): every sample gets its own adaptive step sizes, error
control and statistics (the per-sample adaptivity asked for in diffrax #500). Under ``vmap``
diffrax's ``while_loop`` runs in lockstep until the slowest sample finishes, masking finished
ones, so compute ~ ``max(nfe) * n`` while ``nfe`` reports each sample's own count.
``per_sample=False`` (the default) is one solve over the stacked batch: one step-size sequence chosen by
the RMS error over the whole batch (cheaper, but a hard sample shares - and can be
under-resolved by - the batch's steps); statistics are then scalars. It is the default because
on XLA:CPU (jax 0.10.2) the vmapped while-loop of large per-sample batches (2000 x 10-D
mixture oracle) was seen to hang in execution; per-sample solves of small batches are fine.

**Failures.** ``throw=False`` is passed to diffrax; each result carries diffrax's result code
and ``ok`` (successful *and* finite). ``strict=True`` (the default) additionally raises a
``RuntimeError`` when any sample hit ``max_steps``, failed otherwise, or produced non-finite
values: on the host after the solve (so the compiled solve holds no callback and JAX's
persistent cache can keep it), or, under the caller's own ``jit``, as ``equinox.error_if``
(``equinox.EquinoxRuntimeError``). ``strict=False`` returns the flagged result.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Int, PRNGKeyArray

from ._checks import concrete
from .fields import Quantity, as_field
from .processes import AbstractProcess

Field = Callable[..., Array]

__all__ = [
    "LikelihoodResult",
    "SampleResult",
    "bits_per_dim",
    "count_nfe",
    "dequantize",
    "log_likelihood",
    "sample_fixed_step",
    "sample_ode",
]


class SolveStats(eqx.Module):
    """Solver statistics (per sample under ``per_sample=True``)."""

    nfe: Int[Array, "..."]
    num_steps: Int[Array, "..."]
    num_accepted_steps: Int[Array, "..."]
    num_rejected_steps: Int[Array, "..."]
    result: Int[Array, "..."]
    """diffrax result code (``diffrax.RESULTS``; 0 = successful)."""
    ok: Array
    """Successful and finite (and no non-finite field value met on the way, where counted)."""
    num_nonfinite_steps: Int[Array, "..."] | None = None
    """Attempted steps (accepted or rejected) in which the field or the state was non-finite
    (:func:`sample_ode`; ``None`` where not counted)."""
    first_nonfinite_step: Array | None = None
    """``(t0, t1)`` of the first such step (NaN if none): the field was non-finite between."""

    @property
    def converged(self) -> bool:
        """Whether every solve succeeded (concrete values only)."""
        return bool(np.all(np.asarray(self.ok)))

    def messages(self) -> list[str]:
        """Distinct diffrax messages of the result codes."""
        codes = sorted(set(np.asarray(self.result).reshape(-1).tolist()))
        return [_RESULT_MESSAGES.get(c, f"diffrax result {c}") for c in codes]


class SampleResult(eqx.Module):
    """``samples`` at the final time, optional ``trajectory`` at ``save_times`` and statistics."""

    samples: Array
    trajectory: Array | None
    save_times: Array | None
    stats: SolveStats

    @property
    def ok(self) -> Array:
        return self.stats.ok


class LikelihoodResult(eqx.Module):
    """``log_likelihood = prior_log_density(latents) + delta_log_density`` and statistics."""

    log_likelihood: Array
    prior_log_density: Array
    delta_log_density: Array
    latents: Array
    stats: SolveStats

    @property
    def ok(self) -> Array:
        return self.stats.ok


_RESULT_MESSAGES = {
    int(getattr(diffrax.RESULTS, name)._value): diffrax.RESULTS[getattr(diffrax.RESULTS, name)]
    for name in (
        "successful",
        "max_steps_reached",
        "singular",
        "breakdown",
        "dt_min_reached",
        "nonfinite",
    )
    if hasattr(diffrax.RESULTS, name)
}


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
    kind: Quantity = "velocity",
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
    ``ValueError`` for a non-finite concrete ``x_init``, negative ``rtol``/``atol`` or
    ``max_steps < 1``."""
    _check_max_steps(max_steps)
    x = _starting_points(process, x_init, key=key, num_samples=num_samples, shape=shape)
    t_start, t_end = _times(process, t_start, process.t_max, t_end, process.t_min, x.dtype)
    velocity = as_field(process, field, src=kind, dst="velocity")
    ts = _save_times(save_times, t_start, t_end)
    solver, controller, adjoint, tol = _defaults(solver, stepsize_controller, adjoint, rtol, atol)
    dt0 = None if dt0 is None else jnp.asarray(dt0)
    res = _sample_jit(
        velocity, x, t_start, t_end, ts, tol, dt0, solver, controller, adjoint,
        int(max_steps), per_sample, strict,
    )  # fmt: skip
    return _strict(res, strict)


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
        field, process, x_init, solver=solver or diffrax.Euler(),
        stepsize_controller=diffrax.StepTo(ts), max_steps=int(num_steps),
        t_start=t_start, t_end=t_end, **kwargs,
    )  # fmt: skip


def log_likelihood(
    field: Field,
    process: AbstractProcess,
    x: ArrayLike,
    *,
    kind: Quantity = "velocity",
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
    _check_max_steps(max_steps)
    x = jnp.asarray(x)
    if x.ndim < 2:
        raise ValueError(f"`x` must be a batch of shape (n, *shape), got shape {x.shape}.")
    t_start, t_end = _times(process, t_start, process.t_min, t_end, process.t_max, x.dtype)
    velocity = as_field(process, field, src=kind, dst="velocity")
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
    solver, controller, adjoint, tol = _defaults(solver, stepsize_controller, adjoint, rtol, atol)
    res = _likelihood_jit(
        velocity, prior, x, probes, t_start, t_end, tol, solver, controller, adjoint,
        max_steps, chunk_size, per_sample,
    )  # fmt: skip
    return _strict(res, strict)


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
    # With dt0=None the PID controller's initial-step heuristic evaluates the field twice, in
    # wgfm's solves (see _HairerStart; a bare diffeqsolve skips it). Checked against a host
    # callback counter in tests/test_transport.py.
    heuristic = isinstance(stepsize_controller, diffrax.PIDController) and not dt0_given
    return init + (2 if heuristic else 0) + per_step * num_steps


def dequantize(
    x: ArrayLike, *, key: PRNGKeyArray, num_bins: int = 256, low: float = -1.0, high: float = 1.0
) -> Array:
    """Uniform dequantisation of integer data ``x in {0..num_bins-1}``:
    ``y = low + (high - low) (x + u) / num_bins``, ``u ~ U[0, 1)`` (Theis et al. 2016). Feed
    ``y`` to :func:`log_likelihood`, then :func:`bits_per_dim` with the same constants."""
    x = jnp.asarray(x)
    u = jax.random.uniform(key, x.shape, dtype=jnp.result_type(float))
    return low + (high - low) * (x + u) / num_bins


def bits_per_dim(
    log_likelihood: ArrayLike,
    num_dims: int,
    *,
    num_bins: int = 256,
    low: float = -1.0,
    high: float = 1.0,
) -> Array:
    """Bits per dimension of 8-bit data from the log-density of its dequantised version in
    ``[low, high]``: ``bpd = -(log p(y) + D log((high - low)/num_bins)) / (D log 2)``. The
    Jacobian term maps the density back to ``[0, num_bins)^D`` (unit bins), so the result
    upper-bounds the discrete code length; omitting it gives the negative bits/dim users meet
    (score_sde #24)."""
    ll = jnp.asarray(log_likelihood)
    log_jac = num_dims * np.log((high - low) / num_bins)
    return -(ll + log_jac) / (num_dims * np.log(2.0))


# ---------------------------------------------------------------------------------------------
# Compiled cores.


def _sample_impl(
    velocity, x, t_start, t_end, ts, tol, dt0, solver, controller, adjoint,
    max_steps, per_sample, fail_fast,
):  # fmt: skip
    _check_field_output(velocity, x[0], t_start)  # at trace time only: free on later calls
    watch = _FiniteWatch(_with_tol(controller, tol, x.dtype), fail_fast)
    saveat = diffrax.SaveAt(t1=True, controller_state=True)
    if ts is not None:
        saveat = diffrax.SaveAt(ts=ts, t1=True, controller_state=True)
    term = diffrax.ODETerm(lambda t, y, args: args(y, t).astype(y.dtype))

    def solve(y0, vf):
        return diffrax.diffeqsolve(
            term, solver, t_start, t_end, dt0, y0, args=vf, saveat=saveat,
            stepsize_controller=watch, adjoint=adjoint, max_steps=max_steps, throw=False,
        )  # fmt: skip

    if per_sample:
        sol = jax.vmap(solve, in_axes=(0, None))(x, velocity)
        ys: Any = sol.ys  # (n, len(ts) + 1, *shape)
        samples, traj = ys[:, -1], (None if ts is None else ys[:, :-1])
    else:
        sol = solve(x, jax.vmap(velocity, in_axes=(0, None)))
        ys: Any = sol.ys  # (len(ts) + 1, n, *shape)
        samples, traj = ys[-1], (None if ts is None else jnp.moveaxis(ys[:-1], 0, 1))
    finite = jnp.all(jnp.isfinite(samples.reshape(samples.shape[0], -1)), axis=1)
    stats = _stats(sol, solver, controller, dt0 is not None, finite if per_sample else finite.all())
    _, count, first = sol.controller_state  # type: ignore[misc]
    stats = eqx.tree_at(
        lambda s: (s.ok, s.num_nonfinite_steps, s.first_nonfinite_step),
        stats,
        (stats.ok & (count == 0), count, first),
        is_leaf=lambda v: v is None,
    )
    return SampleResult(samples, traj, ts, stats)


class _FiniteWatch(diffrax.AbstractStepSizeController):
    """Wraps a step-size controller to count attempted steps whose candidate state or error
    estimate is non-finite (a non-finite field value at any stage makes them so), with the
    times of the first; ``fail_fast`` ends the solve there with ``RESULTS.nonfinite``. The
    controller sees rejected steps too, which the solver's own state forgets."""

    inner: diffrax.AbstractStepSizeController
    fail_fast: bool = eqx.field(static=True)
    direction: Any = 1

    def wrap(self, direction):
        return _FiniteWatch(self.inner.wrap(direction), self.fail_fast, direction)

    def init(self, terms, t0, t1, y0, dt0, args, func, error_order):
        tnext, state = self.inner.init(terms, t0, t1, y0, dt0, args, func, error_order)
        dtype = jnp.result_type(t0, t1)
        first = jnp.full((2,), jnp.nan, dtype)
        return tnext, (state, jnp.zeros((), jnp.int32), first)

    def adapt_step_size(self, t0, t1, y0, y1_candidate, args, y_error, error_order, state):
        inner_state, count, first = state
        bad = ~_all_finite(y1_candidate)
        if y_error is not None:
            bad = bad | ~_all_finite(y_error)
        keep, tprev, tnext, jump, inner_state, result = self.inner.adapt_step_size(
            t0, t1, y0, y1_candidate, args, y_error, error_order, inner_state
        )
        times = jnp.stack([t0, t1]).astype(first.dtype) * self.direction  # diffrax flips time
        first = jnp.where(bad & (count == 0), times, first)
        count = count + bad.astype(count.dtype)
        if self.fail_fast:
            nonfinite = diffrax.RESULTS.nonfinite  # pyright: ignore[reportAttributeAccessIssue]
            result = diffrax.RESULTS.where(bad, nonfinite, result)  # pyright: ignore[reportArgumentType]
        return keep, tprev, tnext, jump, (inner_state, count, first), result


class _HairerStart(diffrax.AbstractStepSizeController):
    """Delegates to ``inner`` (a ``PIDController``), but starts the solve at the step of
    Hairer, Norsett & Wanner's algorithm (Sec. II.4) when no ``dt0`` is given.

    Why by hand: ``diffeqsolve`` (diffrax 0.7.2) wraps every term in a ``WrapTerm`` before it
    calls ``init``, and ``PIDController`` runs its copy of the algorithm only for an
    ``ODETerm``: otherwise it starts every solve at ``dt0 = 0.01``, and a solve the heuristic
    would start at 0.07 spends two extra steps growing it (benchmarks/compare_peer_sampling.py).
    Its copy would also probe the field outside the interval: at ``t_max`` a VP velocity is
    near zero, so the probe step ``0.01 |y| / |f|`` exceeds the interval (3.2 on the 2-D ring)
    and lands where the field may be undefined. Here the probe and the step are clipped to the
    interval, as SciPy's ``select_initial_step`` does. Costs two field evaluations."""

    inner: diffrax.PIDController

    def wrap(self, direction):
        return _HairerStart(self.inner.wrap(direction))

    def init(self, terms, t0, t1, y0, dt0, args, func, error_order):
        if dt0 is None:
            order = self.inner.error_order if self.inner.error_order is not None else error_order
            dt0 = _initial_step(
                terms, t0, t1, y0, args, func, order, self.inner.rtol, self.inner.atol,
                self.inner.norm,
            )  # fmt: skip
        return self.inner.init(terms, t0, t1, y0, dt0, args, func, error_order)

    def adapt_step_size(self, t0, t1, y0, y1_candidate, args, y_error, error_order, state):
        return self.inner.adapt_step_size(
            t0, t1, y0, y1_candidate, args, y_error, error_order, state
        )


def _initial_step(terms, t0, t1, y0, args, func, order, rtol, atol, norm) -> Array:
    """Hairer's starting step in the solve's (increasing) time, clipped to ``t1 - t0``. The two
    field evaluations run as a two-iteration scan, so the field is traced once (as in diffrax),
    which keeps a large network's compile time down."""
    span = jnp.asarray(t1 - t0)
    scale = jax.tree.map(lambda y: atol + jnp.abs(y) * rtol, y0)

    def ratio(tree):
        return norm(jax.tree.map(lambda a, s: (a / s).astype(s.dtype), tree, scale))

    d0 = ratio(y0)
    # dy/ds in the solve's time: diffrax's WrapTerm puts the time direction in the control.
    unit = terms.contr(t0, t0 + jnp.ones_like(span))

    def rate(t, y):
        return terms.prod(func(terms, t, y, args), unit)

    f_spec = jax.eval_shape(lambda: rate(t0, y0))
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), f_spec)

    def body(carry, first):
        t, y, h0, f0 = carry
        f = rate(t, y)
        d1 = ratio(f)  # meaningful on the first pass, where f = f(t0, y0)
        small = (d0 < 1e-5) | (d1 < 1e-5)
        h = jnp.where(small, 1e-6, 0.01 * d0 / jnp.where(small, 1.0, d1))
        h0 = jnp.where(first, jnp.minimum(h, span).astype(span.dtype), h0)
        f0 = jax.tree.map(lambda a, b: jnp.where(first, a, b), f, f0)
        y = jax.tree.map(lambda a, b: (a + h0 * b).astype(a.dtype), y0, f0)
        return (t0 + h0, y, h0, f0), f

    init = (jnp.asarray(t0, span.dtype), y0, jnp.zeros((), span.dtype), zeros)
    (_, _, h0, f0), fs = jax.lax.scan(body, init, jnp.array([True, False]))
    f1 = jax.tree.map(lambda a: a[1], fs)
    d1 = ratio(f0)
    d2 = ratio(jax.tree.map(jnp.subtract, f1, f0)) / h0
    max_d = jnp.maximum(d1, d2)
    h1 = jnp.where(
        max_d <= 1e-15,
        jnp.maximum(1e-6, h0 * 1e-3),
        (0.01 / jnp.where(max_d <= 1e-15, 1.0, max_d)) ** (1.0 / order),
    )
    dt0 = jnp.minimum(jnp.minimum(100 * h0, h1), span).astype(span.dtype)
    # A non-finite field at the probe leaves diffrax's own start.
    return jax.lax.stop_gradient(jnp.where(jnp.isfinite(dt0) & (dt0 > 0), dt0, 0.01))


def _all_finite(tree) -> Array:
    leaves = [jnp.all(jnp.isfinite(v)) for v in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def _likelihood_impl(
    velocity, prior, x, probes, t_start, t_end, tol, solver, controller, adjoint,
    max_steps, chunk_size, per_sample,
):  # fmt: skip
    from .diagnostics.jacobian import exact_trace, probe_trace

    _check_field_output(velocity, x[0], t_start)  # at trace time only: free on later calls
    stepping = _with_tol(controller, tol, x.dtype)  # `controller` as given counts the NFE

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
        return diffrax.diffeqsolve(
            diffrax.ODETerm(vf), solver, t_start, t_end, None, y0, args=p,
            stepsize_controller=stepping, adjoint=adjoint, max_steps=max_steps, throw=False,
        )  # fmt: skip

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
    stats = _stats(sol, solver, controller, False, finite if per_sample else finite.all())
    return LikelihoodResult(ll, prior_lp, delta, latents, stats)


_sample_jit = eqx.filter_jit(_sample_impl)
_likelihood_jit = eqx.filter_jit(_likelihood_impl)


# ---------------------------------------------------------------------------------------------
# Helpers.


def _stats(sol, solver, controller, dt0_given, finite) -> SolveStats:
    st = sol.stats
    code = sol.result._value
    return SolveStats(
        nfe=count_nfe(solver, controller, st["num_steps"], dt0_given=dt0_given),
        num_steps=st["num_steps"],
        num_accepted_steps=st["num_accepted_steps"],
        num_rejected_steps=st["num_rejected_steps"],
        result=code,
        ok=(code == diffrax.RESULTS.successful._value) & finite,
    )


_MAX_STEPS_MSG = (
    "wgfm.transport: the solve hit `max_steps` before reaching the final time; raise "
    "`max_steps`, loosen rtol/atol, or pass strict=False to get the flagged result."
)
_FAILED_MSG = (
    "wgfm.transport: diffrax reported a failed solve (see SolveStats.result); pass "
    "strict=False to get the flagged result."
)
_NONFINITE_MSG = (
    "wgfm.transport: the solve produced non-finite values (check the field near t_min); "
    "pass strict=False to get the flagged result."
)


_FIELD_NONFINITE_MSG = (
    "wgfm.transport: the field or the state became non-finite (inf/nan) during the solve{where}; "
    "check the field (and `x_init`) there, or pass strict=False to get the flagged result."
)


def _first_nonfinite(stats: SolveStats) -> str:
    """Where the first sample that met a non-finite value met it (host only)."""
    first = np.asarray(stats.first_nonfinite_step).reshape(-1, 2)
    first = first[~np.isnan(first[:, 0])]
    if not len(first):
        return ""
    n = int(np.sum(np.asarray(stats.num_nonfinite_steps)))
    return f" in the step from t={first[0, 0]:.6g} to t={first[0, 1]:.6g} ({n} such steps)"


def _check_max_steps(max_steps) -> None:
    if not isinstance(max_steps, (int, np.integer)) or max_steps < 1:
        raise ValueError(f"`max_steps` must be an integer >= 1, got {max_steps!r}.")


def _strict(res, strict: bool):
    """``res`` (a result with ``.stats``) after the strict checks: raises ``RuntimeError`` if any
    sample hit ``max_steps``, failed otherwise or is non-finite. The checks run on the host,
    after the compiled solve, so that the solve holds no host callback (JAX's persistent cache
    does not keep programs with callbacks: every run would compile it anew); under the caller's
    own trace (``jit``, ``vmap``) they become ``equinox.error_if`` around the traced result."""
    if not strict:
        return res
    code, ok = res.stats.result, res.stats.ok  # ok = successful & finite
    traced = concrete(code) is None  # inside the caller's jit/vmap
    xp = jnp if traced else np
    count = res.stats.num_nonfinite_steps
    if count is not None:
        if traced:
            res = eqx.error_if(res, jnp.any(count > 0), _FIELD_NONFINITE_MSG.format(where=""))
        elif np.any(np.asarray(count) > 0):
            raise RuntimeError(_FIELD_NONFINITE_MSG.format(where=_first_nonfinite(res.stats)))
    failures = (
        (xp.any(code == diffrax.RESULTS.max_steps_reached._value), _MAX_STEPS_MSG),
        (xp.any(code != diffrax.RESULTS.successful._value), _FAILED_MSG),
        (~xp.all(ok), _NONFINITE_MSG),
    )
    for bad, msg in failures:
        if traced:
            res = eqx.error_if(res, bad, msg)
        elif bad:
            raise RuntimeError(msg)
    return res


def _defaults(solver, controller, adjoint, rtol, atol):
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
    return solver, controller, adjoint, tol


def _with_tol(controller, tol, dtype):
    if tol is None:
        return controller
    tol = tuple(jnp.asarray(v, dtype) for v in tol)  # the controller state follows the state dtype
    return _HairerStart(eqx.tree_at(lambda c: (c.rtol, c.atol), controller, tol))


def _starting_points(process, x_init, *, key, num_samples, shape) -> Array:
    if x_init is not None:
        if key is not None or num_samples is not None:
            raise ValueError("Pass either `x_init` or (`key`, `num_samples`, `shape`), not both.")
        x = jnp.asarray(x_init)
        if x.ndim < 2:
            raise ValueError(f"`x_init` must be a batch of shape (n, *shape), got shape {x.shape}.")
        xc = concrete(x)
        if xc is not None and not np.all(np.isfinite(xc)):
            bad = int(np.argwhere((~np.isfinite(xc.reshape(len(xc), -1))).any(axis=1))[0, 0])
            raise ValueError(f"`x_init` must be finite; sample {bad} is not.")
        if shape is not None and tuple(x.shape[1:]) != tuple(shape):
            raise ValueError(f"`x_init` must have shape (n, *{tuple(shape)}), got {x.shape}.")
        return x
    if key is None or num_samples is None or shape is None:
        raise ValueError("Give `x_init`, or all of `key`, `num_samples` and `shape`.")
    if int(num_samples) < 1:
        raise ValueError(f"`num_samples` must be a positive integer, got {num_samples!r}.")
    return process.prior_sample((int(num_samples), *shape), key=key)


def _check_field_output(field, x_one, t) -> None:
    """Trace the field once on one sample: wrong shapes fail here with a clear message."""
    try:
        out = jax.eval_shape(field, x_one, jnp.asarray(t, x_one.dtype))
    except Exception as err:  # re-raised with the argument named
        raise ValueError(
            f"`field` could not be evaluated on one sample of shape {x_one.shape}: {err}"
        ) from err
    if getattr(out, "shape", None) != x_one.shape:
        raise ValueError(
            f"`field` must map one sample of shape {x_one.shape} to the same shape, got "
            f"{getattr(out, 'shape', out)}; the starting points do not match the field."
        )


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
