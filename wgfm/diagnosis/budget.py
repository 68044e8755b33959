"""Exact Jacobians or probe estimates: the choice claim 1 makes from a measured JVP time.

An exact ``D x D`` Jacobian costs ``D`` JVPs per sample, level and field; the probe path costs
``K`` JVPs (the ``K x K`` sub-Jacobian) and a JVP and a VJP per probe, whatever ``D``.
:func:`choose_jacobian` times the field's JVPs at the data's shape and takes the exact path when
``D x samples x levels x fields`` of them fit a budget in seconds: a threshold on ``D`` alone
would send a small network at ``D = 3072`` to probes and a huge one at ``D = 64`` to exact
Jacobians, whatever either costs.
"""

from __future__ import annotations

import dataclasses
import math
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from ..diagnostics.jacobian import JACOBIAN_CHUNK, sub_jacobian
from ..report import fmt
from ..typing import Field, Scalar

# The exact-or-probes modes: decide by the sizes (max_exact_dim, else the budget), or force.
JACOBIANS = ("auto", "exact", "probes")


@dataclasses.dataclass(frozen=True)
class JacobianChoice:
    """Whether claim 1 takes exact Jacobians, and why: ``chosen_by`` is ``"given"`` (the
    caller's ``exact=``), ``"max_exact_dim"`` (``dim <= max_exact_dim``) or ``"budget"``
    (``per_jvp_s x dim x count <= budget_s``, ``count`` the Jacobians per device).
    ``lower_bound``: ``per_jvp_s`` is a lower bound from one JVP (the timing stopped there
    because even it was over the budget), not the chunked measurement."""

    exact: bool
    chosen_by: str
    dim: int
    max_exact_dim: int | None = None
    per_jvp_s: float | None = None
    count: int | None = None
    budget_s: float | None = None
    lower_bound: bool = False

    @property
    def estimated_exact_s(self) -> float | None:
        """Seconds the exact Jacobians would take (budget choice only)."""
        if self.per_jvp_s is None or self.count is None:
            return None
        return self.per_jvp_s * self.dim * self.count

    def describe(self) -> str:
        """One line for the report header."""
        what = (
            f"exact {self.dim} x {self.dim} Jacobians"
            if self.exact
            else "probe estimates of the full-dimension ratio with their standard errors "
            "(sub-Jacobians as a certificate)"
        )
        if self.chosen_by == "given":
            return f"{what} (asked for)"
        if self.chosen_by == "max_exact_dim":
            sign = "<=" if self.exact else ">"
            return f"{what}: D = {self.dim} {sign} max_exact_dim = {self.max_exact_dim}"
        how = (
            "at least, half of one measured JVP with its primal" if self.lower_bound else "measured"
        )
        cost = (
            f"{self.dim} JVPs x {self.count} Jacobians (samples per device x levels x fields) x "
            f"{fmt(1e3 * (self.per_jvp_s or 0.0))} ms per JVP ({how}) = "
            f"{'at least ' if self.lower_bound else ''}{fmt(self.estimated_exact_s or 0.0)} s"
        )
        budget = f"the budget of {fmt(self.budget_s or 0)} s"
        if self.exact:
            return f"{what}: they take an estimated {cost}, within {budget}"
        return f"{what}: exact ones would take an estimated {cost}, over {budget}"

    def numbers(self) -> dict:
        """For results.json."""
        out = dataclasses.asdict(self)
        out["estimated_exact_s"] = self.estimated_exact_s
        out["description"] = self.describe()
        return out

    @classmethod
    def from_numbers(cls, numbers: dict) -> JacobianChoice:
        """The choice that :meth:`numbers` recorded (a sharded run's shared plan)."""
        return cls(**{f.name: numbers[f.name] for f in dataclasses.fields(cls)})


def time_jvp(
    field: Field, x: Array, t: Scalar, *, tangents: int = JACOBIAN_CHUNK, repeats: int = 3
) -> float:
    """Seconds per JVP of ``field`` at ``(x, t)``: one compiled call of ``tangents`` one-hot JVPs
    at one primal (a chunk of :func:`wgfm.diagnostics.jacobian`'s columns), timed after a
    warm-up call that compiles it, the median of ``repeats``, divided by ``tangents``. The primal
    evaluation is included, so this slightly overstates the per-column cost of a full
    Jacobian (one primal per ``D`` columns)."""
    x = jnp.asarray(x)
    k = max(1, min(int(tangents), int(x.size)))
    idx = jnp.arange(k)
    run = eqx.filter_jit(lambda f, y, s: sub_jacobian(f, y, s, idx, chunk_size=None, checked=False))
    jax.block_until_ready(run(field, x, t))  # compiles
    times = []
    for _ in range(max(1, int(repeats))):
        t0 = time.perf_counter()
        jax.block_until_ready(run(field, x, t))
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) / k


def choose_jacobian(
    field: Field,
    x: Array,
    t: Scalar,
    *,
    count: int,
    exact: bool | None = None,
    max_exact_dim: int | None = None,
    budget_s: float | None = None,
) -> JacobianChoice:
    """Exact Jacobians or probes for ``count`` Jacobians (per device) of ``field`` at points
    shaped like ``x``: ``exact`` if given; else by ``budget_s`` if given (timing the field with
    :func:`time_jvp` at ``(x, t)``); else ``D <= max_exact_dim``.

    The budget path first times one JVP with its primal (``t1``). A JVP of a network costs at
    least its primal (every linear layer's tangent is a product of the same size), so one
    Jacobian column, whose primal is shared by ``D`` columns, costs at least ``t1 / 2``; if
    ``t1 / 2 x D x count`` is over ``budget_s``, exact Jacobians cannot fit and the timing
    stops (``lower_bound=True``). Otherwise the chunked :func:`time_jvp` decides."""
    dim = int(np.prod(jnp.shape(x)))
    if exact is not None:
        return JacobianChoice(bool(exact), "given", dim)
    if budget_s is not None:
        if not (isinstance(budget_s, int | float) and math.isfinite(budget_s) and budget_s >= 0):
            raise ValueError(f"`budget_s` must be a finite number >= 0, got {budget_s!r}.")
        lower = time_jvp(field, x, t, tangents=1, repeats=1) / 2
        if lower * dim * int(count) > budget_s:
            return JacobianChoice(
                False, "budget", dim, None, lower, int(count), float(budget_s), lower_bound=True
            )
        per = time_jvp(field, x, t)
        fits = per * dim * int(count) <= budget_s
        return JacobianChoice(fits, "budget", dim, None, per, int(count), float(budget_s))
    if max_exact_dim is None:
        raise ValueError("one of `exact`, `budget_s` or `max_exact_dim` must be given.")
    return JacobianChoice(dim <= int(max_exact_dim), "max_exact_dim", dim, int(max_exact_dim))


@dataclasses.dataclass(frozen=True)
class JacobianPolicy:
    """Claim 1's exact-or-probes policy, every knob in one place.

    ``mode`` ``"exact"`` or ``"probes"`` forces the choice; ``"auto"`` takes exact Jacobians up
    to ``max_exact_dim`` coordinates, or, when that is None, when their cost from a measured JVP
    time fits ``budget_s`` seconds (:func:`choose_jacobian`). ``wgfm diagnose --jacobians`` is
    ``mode``; :class:`wgfm.diagnosis.DiagnoseSizes` holds all three."""

    mode: str = "auto"
    max_exact_dim: int | None = 64
    budget_s: float = 60.0

    def __post_init__(self):
        if self.mode not in JACOBIANS:
            raise ValueError(f"`mode` must be one of {', '.join(JACOBIANS)}, got {self.mode!r}.")

    def choose(self, field: Field, x: Array, t: Scalar, *, count: int) -> JacobianChoice:
        """The choice for ``count`` Jacobians (per device) of ``field`` at points shaped like
        ``x`` (one of them; timed at ``(x, t)`` on the budget path).

        Args:
            field: the field ``(x (*shape), t ()) -> (*shape)`` whose Jacobians are taken.
            x: one point, shape ``(*shape)``.
            t: its time, a scalar.
            count: Jacobians per device (samples per device x levels x fields).

        Returns:
            The :class:`JacobianChoice`, with why it was made.
        """
        exact = {"auto": None, "exact": True, "probes": False}[self.mode]
        by_dim = self.max_exact_dim is not None
        return choose_jacobian(
            field,
            x,
            t,
            count=count,
            exact=exact,
            max_exact_dim=self.max_exact_dim,
            budget_s=None if by_dim else self.budget_s,
        )
