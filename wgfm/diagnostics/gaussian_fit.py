"""The Gaussian fitted to N clean samples, in O(N D) memory: the samples' span plus a floor.

The fitted covariance is the sample covariance plus an isotropic floor,
``Sigma = U U^T + floor I`` with ``U = X_c^T / sqrt(N - 1)`` (``X_c`` the centred samples,
``N x D``): the same model as the full-covariance fit, never formed. The thin SVD
``X_c / sqrt(N - 1) = V diag(s) Q^T`` gives ``Q`` (``D x r``, ``r = min(N, D)``, orthonormal
columns) and the variances ``e = s^2`` along them; under a process, the marginal covariance is
``C_t = alpha_t^2 Sigma + sigma_t^2 I = Q diag(lam) Q^T + c (I - Q Q^T)`` with
``lam = alpha_t^2 (e + floor) + sigma_t^2`` and ``c = alpha_t^2 floor + sigma_t^2``, so

    ``C_t^{-1} r = Q (Q^T r / lam) + (r - Q Q^T r) / c``      (Woodbury in the eigenbasis),
    ``log det C_t = sum log lam + (D - r) log c``.

Every evaluation is two ``D x r`` products. Its Jacobian ``-C_t^{-1}`` is symmetric by
construction (a true gradient up to rounding), and ``lam >= c > 0`` for every ``t`` whatever
the samples' scale, so no covariance can fail a positive-definiteness check (the full fit, in
float32, did for latents of large magnitude: rounding of ``D x D`` entries of size ``~ var``
exceeds the floor).

Why isotropic and not a diagonal floor: the per-coordinate variances are already in the span,
a diagonal floor from N < D samples is 0 on constant coordinates (image borders) and would need
a floor of its own, and an isotropic one keeps ``C_t`` diagonal in one basis for every ``t``
(closed-form inverse and determinant, no factorisation per time). It also equals the
full-covariance fit (``Sigma + 1e-3 I``) the diagnosis used, so old numbers stay comparable.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from .._checks import check_scalar_time
from ..processes import AbstractProcess
from ..typing import Scalar

# The most samples a fit keeps: enough to pin down a Gaussian at any D a diagnosis meets.
FIT_MAX_SAMPLES = 10_000
# ...and at most this many bytes of float32 samples (N x D x 4): the thin SVD holds about three
# N x D arrays at once (the centred samples, Q and LAPACK's workspace), so 512 MiB keeps the fit
# near 1.5 GB, inside a quick diagnosis's 4 GB at any D. At D = 262,144 (an SD3/FLUX latent) it
# keeps 512 samples, where 10,000 would be a 10 GB basis.
FIT_MAX_BYTES = 2**29


def fit_sample_cap(
    dim: int, *, max_samples: int = FIT_MAX_SAMPLES, max_bytes: int = FIT_MAX_BYTES
) -> int:
    """The most samples a fit of dimension ``dim`` keeps: ``max_samples``, fewer where
    ``N x dim`` float32 numbers would exceed ``max_bytes`` (at least 2, a fit's minimum).

    Args:
        dim: ``D``, the number of coordinates of one sample.
        max_samples: the cap whatever ``D``.
        max_bytes: the cap on ``4 N D`` bytes.

    Returns:
        ``N_max = max(2, min(max_samples, max_bytes // (4 D)))``."""
    if int(dim) < 1:
        raise ValueError(f"`dim` must be a positive integer, got {dim!r}.")
    return max(2, min(int(max_samples), int(max_bytes) // (4 * int(dim))))


def subsample_for_fit(
    x: ArrayLike,
    *,
    key,
    max_samples: int = FIT_MAX_SAMPLES,
    max_bytes: int = FIT_MAX_BYTES,
) -> np.ndarray:
    """The samples a Gaussian fit keeps of ``x``: all of them, in order, when there are at most
    :func:`fit_sample_cap` of them; else that many drawn without replacement with ``key`` (in
    their original order).

    Args:
        x: ``(N, *shape)`` samples.
        key: a JAX key, used only when ``N`` is over the cap.
        max_samples, max_bytes: as in :func:`fit_sample_cap`.

    Returns:
        ``(min(N, N_max), *shape)``, a NumPy array."""
    arr = np.asarray(x)
    if arr.ndim < 2:
        raise ValueError(f"`x` must have shape (N, *shape), got {arr.shape}.")
    cap = fit_sample_cap(int(np.prod(arr.shape[1:])), max_samples=max_samples, max_bytes=max_bytes)
    if len(arr) <= cap:
        return arr
    keep = np.sort(np.asarray(jax.random.choice(key, len(arr), (cap,), replace=False)))
    return arr[keep]


class LowRankGaussian(eqx.Module):
    """``N(mean, Q diag(evals) Q^T + floor I)`` with ``Q`` (``D x r``) orthonormal columns."""

    mean: Float[Array, " d"]
    basis: Float[Array, "d r"]
    evals: Float[Array, " r"]
    floor: Float[Array, ""]

    @property
    def dim(self) -> int:
        return self.mean.shape[0]


def fit_low_rank_gaussian(x: ArrayLike, *, floor: float = 1e-3) -> LowRankGaussian:
    """The Gaussian ``N(mean, cov + floor I)`` of the samples ``x`` ``(N, *shape)``, N >= 2,
    as its span (thin SVD of the centred samples, O(N D) memory, in the dtype of ``x``: float32
    samples are fitted in float32, with no float64 copy; integers in JAX's default float).

    Args:
        x: ``(N, *shape)`` finite samples.
        floor: the isotropic variance added to the sample covariance (> 0).

    Returns:
        A :class:`LowRankGaussian` of dimension ``D = prod(shape)`` and rank ``min(N, D)``."""
    arr = np.asarray(x)
    if arr.ndim < 2 or arr.shape[0] < 2:
        raise ValueError(
            f"`x` must hold at least 2 samples (N, *shape) for a Gaussian fit, got shape "
            f"{arr.shape}."
        )
    if not np.issubdtype(arr.dtype, np.floating) and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"`x` must be a real array, got dtype {arr.dtype}.")
    if not np.isfinite(arr).all():
        raise ValueError("`x` holds non-finite values: the Gaussian fit needs finite samples.")
    if not (np.isfinite(floor) and floor > 0):
        raise ValueError(f"`floor` must be a finite number > 0, got {floor!r}.")
    dtype = arr.dtype if np.issubdtype(arr.dtype, np.floating) else jnp.result_type(float)
    flat = jnp.asarray(arr.reshape(arr.shape[0], -1), dtype=dtype)
    return _fit(flat, jnp.asarray(floor, flat.dtype))


@jax.jit
def _fit(flat: Array, floor: Array) -> LowRankGaussian:
    n = flat.shape[0]
    mean = jnp.mean(flat, axis=0)
    centred = (flat - mean) / jnp.sqrt(jnp.asarray(n - 1, flat.dtype))
    # Thin SVD of the N x D matrix: N^2 D work and N D memory; U U^T's eigenvectors are the
    # right singular vectors (better conditioned than an eigendecomposition of the Gram matrix,
    # which squares the singular values' dynamic range).
    _, s, vt = jnp.linalg.svd(centred, full_matrices=False)
    return LowRankGaussian(mean, vt.T, s**2, floor)


class LowRankMarginal(eqx.Module):
    """The marginals ``N(alpha_t mean, alpha_t^2 Sigma + sigma_t^2 I)`` of a
    :class:`LowRankGaussian` under ``process``; shared by the score and the log-density."""

    fit: LowRankGaussian
    process: AbstractProcess

    def _parts(self, x: Array, t: Scalar) -> tuple[Array, Array, Array, Array, Array]:
        """``(r, p = Q^T r, lam, c, r_perp = r - Q p)`` with ``r = x - alpha_t mean``."""
        flat = jnp.reshape(x, (-1,))
        if flat.shape != (self.fit.dim,):
            raise ValueError(
                f"`x` must have {self.fit.dim} entries (the fit's dimension), got shape "
                f"{jnp.shape(x)}."
            )
        check_scalar_time(t)
        self.process.check_time(t)
        a, s = self.process.alpha(t), self.process.sigma(t)
        c = a**2 * self.fit.floor + s**2
        lam = a**2 * (self.fit.evals + self.fit.floor) + s**2
        r = flat - a * self.fit.mean
        p = self.fit.basis.T @ r
        return r, p, lam, c, r - self.fit.basis @ p


class LowRankScore(LowRankMarginal):
    """``(x, t) -> grad log p_t(x) = -C_t^{-1} (x - alpha_t mean)``, shaped like ``x``."""

    def __call__(self, x: Array, t: Scalar) -> Array:
        r, _, lam, c, perp = self._parts(x, t)
        # G G^T r with G = Q diag(lam)^(-1/2), not Q (Q^T r / lam): each Jacobian entry is then
        # sum_k G_ik G_jk (and sum_k Q_ik Q_jk for the complement), products that commute, so
        # the Jacobian is symmetric to the last bit, as the full-covariance oracle's is
        g = self.fit.basis * jax.lax.rsqrt(lam)
        return jnp.reshape(-(g @ (g.T @ r) + perp / c), jnp.shape(x))


class LowRankLogDensity(LowRankMarginal):
    """``(x, t) -> log p_t(x)`` (a scalar)."""

    def __call__(self, x: Array, t: Scalar) -> Array:
        _, p, lam, c, perp = self._parts(x, t)
        d, r = self.fit.dim, self.fit.evals.shape[0]
        quad = jnp.sum(p**2 / lam) + jnp.sum(perp**2) / c
        logdet = jnp.sum(jnp.log(lam)) + (d - r) * jnp.log(c)
        return -0.5 * (quad + logdet + d * jnp.log(2 * jnp.pi))
