"""Step-size controller wrappers of the probability-flow solves in :mod:`wgfm.transport`.

* :class:`FiniteWatch` counts the attempted steps that meet a non-finite value (and can stop
  the solve at the first).
* :class:`HairerStart` starts a ``PIDController`` solve at Hairer's initial step
  (:func:`initial_step`), clipped to the interval.
* :func:`with_tolerances` puts array tolerances back into a controller inside a compiled solve.
"""

from __future__ import annotations

from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

__all__ = ["FiniteWatch", "HairerStart", "initial_step", "with_tolerances"]


class FiniteWatch(diffrax.AbstractStepSizeController):
    """Wraps a step-size controller to count attempted steps whose candidate state or error
    estimate is non-finite (a non-finite field value at any stage makes them so), with the
    times of the first; ``fail_fast`` ends the solve there with ``RESULTS.nonfinite``. The
    controller sees rejected steps too, which the solver's own state forgets: an adaptive
    solver would otherwise step over a window where the field is NaN by rejecting steps."""

    inner: diffrax.AbstractStepSizeController
    fail_fast: bool = eqx.field(static=True)
    direction: Any = 1

    def wrap(self, direction):
        return FiniteWatch(self.inner.wrap(direction), self.fail_fast, direction)

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


class HairerStart(diffrax.AbstractStepSizeController):
    """Delegates to ``inner`` (a ``PIDController``), but starts the solve at the step of
    Hairer, Norsett & Wanner's algorithm (Sec. II.4) when no ``dt0`` is given.

    Why by hand: ``diffeqsolve`` wraps every term in a ``WrapTerm`` before it calls ``init``,
    and ``PIDController`` runs its copy of the algorithm only for a bare ``ODETerm``; otherwise
    it starts every solve at ``dt0 = 0.01``, and a short solve then spends steps growing it
    (benchmarks/README.md, "Solver default and the starting step"). Its copy would also probe
    the field outside the interval: near ``t_max`` a VP velocity is near zero, so the probe
    step ``0.01 |y| / |f|`` can exceed the interval and land where the field may be undefined.
    Here the probe and the step are clipped to the interval, as SciPy's
    ``select_initial_step`` does. Costs two field evaluations."""

    inner: diffrax.PIDController

    def wrap(self, direction):
        return HairerStart(self.inner.wrap(direction))

    def init(self, terms, t0, t1, y0, dt0, args, func, error_order):
        if dt0 is None:
            order = self.inner.error_order if self.inner.error_order is not None else error_order
            dt0 = initial_step(
                terms,
                t0,
                t1,
                y0,
                args,
                func,
                order,
                self.inner.rtol,
                self.inner.atol,
                self.inner.norm,
            )
        return self.inner.init(terms, t0, t1, y0, dt0, args, func, error_order)

    def adapt_step_size(self, t0, t1, y0, y1_candidate, args, y_error, error_order, state):
        return self.inner.adapt_step_size(
            t0, t1, y0, y1_candidate, args, y_error, error_order, state
        )


def initial_step(terms, t0, t1, y0, args, func, order, rtol, atol, norm) -> Array:
    """Hairer's starting step (Hairer, Norsett & Wanner, Sec. II.4) in the solve's (increasing)
    time, clipped to ``t1 - t0``: ``h0 = 0.01 d0/d1``, then
    ``h1 = (0.01 / max(d1, d2))^(1/order)`` and ``min(100 h0, h1)``, with ``d0 = |y0|``,
    ``d1 = |f(t0, y0)|``, ``d2 = |f(t0 + h0, y0 + h0 f0) - f0| / h0`` in the tolerance-scaled
    ``norm``. The two field evaluations run as a two-iteration scan, so the field is traced
    once (as in diffrax), which keeps a large network's compile time down."""
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


def with_tolerances(controller, tol: tuple[Array, Array] | None, dtype) -> Any:
    """``controller`` (a ``PIDController`` with placeholder tolerances) with ``tol = (rtol,
    atol)`` put back, in ``dtype`` (the controller's state follows the solve's state), and
    wrapped in :class:`HairerStart`; ``controller`` unchanged when ``tol`` is None (any other
    controller). The tolerances are arrays so that new values do not retrace the solve."""
    if tol is None:
        return controller
    tol = tuple(jnp.asarray(v, dtype) for v in tol)  # pyright: ignore[reportAssignmentType]
    return HairerStart(eqx.tree_at(lambda c: (c.rtol, c.atol), controller, tol))


def _all_finite(tree) -> Array:
    leaves = [jnp.all(jnp.isfinite(v)) for v in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)
