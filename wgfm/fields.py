"""Closed-form conversions between score, eps, x0 and the WGF velocity (docs/design.md).

For ``x_t = alpha_t x0 + sigma_t eps`` (Tweedie):

* ``score = -eps / sigma_t``  and  ``score = -(x - alpha_t x0) / sigma_t^2``;
* WGF velocity ``v = f(x, t) - g(t)^2/2 score = a_t x + b_t score`` with
  ``a_t = d log alpha_t/dt``, ``b_t = -g_t^2/2``; equivalently ``v = alpha_t' x0 + sigma_t' eps``.

A *field* is ``field(x, t) -> array shaped like x`` for one unbatched sample ``x``.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from ._checks import check_scalar_time, concrete
from .processes import AbstractProcess
from .typing import KINDS, Field, Kind, Scalar


def to_score(process: AbstractProcess, x: Array, t: Scalar, value: Array, kind: Kind) -> Array:
    """Convert a prediction ``value`` of quantity ``kind`` at ``(x, t)`` into the score."""
    _check_kind(kind)
    check_scalar_time(t)
    if kind == "score":
        return value
    if kind == "eps":
        return -value / process.sigma(t)
    if kind == "x0":
        return -(x - process.alpha(t) * value) / process.sigma(t) ** 2
    a, b = process.velocity_coefficients(t)
    return (value - a * x) / b


def from_score(process: AbstractProcess, x: Array, t: Scalar, score: Array, kind: Kind) -> Array:
    """Convert a score at ``(x, t)`` into quantity ``kind``."""
    _check_kind(kind)
    check_scalar_time(t)
    if kind == "score":
        return score
    if kind == "eps":
        return -process.sigma(t) * score
    if kind == "x0":
        return (x + process.sigma(t) ** 2 * score) / process.alpha(t)
    a, b = process.velocity_coefficients(t)
    return a * x + b * score


def convert(
    process: AbstractProcess, x: Array, t: Scalar, value: Array, *, kind: Kind, to: Kind
) -> Array:
    """Convert ``value`` (a prediction of kind ``kind`` at ``(x, t)``) into kind ``to``. ``t``
    is one scalar time (``ValueError`` otherwise; vmap over samples and times)."""
    check_scalar_time(t)
    if kind == to:
        _check_kind(kind)
        return value
    return from_score(process, x, t, to_score(process, x, t, value, kind), to)


def conditional_velocity(process: AbstractProcess, x0: Array, eps: Array, t: Scalar) -> Array:
    """Flow-matching target ``u_t = d/dt (alpha_t x0 + sigma_t eps) = alpha_t' x0 + sigma_t' eps``."""
    return process.dalpha(t) * x0 + process.dsigma(t) * eps


class ConvertedField(eqx.Module):
    """The field ``(x, t) -> convert(field(x, t), kind -> to)``; a PyTree, so jit-friendly."""

    process: AbstractProcess
    field: Field
    kind: str = eqx.field(static=True)
    to: str = eqx.field(static=True)

    def __check_init__(self):
        _check_kind(self.kind, "kind")
        _check_kind(self.to, "to")

    def __call__(self, x: Array, t: Scalar) -> Array:
        """The converted value. ``ValueError`` if ``t`` is not a scalar or the wrapped field's
        output is not shaped like ``x`` (static: also under ``jit``), or if a concrete ``t`` is
        outside the process's times or where the conversion divides by zero (``sigma_t = 0``
        for eps/x0 -> score, ``alpha_t = 0`` for -> x0, ``g_t = 0`` for velocity -> score).
        A traced ``t`` is not checked: the formula stays free of checks in compiled code."""
        check_scalar_time(t)
        self._check_time(t)
        value = self.field(x, t)
        if jnp.shape(value) != jnp.shape(x):
            raise ValueError(
                f"`field` must return an array shaped like `x` {jnp.shape(x)}, got "
                f"{jnp.shape(value)}."
            )
        return convert(self.process, x, t, value, kind=self.kind, to=self.to)  # type: ignore[arg-type]

    def _check_time(self, t) -> None:
        if concrete(t) is None:
            return
        self.process.check_time(t)
        p, kinds = self.process, (self.kind, self.to)
        divisors = {
            "sigma_t": p.sigma(t) if self.kind in ("eps", "x0") and self.to != self.kind else 1.0,
            "alpha_t": p.alpha(t) if "x0" in kinds else 1.0,
            "g_t^2": p.g2(t) if self.kind == "velocity" else 1.0,
        }
        for name, value in divisors.items():
            v = concrete(value)  # traced when t is a Python constant inside jit
            if v is not None and not np.all(np.abs(v) > 0):
                raise ValueError(
                    f"`t` = {t!r}: converting {self.kind} -> {self.to} divides by {name} = 0 "
                    f"for {type(p).__name__}; use t in [t_min, t_max] = [{p.t_min}, {p.t_max}]."
                )


def wgf_velocity(process: AbstractProcess, score_field: Field) -> ConvertedField:
    """The WGF velocity field ``v(x, t) = f(x, t) - g(t)^2/2 s(x, t)`` of a score field."""
    return ConvertedField(process, score_field, "score", "velocity")


def as_field(process: AbstractProcess, field: Field, *, kind: Kind, to: Kind) -> Field:
    """View a field of kind ``kind`` (what it returns) as a field of kind ``to`` (identity if
    equal)."""
    if kind == to:
        _check_kind(kind, "kind")
        return field
    return ConvertedField(process, field, kind, to)


def _check_kind(kind: str, name: str = "kind") -> None:
    if kind not in KINDS:
        raise ValueError(f"`{name}` must be one of {KINDS}, got {kind!r}.")
