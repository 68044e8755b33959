"""Forward diffusion processes with Gaussian conditionals ``x_t | x0 ~ N(alpha_t x0, sigma_t^2 I)``.

Every process is a frozen PyTree (``equinox.Module``) exposing ``alpha(t)``, ``sigma(t)``, the
log-rate ``dlog_alpha(t) = d log alpha_t / dt`` and ``g2(t)``, the squared diffusion
``g^2 = d(sigma^2)/dt - 2 (d log alpha/dt) sigma^2`` (docs/design.md §1). From these follow the SDE
``dx = f(x, t) dt + g(t) dW`` with ``f = (d log alpha / dt) x`` and the WGF velocity
``v = f - g^2/2 grad log p_t``.

Times: each process has ``t_max`` (terminal time) and ``t_min`` (the smallest time to integrate
to; quantities like the score blow up as ``sigma_t -> 0``, so solvers stop at ``t_min``).
``alpha``/``sigma`` accept any ``t`` in ``[0, t_max]`` (``[t_min, t_max]`` for EDM): a concrete
``t`` outside raises ``ValueError`` naming it; a traced one is not checked (the formulas stay
free of checks inside compiled code; the public entry points that trace them, such as
:func:`wgfm.transport.sample_ode` and the training step, only ever pass times in range).
The prior is ``N(0, sigma(t_max)^2 I)``: the law of ``x_T`` for data at the origin.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from ._checks import check_less, check_positive, check_time
from .typing import Scalar


class AbstractProcess(eqx.Module):
    """A forward process with Gaussian conditionals. Subclasses define the four schedules."""

    t_min: eqx.AbstractVar[float]
    t_max: eqx.AbstractVar[float]

    def __check_init__(self):
        # Every process's times (equinox runs this check after those of the subclasses).
        check_positive("t_min", self.t_min)
        check_less("t_min", self.t_min, "t_max", self.t_max)

    @abc.abstractmethod
    def alpha(self, t: Scalar) -> Array:
        """Signal scale ``alpha_t``."""

    @abc.abstractmethod
    def sigma(self, t: Scalar) -> Array:
        """Noise scale ``sigma_t``."""

    @abc.abstractmethod
    def dlog_alpha(self, t: Scalar) -> Array:
        """``d log alpha_t / dt`` (the drift coefficient)."""

    @abc.abstractmethod
    def g2(self, t: Scalar) -> Array:
        """``g(t)^2 = d(sigma^2)/dt - 2 (d log alpha/dt) sigma^2`` (formal for the interpolant)."""

    @property
    def has_sde(self) -> bool:
        """Whether the process is defined by a forward SDE (False for the linear interpolant)."""
        return True

    @property
    def t0(self) -> float:
        """Smallest time at which ``alpha``/``sigma`` are defined."""
        return 0.0

    def check_time(self, t, name: str = "t") -> None:
        """Raise ``ValueError`` if a concrete ``t`` is outside ``[t0, t_max]``."""
        check_time(name, t, self.t0, self.t_max, type(self).__name__)

    def drift(self, x: Float[Array, "*shape"], t: Scalar) -> Float[Array, "*shape"]:
        """SDE drift ``f(x, t) = (d log alpha_t / dt) x``."""
        self._require_sde("drift")
        return self.dlog_alpha(t) * x

    def diffusion(self, t: Scalar) -> Array:
        """SDE diffusion coefficient ``g(t)``."""
        self._require_sde("diffusion")
        return jnp.sqrt(self.g2(t))

    def dalpha(self, t: Scalar) -> Array:
        """``d alpha_t / dt``."""
        return self.dlog_alpha(t) * self.alpha(t)

    def dsigma(self, t: Scalar) -> Array:
        """``d sigma_t / dt = (g^2/2 + (d log alpha/dt) sigma^2) / sigma``."""
        s = self.sigma(t)
        return (0.5 * self.g2(t) + self.dlog_alpha(t) * s**2) / s

    def snr(self, t: Scalar) -> Array:
        """Signal-to-noise ratio ``alpha_t^2 / sigma_t^2``."""
        return (self.alpha(t) / self.sigma(t)) ** 2

    def sample_marginal(
        self, x0: Float[Array, "*shape"], t: Scalar, *, key: PRNGKeyArray
    ) -> tuple[Float[Array, "*shape"], Float[Array, "*shape"]]:
        """Draw ``x_t = alpha_t x0 + sigma_t eps``; returns ``(x_t, eps)``."""
        self.check_time(t)
        eps = jax.random.normal(key, jnp.shape(x0), dtype=jnp.result_type(x0, float))
        return self.alpha(t) * x0 + self.sigma(t) * eps, eps

    def prior_sample(self, shape: tuple[int, ...], *, key: PRNGKeyArray, dtype=None) -> Array:
        """Samples of the prior ``N(0, sigma(t_max)^2 I)``, shape ``shape``."""
        dtype = dtype or jnp.result_type(float)
        return self.sigma(self.t_max) * jax.random.normal(key, shape, dtype=dtype)

    def prior_log_density(self, x: Float[Array, "*shape"]) -> Array:
        """Log-density of the prior ``N(0, sigma(t_max)^2 I)`` at one sample ``x``."""
        s2 = self.sigma(self.t_max) ** 2
        d = x.size
        return -0.5 * jnp.sum(x**2) / s2 - 0.5 * d * jnp.log(2 * jnp.pi * s2)

    def _require_sde(self, what: str) -> None:
        if not self.has_sde:
            raise ValueError(
                f"{type(self).__name__} defines only a velocity (flow), not a forward SDE: "
                f"`{what}` is undefined. Use wgfm.fields.wgf_velocity or velocity_coefficients."
            )

    def velocity_coefficients(self, t: Scalar) -> tuple[Array, Array]:
        """``(a_t, b_t)`` with WGF velocity ``v = a_t x + b_t grad log p_t`` (``b_t = -g^2/2``)."""
        return self.dlog_alpha(t), -0.5 * self.g2(t)


# ---------------------------------------------------------------------------------------------
# Variance-preserving family (alpha^2 + sigma^2 = 1): beta(t) = -2 d log alpha / dt = g^2.


class _AbstractLinearBeta(AbstractProcess):
    """The linear ``beta(t) = beta_min + t (beta_max - beta_min)`` on ``[0, t_max]`` and its
    ``alpha_t = exp(-B(t)/2)``, ``B`` the integral of ``beta``: VP and sub-VP differ in sigma."""

    beta_min: eqx.AbstractVar[float]
    beta_max: eqx.AbstractVar[float]

    def __check_init__(self):
        check_positive("beta_min", self.beta_min)
        check_positive("beta_max", self.beta_max)
        if self.beta_min > self.beta_max:
            raise ValueError(
                f"`beta_min` must be <= `beta_max`, got {self.beta_min}, {self.beta_max}."
            )

    def _B(self, t):
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def beta(self, t: Scalar) -> Array:
        return self.beta_min + (self.beta_max - self.beta_min) * _f(t)

    def alpha(self, t):
        self.check_time(t)
        return jnp.exp(-0.5 * self._B(t))

    def dlog_alpha(self, t):
        return -0.5 * self.beta(t)


class VP(_AbstractLinearBeta):
    """VP SDE with linear ``beta(t) = beta_min + t (beta_max - beta_min)`` on ``[0, t_max]``."""

    beta_min: float = 0.1
    beta_max: float = 20.0
    t_min: float = 1e-3
    t_max: float = 1.0

    def sigma(self, t):
        self.check_time(t)
        return jnp.sqrt(-jnp.expm1(-self._B(t)))

    def g2(self, t):
        return self.beta(t)


class OU(AbstractProcess):
    """Ornstein–Uhlenbeck process ``dx = -beta/2 x dt + sqrt(beta) dW`` (constant beta)."""

    beta: float = 1.0
    t_min: float = 1e-3
    t_max: float = 8.0

    def __check_init__(self):
        check_positive("beta", self.beta)

    def alpha(self, t):
        self.check_time(t)
        return jnp.exp(-0.5 * self.beta * _f(t))

    def sigma(self, t):
        self.check_time(t)
        return jnp.sqrt(-jnp.expm1(-self.beta * _f(t)))

    def dlog_alpha(self, t):
        return jnp.full_like(_f(t), -0.5 * self.beta)

    def g2(self, t):
        return jnp.full_like(_f(t), self.beta)


class VPCosine(AbstractProcess):
    """VP with the cosine schedule ``alphabar = cos^2(phi_t) / cos^2(phi_0)``,
    ``phi_t = (t + s)/(1 + s) * pi/2`` (Nichol & Dhariwal). ``alphabar(1) = 0`` is singular, so
    ``t_max`` defaults to 0.995."""

    s: float = 0.008
    t_min: float = 1e-3
    t_max: float = 0.995

    def __check_init__(self):
        check_positive("s", self.s)
        if self.t_max >= 1.0:
            raise ValueError(f"`t_max` must be < 1 (alphabar(1) = 0), got {self.t_max}.")

    def _phi(self, t):
        return (_f(t) + self.s) / (1 + self.s) * (jnp.pi / 2)

    def alphabar(self, t: Scalar) -> Array:
        return (jnp.cos(self._phi(t)) / math.cos(self.s / (1 + self.s) * math.pi / 2)) ** 2

    def alpha(self, t):
        self.check_time(t)
        return jnp.cos(self._phi(t)) / math.cos(self.s / (1 + self.s) * math.pi / 2)

    def sigma(self, t):
        self.check_time(t)
        # 1 - cos^2 phi / cos^2 phi0 = sin(phi - phi0) sin(phi + phi0) / cos^2 phi0, exact at t -> 0.
        p0 = self.s / (1 + self.s) * math.pi / 2
        p = self._phi(t)
        return jnp.sqrt(jnp.sin(p - p0) * jnp.sin(p + p0)) / math.cos(p0)

    def dlog_alpha(self, t):
        return -jnp.tan(self._phi(t)) * (jnp.pi / 2) / (1 + self.s)

    def g2(self, t):
        return -2.0 * self.dlog_alpha(t)


class VPSigmoid(AbstractProcess):
    """VP with the authors' sigmoid schedule (start=-3, end=3, tau=1):
    ``alphabar(t) = (S(end/tau) - S((t (end-start) + start)/tau)) / (S(end/tau) - S(start/tau))``.
    ``alphabar(1) = 0`` is singular, so ``t_max`` defaults to 0.999."""

    start: float = -3.0
    end: float = 3.0
    tau: float = 1.0
    t_min: float = 1e-3
    t_max: float = 0.999

    def __check_init__(self):
        check_positive("tau", self.tau)
        check_less("start", self.start, "end", self.end)
        if self.t_max >= 1.0:
            raise ValueError(f"`t_max` must be < 1 (alphabar(1) = 0), got {self.t_max}.")

    def _u(self, t):
        return (_f(t) * (self.end - self.start) + self.start) / self.tau

    def _z(self):
        return _sig(self.end / self.tau) - _sig(self.start / self.tau)

    def alphabar(self, t: Scalar) -> Array:
        return (_sig(self.end / self.tau) - jax.nn.sigmoid(self._u(t))) / self._z()

    def alpha(self, t):
        self.check_time(t)
        return jnp.sqrt(self.alphabar(t))

    def sigma(self, t):
        self.check_time(t)
        # 1 - alphabar = (S(u) - S(start/tau)) / Z, accurate near t = 0.
        return jnp.sqrt((jax.nn.sigmoid(self._u(t)) - _sig(self.start / self.tau)) / self._z())

    def dlog_alpha(self, t):
        su = jax.nn.sigmoid(self._u(t))
        rate = su * (1 - su) * (self.end - self.start) / self.tau
        return -0.5 * rate / (_sig(self.end / self.tau) - su)

    def g2(self, t):
        return -2.0 * self.dlog_alpha(t)

    def discrete_schedule(self, num_steps: int = 1000) -> tuple[np.ndarray, np.ndarray]:
        """DDPM steps ``k = 0..K-1``: returns ``(t_k, alphabar_k)`` with ``t_k = (k + 1)/K``.

        Per-step ``beta_k = 1 - alphabar((k+1)/K) / alphabar(k/K)`` clipped at 0.999 and
        ``alphabar_k = prod_{i <= k} (1 - beta_i)``; equal to ``alphabar(t_k)`` wherever no clip
        was active (all but the last step for the default schedule)."""
        return discrete_schedule(self, num_steps)


class DiscreteVP(AbstractProcess):
    """VP process of a discrete DDPM schedule ``beta_0 .. beta_{K-1}`` (e.g. a diffusers scheduler).

    Convention (as :func:`discrete_schedule`): training step ``k`` sits at ``t_k = (k+1)/K``, so
    ``alphabar(t_k) = prod_{i<=k} (1 - beta_i)`` (diffusers' ``alphas_cumprod[k]``) and
    ``alphabar(0) = 1``. Between grid points ``log alphabar`` is linear in ``t``: ``d log alpha/dt``
    is piecewise constant and ``g^2 = -2 d log alpha/dt = -K log(1 - beta_k)`` on
    ``((k)/K, (k+1)/K]`` (-> ``K beta_k``, the continuous-time VP rate). ``betas`` is kept as a
    static tuple of Python floats: exact, hashable, and folded into compiled code as constants.
    Build it with :meth:`from_betas`."""

    betas: tuple[float, ...] = eqx.field(static=True)
    t_min: float
    t_max: float

    def __check_init__(self):
        b = np.asarray(self.betas, np.float64)
        if b.ndim != 1 or b.size < 2 or not np.all((b > 0) & (b <= 1)):
            raise ValueError(
                f"`betas` must be >= 2 values in (0, 1], got {b.size} values "
                f"in [{b.min(initial=np.inf)}, {b.max(initial=-np.inf)}]."
            )
        if self.t_max > 1.0 or (b[-1] >= 1.0 and self.t_max > (b.size - 1) / b.size):
            raise ValueError(
                f"`t_max` must be <= 1 (and < 1 if alphabar(1) = 0), got {self.t_max}."
            )

    @classmethod
    def from_betas(cls, betas, t_min: float | None = None, t_max: float | None = None):
        """From per-step ``betas`` (length K). Defaults: ``t_min = 1/K`` (training step 0),
        ``t_max = 1`` (step K-1), or ``(K-1)/K`` if the last beta is 1 (zero terminal SNR)."""
        b = tuple(float(v) for v in np.asarray(betas, np.float64).reshape(-1))
        k = len(b)
        t_max = t_max if t_max is not None else ((k - 1) / k if b and b[-1] >= 1.0 else 1.0)
        t_min = t_min if t_min is not None else 1.0 / max(k, 1)
        return cls(betas=b, t_min=t_min, t_max=t_max)

    @property
    def num_steps(self) -> int:
        return len(self.betas)

    def alphas_cumprod(self) -> np.ndarray:
        """``alphabar`` at the K training steps, float64 on the host."""
        return np.cumprod(1.0 - np.asarray(self.betas, np.float64))

    def _grid(self, t):
        t = _f(t)
        with np.errstate(divide="ignore"):
            log_ab = np.concatenate([[0.0], np.cumsum(np.log1p(-np.asarray(self.betas)))])
        # A zero-SNR last step has log alphabar = -inf; -1e4 keeps the interpolation finite and
        # still gives alphabar = exp(-1e4) = 0 exactly.
        log_ab = np.maximum(log_ab, -1e4)
        return t * self.num_steps, jnp.asarray(log_ab, t.dtype)

    def log_alphabar(self, t: Scalar) -> Array:
        s, log_ab = self._grid(t)
        return jnp.interp(s, jnp.arange(log_ab.shape[0], dtype=s.dtype), log_ab)

    def alpha(self, t):
        return jnp.exp(0.5 * self.log_alphabar(t))

    def sigma(self, t):
        return jnp.sqrt(-jnp.expm1(self.log_alphabar(t)))

    def dlog_alpha(self, t):
        s, log_ab = self._grid(t)
        j = jnp.clip(jnp.floor(s).astype(jnp.int32), 0, self.num_steps - 1)
        return 0.5 * self.num_steps * (log_ab[j + 1] - log_ab[j])

    def g2(self, t):
        return -2.0 * self.dlog_alpha(t)


class SubVP(_AbstractLinearBeta):
    """Sub-VP SDE (Song et al.): alpha as the linear VP, ``sigma = 1 - alpha^2``,
    ``g^2 = beta (1 - alpha^4)``."""

    beta_min: float = 0.1
    beta_max: float = 20.0
    t_min: float = 1e-3
    t_max: float = 1.0

    def sigma(self, t):
        self.check_time(t)
        return -jnp.expm1(-self._B(t))

    def g2(self, t):
        return self.beta(t) * -jnp.expm1(-2.0 * self._B(t))


class _AbstractVarianceExploding(AbstractProcess):
    """``alpha = 1``: the noise alone grows (``d log alpha/dt = 0``, ``g^2 = d(sigma^2)/dt``)."""

    def alpha(self, t):
        self.check_time(t)
        return jnp.ones_like(_f(t))

    def dlog_alpha(self, t):
        return jnp.zeros_like(_f(t))


class VE(_AbstractVarianceExploding):
    """VE SDE with geometric ``sigma_t = sigma_min (sigma_max/sigma_min)^t``, ``alpha = 1``."""

    sigma_min: float = 0.01
    sigma_max: float = 50.0
    t_min: float = 1e-5
    t_max: float = 1.0

    def __check_init__(self):
        check_positive("sigma_min", self.sigma_min)
        check_less("sigma_min", self.sigma_min, "sigma_max", self.sigma_max)

    def sigma(self, t):
        self.check_time(t)
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** _f(t)

    def g2(self, t):
        return self.sigma(t) ** 2 * (2 * math.log(self.sigma_max / self.sigma_min))


class _AbstractInterpolant(AbstractProcess):
    """A flow ``x_t = alpha_t x0 + sigma_t eps`` with ``alpha_1 = 0``, not an SDE: ``drift`` and
    ``diffusion`` raise, the formal coefficients are singular at ``t = 1`` (hence
    ``t_max < 1``), and the prior is the standard normal."""

    def __check_init__(self):
        if self.t_max >= 1.0:
            raise ValueError(f"`t_max` must be < 1 (alpha(1) = 0), got {self.t_max}.")

    @property
    def has_sde(self) -> bool:
        return False

    def prior_sample(self, shape, *, key, dtype=None):
        dtype = dtype or jnp.result_type(float)
        return jax.random.normal(key, shape, dtype=dtype)

    def prior_log_density(self, x):
        return -0.5 * jnp.sum(x**2) - 0.5 * x.size * jnp.log(2 * jnp.pi)


class LinearInterpolant(_AbstractInterpolant):
    """Rectified flow ``x_t = (1 - t) x0 + t eps`` on ``[0, 1]``: a flow, not an SDE.

    ``drift``/``diffusion`` raise; the velocity ``v = a x + b grad log p`` uses the formal
    coefficients ``a = -1/(1-t)``, ``g^2 = 2t/(1-t)``, singular at ``t = 1`` (hence
    ``t_max = 0.999``) — integrate between ``t_min`` and ``t_max``."""

    t_min: float = 1e-3
    t_max: float = 0.999

    def alpha(self, t):
        self.check_time(t)
        return 1.0 - _f(t)

    def sigma(self, t):
        self.check_time(t)
        return _f(t)

    def dlog_alpha(self, t):
        return -1.0 / (1.0 - _f(t))

    def g2(self, t):
        t = _f(t)
        return 2.0 * t / (1.0 - t)


class ShiftedInterpolant(_AbstractInterpolant):
    """The linear interpolant in shifted time: ``x_t = (1 - s_t) x0 + s_t eps`` with
    ``s_t = shift t / (1 + (shift - 1) t)`` (the timestep shift of Esser et al. 2024, eq. 23;
    diffusers' ``FlowMatchEulerDiscreteScheduler(shift=...)``). ``shift = 1`` is
    :class:`LinearInterpolant`. So ``alpha_t = (1 - t) / (1 + (shift - 1) t)``,
    ``d sigma/dt = shift / (1 + (shift - 1) t)^2``, ``d log alpha/dt = -shift / ((1 - t)(1 +
    (shift - 1) t))`` and the formal ``g^2 = 2 sigma sigma' / (1 - sigma)``: a flow, not an SDE,
    singular at ``t = 1`` (hence ``t_max < 1``)."""

    shift: float = 1.0
    t_min: float = 1e-3
    t_max: float = 0.999

    def __check_init__(self):
        check_positive("shift", self.shift)

    def _d(self, t):
        return 1.0 + (self.shift - 1.0) * _f(t)

    def alpha(self, t):
        self.check_time(t)
        # (1 - t) / D rather than 1 - sigma: exact as t -> 1.
        return (1.0 - _f(t)) / self._d(t)

    def sigma(self, t):
        self.check_time(t)
        return self.shift * _f(t) / self._d(t)

    def dsigma(self, t):
        return self.shift / self._d(t) ** 2

    def dlog_alpha(self, t):
        return -self.shift / ((1.0 - _f(t)) * self._d(t))

    def g2(self, t):
        t = _f(t)
        return 2.0 * self.shift**2 * t / (self._d(t) ** 2 * (1.0 - t))

    def time_of_sigma(self, sigma: Scalar) -> Array:
        """The inverse of ``sigma_t``: ``t = sigma / (shift - (shift - 1) sigma)``."""
        s = _f(sigma)
        return s / (self.shift - (self.shift - 1.0) * s)


class EDM(_AbstractVarianceExploding):
    """EDM (Karras et al.): ``alpha = 1``, ``sigma = t``, ``g = sqrt(2 t)``, on [0.002, 80]."""

    t_min: float = 0.002
    t_max: float = 80.0

    def sigma(self, t):
        self.check_time(t)
        return _f(t)

    def g2(self, t):
        return 2.0 * _f(t)


# ---------------------------------------------------------------------------------------------


def _f(t) -> Array:
    """``t`` as a floating array, keeping its dtype if it already is one."""
    return jnp.asarray(t, dtype=jnp.result_type(t, float))


def _sig(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def discrete_schedule(
    process: VPSigmoid | VPCosine | DiscreteVP, num_steps: int = 1000, max_beta: float = 0.999
) -> tuple[np.ndarray, np.ndarray]:
    """DDPM discretisation of a continuous VP schedule: ``(t_k, alphabar_k)``, ``k = 0..K-1``.

    ``t_k = (k+1)/K``; ``beta_k = min(1 - alphabar(t_k)/alphabar(t_{k-1}), max_beta)``;
    ``alphabar_k = prod_{i<=k}(1 - beta_i)`` (computed in float64 on the host). A
    :class:`DiscreteVP` is its own discretisation (``num_steps`` must be its K)."""
    if int(num_steps) < 2:
        raise ValueError(f"`num_steps` must be an integer >= 2, got {num_steps!r}.")
    if isinstance(process, DiscreteVP):
        if int(num_steps) != process.num_steps:
            raise ValueError(
                f"`num_steps` must be the DiscreteVP's {process.num_steps} steps, got {num_steps}."
            )
        return np.arange(1, num_steps + 1) / num_steps, process.alphas_cumprod()
    k = np.arange(num_steps + 1, dtype=np.float64) / num_steps
    ab = np.asarray(_alphabar_host(process, k), dtype=np.float64)
    ab[-1] = 0.0 if ab[-1] < 1e-300 else ab[-1]
    betas = np.minimum(1.0 - ab[1:] / ab[:-1], max_beta)
    return k[1:], np.cumprod(1.0 - betas)


def _alphabar_host(process, t: np.ndarray) -> np.ndarray:
    if isinstance(process, VPSigmoid):
        u = (t * (process.end - process.start) + process.start) / process.tau
        s = 1 / (1 + np.exp(-u))
        return (_sig(process.end / process.tau) - s) / process._z()
    if isinstance(process, VPCosine):
        phi = (t + process.s) / (1 + process.s) * np.pi / 2
        return np.cos(phi) ** 2 / math.cos(process.s / (1 + process.s) * math.pi / 2) ** 2
    raise ValueError(f"`process` must be VPSigmoid or VPCosine, got {type(process).__name__}.")


ALL_PROCESSES: dict[str, Callable[[], AbstractProcess]] = {
    "vp": VP,
    "ou": OU,
    "vp-cosine": VPCosine,
    "vp-sigmoid": VPSigmoid,
    "sub-vp": SubVP,
    "ve": VE,
    "interpolant": LinearInterpolant,
    "edm": EDM,
}
