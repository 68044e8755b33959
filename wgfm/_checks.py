"""Input validation at the public edge.

Checks run eagerly on concrete values and are skipped (return ``None``) on tracers, so that
validated functions still compose with ``jit``/``vmap``. Checks that must survive ``jit`` use
``equinox.error_if`` at the call site instead.
"""

from __future__ import annotations

import jax
import numpy as np


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
