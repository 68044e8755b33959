"""Input validation at the public edge.

Value checks run eagerly on concrete values and are skipped (return ``None``) on tracers, so
that validated functions still compose with ``jit``/``vmap``; shape checks are static and so
run under ``jit`` too, once, at trace time. Checks that must survive ``jit`` use
``equinox.error_if`` at the call site instead.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array


def concrete(value) -> np.ndarray | None:
    """``value`` as a NumPy array if it is concrete, ``None`` if it is a tracer."""
    try:
        return np.asarray(value)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def check_positive(name: str, value) -> None:
    v = concrete(value)
    if v is not None and not (np.all(np.isfinite(v)) and np.all(v > 0)):
        raise ValueError(f"`{name}` must be finite and > 0, got {value!r}.")


def check_less(name_lo: str, lo, name_hi: str, hi) -> None:
    a, b = concrete(lo), concrete(hi)
    if a is not None and b is not None and not np.all(a < b):
        raise ValueError(
            f"`{name_lo}` must be < `{name_hi}`, got {name_lo}={lo!r}, {name_hi}={hi!r}."
        )


def check_time(name: str, t, t_lo: float, t_hi: float, what: str) -> None:
    """Raise if a concrete time lies outside ``[t_lo, t_hi]`` (tiny float slack allowed)."""
    v = concrete(t)
    if v is None:
        return
    slack = 1e-6 * max(1.0, abs(t_hi))
    if not np.all(np.isfinite(v)) or np.any(v < t_lo - slack) or np.any(v > t_hi + slack):
        raise ValueError(f"`{name}` must lie in [{t_lo}, {t_hi}] for {what}, got {t!r}.")


def check_shape(name: str, shape, expected, what: str = "") -> None:
    if tuple(shape) != tuple(expected):
        extra = f" ({what})" if what else ""
        raise ValueError(f"`{name}` must have shape {tuple(expected)}{extra}, got {tuple(shape)}.")


def check_scalar_time(t, name: str = "t") -> None:
    """Raise unless ``t`` is a scalar: a field is called on one sample at one time, and a
    vector of times would broadcast against the sample into a plausible wrong array. Static
    (shapes only), so it runs under ``jit`` too, at trace time."""
    if jnp.ndim(t) != 0:
        raise ValueError(
            f"`{name}` must be a scalar: one time per field call (vmap over samples and "
            f"times), got shape {jnp.shape(t)}."
        )


def check_max_steps(max_steps) -> None:
    """Raise unless ``max_steps`` is a Python or NumPy integer >= 1."""
    if not isinstance(max_steps, (int, np.integer)) or max_steps < 1:
        raise ValueError(f"`max_steps` must be an integer >= 1, got {max_steps!r}.")


def check_field_output(field, x_one: Array, t) -> None:
    """Trace ``field`` once on one sample ``x_one`` at time ``t``: a field that fails there or
    returns another shape raises a ``ValueError`` naming ``field`` (at trace time only, so
    free on later calls of a compiled caller)."""
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


def starting_points(
    process: Any, x_init, *, key, num_samples, shape, t_start=None, name: str = "t_start"
) -> Array:
    """The batch a sampler starts from: ``x_init`` (checked: a finite batch ``(n, *shape)``) or
    ``num_samples`` draws of shape ``shape`` from ``process``'s prior, using ``key``. Prior
    draws are samples of ``p_{t_max}``, so a concrete ``t_start`` (argument ``name``) other
    than ``process.t_max`` is refused with them: the solve would start them at a time whose
    marginal they do not follow."""
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
    start = None if t_start is None else concrete(t_start)
    t_max = float(process.t_max)
    if start is not None and np.any(np.abs(start - t_max) > 1e-6 * max(1.0, abs(t_max))):
        raise ValueError(
            f"`{name}`={t_start!r}: prior draws (`key`, `num_samples`) are samples at t_max = "
            f"{t_max} only; start there, or pass `x_init` drawn at `{name}`."
        )
    return process.prior_sample((int(num_samples), *shape), key=key)
