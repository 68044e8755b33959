"""Errors added to a velocity field, for the density-transport experiments (docs/design.md §1).

A velocity ``v + w`` transports the same marginals as ``v`` iff ``div(p_t w) = 0``. Harmless
(non-conservative, yet weighted-divergence-free) families:

* ``w = c(t) A grad log p_t`` with ``A`` antisymmetric: ``div(p A grad log p) = div(A grad p)
  = sum_ij A_ij d_i d_j p = 0``;
* ``w = c(t) A (x - m_t)`` around an isotropic Gaussian ``p_t`` centred at ``m_t``: then
  ``p_t w`` is ``A`` applied to ``grad p_t`` up to a scalar.

Any scalar time profile ``c(t)`` keeps them harmless, which is how :func:`scale_to_size` sets
their size in ``L2(p_t)`` at every time. :class:`GenericError` (random Fourier features) is the
harmful control of the same size.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from ._checks import concrete
from .gmm import GaussianMixture
from .processes import AbstractProcess
from .typing import Field

__all__ = [
    "AntisymmetricScore",
    "GenericError",
    "Perturbed",
    "Rotation",
    "TimeScaled",
    "l2_norm",
    "perturb",
    "random_antisymmetric",
    "scale_to_size",
]


class Perturbed(eqx.Module):
    """The field ``(x, t) -> field(x, t) + error(x, t)``."""

    field: Field
    error: Field

    def __call__(self, x: Array, t) -> Array:
        return self.field(x, t) + self.error(x, t)


def perturb(field: Field, error: Field) -> Perturbed:
    """``field + error`` as a field (a PyTree: new error sizes do not recompile)."""
    return Perturbed(field, error)


class AntisymmetricScore(eqx.Module):
    """``w(x, t) = A grad log p_t(x)`` with ``A`` antisymmetric (harmless for any ``A``)."""

    score: Field
    matrix: Float[Array, "d d"]

    def __check_init__(self):
        _check_antisymmetric(self.matrix)

    def __call__(self, x: Array, t) -> Array:
        return (self.matrix @ self.score(x, t).reshape(-1)).reshape(x.shape)


class Rotation(eqx.Module):
    """``w(x, t) = A (x - alpha_t center)``: rotation about the centre of ``p_t`` (harmless
    when ``p_0`` is an isotropic Gaussian with mean ``center``, so ``p_t`` is one too)."""

    matrix: Float[Array, "d d"]
    center: Float[Array, " d"]
    process: AbstractProcess

    def __check_init__(self):
        _check_antisymmetric(self.matrix)

    def __call__(self, x: Array, t) -> Array:
        return self.matrix @ (x - self.process.alpha(t) * self.center)


class GenericError(eqx.Module):
    """Random Fourier features ``w(x) = C sin(W x + b)``: a generic smooth field with both
    curl and weighted divergence (the harmful control)."""

    weights_in: Float[Array, "m d"]
    phases: Float[Array, " m"]
    weights_out: Float[Array, "d m"]

    def __init__(
        self, dim: int, *, key: PRNGKeyArray, num_features: int = 16, frequency: float = 0.5
    ):
        if int(dim) < 1 or int(num_features) < 1:
            raise ValueError(f"`dim` and `num_features` must be >= 1, got {dim}, {num_features}.")
        k1, k2, k3 = jax.random.split(key, 3)
        self.weights_in = frequency * jax.random.normal(k1, (num_features, dim))
        self.phases = jax.random.uniform(k2, (num_features,), maxval=2 * jnp.pi)
        self.weights_out = jax.random.normal(k3, (dim, num_features)) / jnp.sqrt(num_features)

    def __call__(self, x: Array, t) -> Array:
        return self.weights_out @ jnp.sin(self.weights_in @ x + self.phases)


class TimeScaled(eqx.Module):
    """``c(t) error(x, t)`` with ``c`` piecewise linear through ``(times, scales)``."""

    error: Field
    times: Float[Array, " g"]
    scales: Float[Array, " g"]

    def __call__(self, x: Array, t) -> Array:
        return jnp.interp(t, self.times, self.scales) * self.error(x, t)


def random_antisymmetric(dim: int, *, key: PRNGKeyArray) -> Float[Array, "d d"]:
    """``(B - B^T) / ||B - B^T||_F`` for Gaussian ``B``: a random antisymmetric matrix."""
    if int(dim) < 2:
        raise ValueError(f"`dim` must be >= 2 for a non-zero antisymmetric matrix, got {dim}.")
    b = jax.random.normal(key, (dim, dim))
    a = b - b.T
    return a / jnp.linalg.norm(a)


def l2_norm(
    error: Field,
    mixture: GaussianMixture,
    process: AbstractProcess,
    t: ArrayLike,
    *,
    key: PRNGKeyArray,
    num_samples: int = 2000,
) -> Array:
    """Monte Carlo ``||w_t||_{L2(p_t)} = (E_{x ~ p_t} |w(x, t)|^2)^(1/2)`` from oracle samples."""
    x = mixture.marginal(process, t).sample(num_samples, key=key)
    w = jax.vmap(error, in_axes=(0, None))(x, jnp.asarray(t, x.dtype))
    return jnp.sqrt(jnp.mean(jnp.sum(w.reshape(num_samples, -1) ** 2, axis=1)))


def scale_to_size(
    error: Field,
    mixture: GaussianMixture,
    process: AbstractProcess,
    size: ArrayLike,
    *,
    key: PRNGKeyArray,
    relative_to: Field | None = None,
    num_samples: int = 2000,
    num_times: int = 32,
) -> TimeScaled:
    """``error`` rescaled so that ``||w_t||_{L2(p_t)} = size`` (or ``size * ||v_t||_{L2(p_t)}``
    with ``relative_to=v``) at ``num_times`` times spread over ``[t_min, t_max]``, linearly
    interpolated between them; the norms are estimated from oracle samples drawn with ``key``
    (the same draws for ``error`` and ``relative_to``)."""
    times = jnp.linspace(process.t_min, process.t_max, int(num_times))
    keys = jax.random.split(key, int(num_times))
    norms = _norms(error, mixture, process, times, keys, int(num_samples))
    if not bool(jnp.all(norms > 0)):
        raise ValueError("`error` has zero L2(p_t) norm at some time; cannot rescale it.")
    target = jnp.asarray(size, norms.dtype) * jnp.ones_like(norms)
    if relative_to is not None:
        target = target * _norms(relative_to, mixture, process, times, keys, int(num_samples))
    return TimeScaled(error, times, target / norms)


@eqx.filter_jit
def _norms(error, mixture, process, times, keys, num_samples):
    def one(t, k):
        return l2_norm(error, mixture, process, t, key=k, num_samples=num_samples)

    # lax.map, not vmap: a vmap over times of (sample + field) deadlocked XLA:CPU here.
    return jax.lax.map(lambda tk: one(*tk), (times, keys))


def _check_antisymmetric(a) -> None:
    if jnp.ndim(a) != 2 or jnp.shape(a)[0] != jnp.shape(a)[1]:
        raise ValueError(f"`matrix` must be square (d, d), got shape {jnp.shape(a)}.")
    v = concrete(a)  # None under jit: nothing to check
    if v is not None and not np.allclose(v, -v.T, atol=1e-6 * (1 + np.abs(v).max())):
        raise ValueError("`matrix` must be antisymmetric (A^T = -A).")
