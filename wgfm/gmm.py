"""Exact Gaussian-mixture oracle: densities, scores and WGF velocities of every marginal.

If ``x0 ~ sum_k w_k N(mu_k, Sigma_k)`` then ``x_t = alpha_t x0 + sigma_t eps`` is the mixture
``sum_k w_k N(alpha_t mu_k, alpha_t^2 Sigma_k + sigma_t^2 I)`` — every quantity below is closed form.
"""

from __future__ import annotations

import operator

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from ._checks import check_scalar_time, concrete
from .processes import AbstractProcess
from .typing import Scalar


class GaussianMixture(eqx.Module):
    """``sum_k w_k N(mu_k, Sigma_k)`` in ``R^D``.

    ``covs`` may be full ``(K, D, D)``, diagonal ``(K, D)``, isotropic ``(K,)`` or a scalar; it is
    stored full. Concrete inputs are validated (weights >= 0 summing to 1, SPD covariances)."""

    weights: Float[Array, " k"]
    means: Float[Array, "k d"]
    covs: Float[Array, "k d d"]

    def __init__(self, weights: ArrayLike, means: ArrayLike, covs: ArrayLike):
        means = jnp.asarray(means)
        if means.ndim != 2:
            raise ValueError(f"`means` must have shape (K, D), got {means.shape}.")
        if not jnp.issubdtype(means.dtype, jnp.floating):  # integer means would make all ints
            means = means.astype(jnp.result_type(float))
        m = concrete(means)
        if m is not None and not np.all(np.isfinite(m)):
            raise ValueError(
                f"`means` must be finite, got {int((~np.isfinite(m)).sum())} non-finite entries."
            )
        k, d = means.shape
        weights = jnp.asarray(weights, dtype=means.dtype)
        if weights.shape != (k,):
            raise ValueError(
                f"`weights` must have shape ({k},) to match `means`, got {weights.shape}."
            )
        self.weights, self.means, self.covs = weights, means, _full_covs(covs, k, d, means.dtype)
        _validate(self.weights, self.covs)

    @property
    def dim(self) -> int:
        return self.means.shape[-1]

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    def factors(self) -> tuple[Array, Array]:
        """``(L_k^{-1}, log det Sigma_k)`` with ``Sigma_k = L_k L_k^T``.

        Computed from the covariances alone, so under ``vmap`` over points they are evaluated
        once; per-point work is then plain matrix products. (Batched LAPACK custom calls per
        point, a triangular solve for every x, can deadlock XLA:CPU's thread pool in large
        vmapped programs: docs/xla_cpu.md.)"""
        chol = jnp.linalg.cholesky(self.covs)
        eye = jnp.broadcast_to(jnp.eye(self.dim, dtype=self.covs.dtype), self.covs.shape)
        chol_inv = jsl.solve_triangular(chol, eye, lower=True)
        logdet = 2 * jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)
        return chol_inv, logdet

    def _whiten(self, x: Float[Array, " d"]) -> tuple[Array, Array, Array]:
        """``(log w_k + log N(x; mu_k, Sigma_k), z_k = L_k^{-1}(x - mu_k), L_k^{-1})``."""
        _check_point(x, self.dim)
        chol_inv, logdet = self.factors()
        logc, z = _log_components(x, self.weights, self.means, chol_inv, logdet)
        return logc, z, chol_inv

    def component_log_densities(self, x: Float[Array, " d"]) -> Float[Array, " k"]:
        """``log w_k + log N(x; mu_k, Sigma_k)`` for every component."""
        return self._whiten(x)[0]

    def log_density(self, x: Float[Array, " d"]) -> Float[Array, ""]:
        """``log p(x)`` by a stable log-sum-exp over components."""
        return jax.nn.logsumexp(self.component_log_densities(x))

    def responsibilities(self, x: Float[Array, " d"]) -> Float[Array, " k"]:
        """Posterior component probabilities ``r_k(x)``."""
        return jax.nn.softmax(self.component_log_densities(x))

    def score(self, x: Float[Array, " d"]) -> Float[Array, " d"]:
        """``grad log p(x) = -sum_k r_k(x) Sigma_k^{-1} (x - mu_k)`` in closed form, with
        ``Sigma_k^{-1}(x - mu_k) = L_k^{-T} z_k``."""
        return _score(*self._whiten(x))

    def sample(self, n: int, *, key: PRNGKeyArray) -> Float[Array, "n d"]:
        """``n`` independent samples."""
        return self.sample_with_labels(n, key=key)[0]

    def sample_with_labels(self, n: int, *, key: PRNGKeyArray) -> tuple[Array, Array]:
        """``n`` samples and the index of the component each came from (one compiled program
        per ``n``: called eagerly, the draw would otherwise compile op by op)."""
        try:
            count = operator.index(n)
        except TypeError:
            count = -1
        if count < 0:
            raise ValueError(f"`n` must be a non-negative integer, got {n!r}.")
        return _sample_with_labels(self, count, key)

    def mean(self) -> Float[Array, " d"]:
        return self.weights @ self.means

    def covariance(self) -> Float[Array, "d d"]:
        """Law of total covariance."""
        m = self.mean()
        dm = self.means - m
        return jnp.einsum("k,kij->ij", self.weights, self.covs) + jnp.einsum(
            "k,ki,kj->ij", self.weights, dm, dm
        )

    def marginal(self, process: AbstractProcess, t: Scalar) -> GaussianMixture:
        """Exact law of ``x_t``: means ``alpha_t mu_k``, covariances ``alpha_t^2 Sigma_k + sigma_t^2 I``."""
        process.check_time(t)
        a, s = process.alpha(t), process.sigma(t)
        eye = jnp.eye(self.dim, dtype=self.covs.dtype)
        return _unchecked(self.weights, a * self.means, a**2 * self.covs + s**2 * eye)


@eqx.filter_jit
def _sample_with_labels(mix: GaussianMixture, n: int, key) -> tuple[Array, Array]:
    k_comp, k_noise = jax.random.split(key)
    comp = jax.random.choice(k_comp, mix.num_components, (n,), p=mix.weights)
    z = jax.random.normal(k_noise, (n, mix.dim), dtype=mix.means.dtype)
    chol = jnp.linalg.cholesky(mix.covs)
    return mix.means[comp] + jnp.einsum("nij,nj->ni", chol[comp], z), comp


def _log_components(x, weights, means, w, logdet) -> tuple[Array, Array]:
    """``log w_k + log N(x; m_k, C_k)`` and ``z_k = W_k (x - m_k)`` for any ``W_k`` with
    ``W_k^T W_k = C_k^{-1}`` (``log det C_k`` given)."""
    z = jnp.einsum("kij,kj->ki", w, x - means)
    quad = jnp.sum(z**2, axis=-1)
    d = means.shape[-1]
    return jnp.log(weights) - 0.5 * (quad + logdet + d * jnp.log(2 * jnp.pi)), z


def _score(logc, z, w) -> Array:
    """``-sum_k r_k C_k^{-1}(x - m_k)`` with ``C_k^{-1}(x - m_k) = W_k^T z_k``."""
    return -jnp.einsum("k,kd->d", jax.nn.softmax(logc), jnp.einsum("kji,kj->ki", w, z))


def _unchecked(weights, means, covs) -> GaussianMixture:
    """Build a mixture without validation (for values derived from a validated one, under jit)."""
    gm = object.__new__(GaussianMixture)
    object.__setattr__(gm, "weights", weights)
    object.__setattr__(gm, "means", means)
    object.__setattr__(gm, "covs", covs)
    return gm


def _full_covs(covs: ArrayLike, k: int, d: int, dtype) -> Array:
    c = jnp.asarray(covs, dtype=dtype)
    if c.ndim == 0:
        return jnp.broadcast_to(c * jnp.eye(d, dtype=dtype), (k, d, d))
    if c.shape == (k,):
        return c[:, None, None] * jnp.eye(d, dtype=dtype)
    if c.shape == (k, d):
        return jax.vmap(jnp.diag)(c)
    if c.shape == (k, d, d):
        return c
    raise ValueError(
        f"`covs` must have shape (), ({k},), ({k}, {d}) or ({k}, {d}, {d}) for {k} components in "
        f"dimension {d}, got {c.shape}."
    )


def _validate(weights: Array, covs: Array) -> None:
    w, c = concrete(weights), concrete(covs)
    if w is not None:
        if not np.all(np.isfinite(w)) or np.any(w < 0):
            raise ValueError(f"`weights` must be finite and non-negative, got {w}.")
        if abs(float(w.sum()) - 1.0) > 1e-5:
            raise ValueError(f"`weights` must sum to 1, got sum {float(w.sum())}.")
    if c is not None:
        c64 = c.astype(np.float64)
        if not np.all(np.isfinite(c64)):
            raise ValueError("`covs` must be finite.")
        if not np.allclose(c64, np.swapaxes(c64, -1, -2), rtol=1e-6, atol=1e-8):
            raise ValueError("`covs` must be symmetric.")
        eig = np.linalg.eigvalsh(c64)
        if np.any(eig <= 0):
            bad = int(np.argmin(eig.min(axis=-1)))
            raise ValueError(
                f"`covs` must be positive definite; component {bad} has eigenvalue {eig[bad].min():.3g}."
            )


def _check_point(x: Array, d: int) -> None:
    if jnp.shape(x) != (d,):
        raise ValueError(
            f"`x` must be one point of shape ({d},) (vmap over batches), got {jnp.shape(x)}."
        )


# ---------------------------------------------------------------------------------------------
# Fields of the marginals p_t, as frozen PyTrees (new mixture values do not retrace under jit).


class _OracleField(eqx.Module):
    """Shared by the marginal fields: the eigendecomposition ``Sigma_k = U_k diag(e_k) U_k^T``,
    computed once when the field is built, gives every marginal in closed form:
    ``C_k(t) = alpha_t^2 Sigma_k + sigma_t^2 I = U_k diag(alpha_t^2 e_k + sigma_t^2) U_k^T``.

    So evaluating a field at any ``(x, t)`` is matrix products only: no factorisation per time
    or per point. (Batched LAPACK kernels inside ``vmap``-ed diffrax loops, e.g. a Cholesky
    per sample when each sample has its own time, can deadlock XLA:CPU: the kernel blocks a
    pool worker waiting for batch tasks queued on the same, exhausted pool; docs/xla_cpu.md.)"""

    mixture: GaussianMixture
    process: AbstractProcess
    evals: Float[Array, "k d"]
    evecs: Float[Array, "k d d"]

    @classmethod
    def build(cls, mixture: GaussianMixture, process: AbstractProcess):
        """The field of ``mixture`` under ``process`` (the public constructors below)."""
        return cls(mixture, process, *jnp.linalg.eigh(mixture.covs))

    def _components(self, x: Array, t: Scalar) -> tuple[Array, Array, Array, Array]:
        """``(log w_k + log N(x; m_k(t), C_k(t)), z_k, W_k, eigenvalues of C_k(t))`` with
        ``W_k = diag(lam_k)^{-1/2} U_k^T`` (so ``W_k^T W_k = C_k(t)^{-1}``)."""
        _check_point(x, self.mixture.dim)
        check_scalar_time(t)
        self.process.check_time(t)
        a, s = self.process.alpha(t), self.process.sigma(t)
        lam = a**2 * self.evals + s**2
        w = jnp.swapaxes(self.evecs, -1, -2) * jax.lax.rsqrt(lam)[..., None]
        logdet = jnp.sum(jnp.log(lam), axis=-1)
        logc, z = _log_components(x, self.mixture.weights, a * self.mixture.means, w, logdet)
        return logc, z, w, lam


class MarginalScore(_OracleField):
    """``(x, t) -> grad log p_t(x)``."""

    def __call__(self, x: Array, t: Scalar) -> Array:
        # Any sample shape of size D (an image seen as a vector): the score keeps the shape.
        flat = jnp.reshape(x, (-1,))
        return jnp.reshape(_score(*self._components(flat, t)[:3]), jnp.shape(x))


class MarginalVelocity(_OracleField):
    """``(x, t) -> v_t(x) = f(x, t) - g(t)^2/2 grad log p_t(x)``, the WGF velocity."""

    def __call__(self, x: Array, t: Scalar) -> Array:
        a, b = self.process.velocity_coefficients(t)
        return a * x + b * _score(*self._components(x, t)[:3])


class MarginalLogDensity(_OracleField):
    """``(x, t) -> log p_t(x)`` (a scalar)."""

    def __call__(self, x: Array, t: Scalar) -> Array:
        return jax.nn.logsumexp(self._components(x, t)[0])


class MarginalDtLogDensity(_OracleField):
    """``(x, t) -> d/dt log p_t(x)`` in closed form.

    With ``m_k = alpha mu_k``, ``C_k = alpha^2 Sigma_k + sigma^2 I`` and ``r = x - m_k``:
    ``d_t log N_k = -tr(C^{-1} C')/2 + r^T C^{-1} m' + r^T C^{-1} C' C^{-1} r / 2`` and
    ``d_t log p_t = sum_k r_k(x) d_t log N_k`` (the weights do not move). In the eigenbasis
    ``C' = U diag(2 alpha alpha' e + 2 sigma sigma') U^T``, so with ``y = U^T C^{-1} r``
    every term is diagonal."""

    def __call__(self, x: Array, t: Scalar) -> Array:
        p = self.process
        a, s, da, ds = p.alpha(t), p.sigma(t), p.dalpha(t), p.dsigma(t)
        logc, z, w, lam = self._components(x, t)
        dlam = 2 * a * da * self.evals + 2 * s * ds  # eigenvalues of C_k'
        y = z * jax.lax.rsqrt(lam)  # U^T C^{-1} r, per component
        dmean = jnp.einsum("kji,kj->ki", self.evecs, da * self.mixture.means)  # U^T m'
        d = (
            -0.5 * jnp.sum(dlam / lam, axis=-1)
            + jnp.sum(y * dmean, axis=-1)
            + 0.5 * jnp.sum(dlam * y**2, axis=-1)
        )
        return jax.nn.softmax(logc) @ d


def score_field(mixture: GaussianMixture, process: AbstractProcess) -> MarginalScore:
    """The exact score field ``(x, t) -> grad log p_t(x)``."""
    return MarginalScore.build(mixture, process)


def velocity_field(mixture: GaussianMixture, process: AbstractProcess) -> MarginalVelocity:
    """The exact WGF velocity field ``(x, t) -> f - g^2/2 grad log p_t``."""
    return MarginalVelocity.build(mixture, process)


def log_density_field(mixture: GaussianMixture, process: AbstractProcess) -> MarginalLogDensity:
    """``(x, t) -> log p_t(x)``."""
    return MarginalLogDensity.build(mixture, process)


def dt_log_density_field(
    mixture: GaussianMixture, process: AbstractProcess
) -> MarginalDtLogDensity:
    """``(x, t) -> d/dt log p_t(x)``, the exact time derivative of the marginal log-density."""
    return MarginalDtLogDensity.build(mixture, process)


# ---------------------------------------------------------------------------------------------
# Default mixtures used by the CLI, the tests and the experiments.


def ring(num_modes: int = 8, radius: float = 4.0, std: float = 0.5, dtype=None) -> GaussianMixture:
    """``num_modes`` equal-weight isotropic Gaussians on a circle in 2D."""
    th = 2 * np.pi * np.arange(num_modes) / num_modes
    means = radius * np.stack([np.cos(th), np.sin(th)], axis=1)
    w = np.full(num_modes, 1.0 / num_modes)
    return GaussianMixture(
        jnp.asarray(w, dtype),
        jnp.asarray(means, dtype),
        jnp.asarray(np.full(num_modes, std**2), dtype),
    )


def random_mixture(
    dim: int, num_modes: int, *, key: PRNGKeyArray, scale: float = 3.0, anisotropy: float = 4.0
) -> GaussianMixture:
    """A mixture with unequal weights and anisotropic full covariances (condition <= anisotropy)."""
    kw, km, kq, ke = jax.random.split(key, 4)
    w = jax.random.dirichlet(kw, jnp.full((num_modes,), 2.0))
    means = scale * jax.random.normal(km, (num_modes, dim))
    q, _ = jnp.linalg.qr(jax.random.normal(kq, (num_modes, dim, dim)))
    eig = 0.2 * anisotropy ** jax.random.uniform(ke, (num_modes, dim))
    covs = jnp.einsum("kij,kj,klj->kil", q, eig, q)
    covs = 0.5 * (covs + jnp.swapaxes(covs, -1, -2))
    return GaussianMixture(w, means, covs)
