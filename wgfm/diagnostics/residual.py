"""Transport residual: does a velocity field transport the marginals ``p_t`` exactly?

``R(x, t) = d_t log p_t(x) + div v(x, t) + v(x, t) . grad log p_t(x)`` (DESIGN.md §1) is the
continuity equation ``d_t p + div(p v) = 0`` divided by ``p``; it vanishes everywhere iff ``v``
transports ``p_t``. A harmless (weighted-divergence-free) error adds nothing to it.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

Scalar = Float[ArrayLike, ""]
ScalarField = Callable[..., Array]


def exact_divergence(field: Callable, x: Array, t: Scalar) -> Array:
    """``div v(x, t) = tr dv/dx`` by forward-mode Jacobian (exact; D JVPs)."""
    flat = x.reshape(-1)
    jac = jax.jacfwd(lambda y: field(y.reshape(x.shape), t).reshape(-1))(flat)
    return jnp.trace(jac)


def transport_residual(
    field: Callable,
    x: Array,
    t: Scalar,
    *,
    log_density: ScalarField,
    dt_log_density: ScalarField,
    divergence: Callable[[Callable, Array, Scalar], Array] = exact_divergence,
) -> Array:
    """``d_t log p_t + div v + v . grad log p_t`` at one point ``x``.

    ``log_density(x, t)`` and ``dt_log_density(x, t)`` describe the target marginals (for a
    Gaussian mixture: ``wgfm.gmm.log_density_field`` and ``wgfm.gmm.dt_log_density_field``);
    ``divergence(field, x, t)`` defaults to the exact trace."""
    v = field(x, t)
    if jnp.shape(v) != jnp.shape(x):
        raise ValueError(
            f"`field` must return an array shaped like x {jnp.shape(x)}, got {jnp.shape(v)}."
        )
    grad_logp = jax.grad(log_density)(x, t)
    return dt_log_density(x, t) + divergence(field, x, t) + jnp.sum(v * grad_logp)
