"""Helpers shared by the diagnostics: flattening a field, output-shape and finiteness checks
(``checked``: see :mod:`wgfm.diagnostics`)."""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from .._checks import concrete


def flat_field(field: Callable, x: Array, t) -> Callable[[Array], Array]:
    """``y (D,) -> field(y.reshape(x.shape), t).reshape(D)``, raising if the shape is wrong."""
    shape = jnp.shape(x)

    def f(y: Array) -> Array:
        out = field(y.reshape(shape), t)
        if jnp.shape(out) != shape:
            raise ValueError(
                f"`field` must return an array shaped like its input x {shape}, "
                f"got {jnp.shape(out)}."
            )
        return jnp.reshape(out, (-1,))

    return f


def check_finite(value, x, t, what: str = "values", *, checked: bool = True):
    """Raise (eagerly: ``ValueError`` naming ``x`` and ``t``; under jit: ``equinox.error_if``)
    if ``value`` holds a non-finite entry. Returns ``value``; ``checked=False``: unchanged."""
    if not checked:
        return value
    leaves = jax.tree_util.tree_leaves(value)
    conc = [concrete(v) for v in leaves]
    if all(c is not None for c in conc):
        if not all(np.all(np.isfinite(np.asarray(c))) for c in conc):
            raise ValueError(
                f"`field` produced non-finite {what} at input x={_short(x)} (shape "
                f"{jnp.shape(x)}), t={_short(t)}."
            )
        return value
    bad = jnp.logical_not(jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in leaves])))
    return eqx.error_if(
        value,
        bad,
        f"`field` produced non-finite {what} (inside jit the offending input cannot be printed: "
        "rerun this sample eagerly, or use wgfm.diagnostics.sweep, which names it).",
    )


def _short(a) -> str:
    c = concrete(a)
    if c is None:
        return "<traced>"
    return np.array2string(np.asarray(c), threshold=8, precision=4)


def check_closed(name: str, path: Array, rtol: float = 1e-6, *, checked: bool = True) -> Array:
    """Require ``path[-1] == path[0]`` (to ``rtol`` of the path's scale); ``checked=False``
    keeps only the static shape check."""
    if jnp.shape(path)[0] < 3:
        raise ValueError(f"`{name}` must hold at least 3 points, got shape {jnp.shape(path)}.")
    gap = jnp.max(jnp.abs(path[-1] - path[0]))
    scale = 1.0 + jnp.max(jnp.abs(path))
    c = concrete(gap / scale)
    if c is not None:
        if not float(c) <= rtol:
            raise ValueError(
                f"`{name}` must be a closed loop (last point equal to the first), but they "
                f"differ by {float(np.asarray(gap)):.3g}."
            )
        return path
    if not checked:
        return path
    return eqx.error_if(path, gap > rtol * scale, f"`{name}` must be a closed loop.")
