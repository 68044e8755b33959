"""Transport residual: does a velocity field transport the marginals ``p_t`` exactly?

``R(x, t) = d_t log p_t(x) + div v(x, t) + v(x, t) . grad log p_t(x)`` (docs/design.md §1) is the
continuity equation ``d_t p + div(p v) = 0`` divided by ``p``; it vanishes everywhere iff ``v``
transports ``p_t``. A harmless (weighted-divergence-free) error adds nothing to it.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array

from ..typing import Scalar
from ._common import check_finite
from .jacobian import divergence as _divergence
from .jacobian import probe_divergence

ScalarField = Callable[..., Array]


def transport_residual(
    field: Callable,
    x: Array,
    t: Scalar,
    *,
    log_density: ScalarField,
    dt_log_density: ScalarField,
    divergence: Callable[..., Array] = _divergence,
    probes: Array | None = None,
    chunk_size: int | None = None,
    checked: bool = True,
) -> Array:
    """The transport residual ``R = d_t log p_t + div v + v . grad log p_t`` at one point
    (docs/design.md §1): the continuity equation divided by ``p_t``, zero everywhere iff ``v``
    transports ``p_t``.

    The divergence is exact (``divergence(field, x, t)``, default the trace) unless ``probes``
    are given: then it is the unbiased Hutchinson estimate, for large ``D``.

    Args:
        field: a velocity field ``(x (*shape), t ()) -> (*shape)``.
        x: the point, shape ``(*shape)``.
        t: the time, a scalar.
        log_density: ``(x, t) -> ()``, ``log p_t`` (for a Gaussian mixture
            :func:`wgfm.gmm.log_density_field`).
        dt_log_density: ``(x, t) -> ()``, ``d_t log p_t``
            (:func:`wgfm.gmm.dt_log_density_field`).
        divergence: ``(field, x, t) -> ()``, the exact divergence (default
            :func:`wgfm.diagnostics.divergence`).
        probes: Hutchinson probes, shape ``(K, *shape)``
            (:func:`wgfm.diagnostics.make_probes`), or None.
        chunk_size: tangents per pass of the exact divergence (None: all at once).
        checked: raise on non-finite values (False: leave that to the caller, see
            :mod:`wgfm.diagnostics`; a custom ``divergence`` does its own checking).

    Returns:
        ``R(x, t)``, a scalar.

    Raises:
        ValueError: ``field`` not shaped like ``x``, ``log_density`` or ``dt_log_density`` not
            scalar, or a non-finite value.
    """
    v = field(x, t)
    if jnp.shape(v) != jnp.shape(x):
        raise ValueError(
            f"`field` must return an array shaped like x {jnp.shape(x)}, got {jnp.shape(v)}."
        )
    if probes is not None:
        div = probe_divergence(field, x, t, probes, checked=checked)
    elif chunk_size is not None or divergence is _divergence:
        div = _divergence(field, x, t, chunk_size=chunk_size, checked=checked)
    else:
        div = divergence(field, x, t)
    for name, fn in (("log_density", log_density), ("dt_log_density", dt_log_density)):
        shape = jax.eval_shape(fn, x, t).shape  # static: checked under jit too
        if shape != ():
            raise ValueError(
                f"`{name}` must return a scalar per point (a scalar field), got shape {shape}."
            )
    grad_logp = jax.grad(log_density)(x, t)
    out = dt_log_density(x, t) + div + jnp.sum(v * grad_logp)
    return check_finite(out, x, t, "transport residual", checked=checked)
