"""Per-example training losses, time weightings and time samplers (docs/design.md §1).

All losses take a ``model`` field ``(x, t) -> prediction``, one clean example ``x0``, a time ``t``
and the noise ``eps`` (drawn by the caller from an explicit key), form
``x_t = alpha_t x0 + sigma_t eps`` and return the *unweighted* squared error summed over
coordinates. Multiply by a weighting of ``t`` and average over the batch outside.

Checks (``ValueError`` naming the argument): ``eps`` and the model's output must have ``x0``'s
shape and ``t`` must be a scalar (static shapes: checked under ``jit``/``vmap`` too); a concrete
``t`` must lie in ``[t_min, t_max]`` (at ``t = 0`` the DSM target ``-eps / sigma_0`` is
infinite). A traced ``t`` is not checked: the samplers below only draw times in range.

Identities (exact, per example): with ``v_theta = a_t x_t + b_t (-eps_theta / sigma_t)``,
``fm_loss(v_theta) = eps_to_fm_weight(t) * eps_loss(eps_theta)``; ``dsm_loss * sigma_t^2 =
eps_loss`` for ``s_theta = -eps_theta / sigma_t``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ._checks import check_time
from .fields import Field, conditional_velocity
from .processes import AbstractProcess
from .typing import Scalar


def _predict(model: Field, process: AbstractProcess, x0: Array, t: Scalar, eps: Array) -> Array:
    """The model's prediction at ``x_t = alpha_t x0 + sigma_t eps``, after the edge checks."""
    if jnp.shape(eps) != jnp.shape(x0):
        raise ValueError(
            f"`eps` must have the shape of `x0` {jnp.shape(x0)}, got {jnp.shape(eps)}."
        )
    if jnp.ndim(t) != 0:
        raise ValueError(
            f"`t` must be a scalar (one time per example; vmap over examples), "
            f"got shape {jnp.shape(t)}."
        )
    check_time("t", t, process.t_min, process.t_max, f"the losses of {type(process).__name__}")
    pred = model(process.alpha(t) * x0 + process.sigma(t) * eps, t)
    if jnp.shape(pred) != jnp.shape(x0):
        raise ValueError(
            f"`model` must return an array shaped like `x0` {jnp.shape(x0)}, got {jnp.shape(pred)}."
        )
    return pred


def eps_loss(model: Field, process: AbstractProcess, x0: Array, t: Scalar, eps: Array) -> Array:
    """``||eps_theta(x_t, t) - eps||^2`` (DDPM's objective)."""
    return jnp.sum((_predict(model, process, x0, t, eps) - eps) ** 2)


def dsm_loss(model: Field, process: AbstractProcess, x0: Array, t: Scalar, eps: Array) -> Array:
    """Denoising score matching ``||s_theta(x_t, t) - grad log p(x_t | x0)||^2``,
    with ``grad log p(x_t | x0) = -eps / sigma_t``."""
    pred = _predict(model, process, x0, t, eps)
    return jnp.sum((pred + eps / process.sigma(t)) ** 2)


def x0_loss(model: Field, process: AbstractProcess, x0: Array, t: Scalar, eps: Array) -> Array:
    """``||x0_theta(x_t, t) - x0||^2``."""
    return jnp.sum((_predict(model, process, x0, t, eps) - x0) ** 2)


def fm_loss(model: Field, process: AbstractProcess, x0: Array, t: Scalar, eps: Array) -> Array:
    """WGF flow matching ``||v_theta(x_t, t) - u_t(x0, eps)||^2`` with
    ``u_t = alpha_t' x0 + sigma_t' eps``; its minimiser is the WGF velocity ``v_t``."""
    pred = _predict(model, process, x0, t, eps)
    return jnp.sum((pred - conditional_velocity(process, x0, eps, t)) ** 2)


LOSSES: dict[str, Callable[..., Array]] = {
    "eps": eps_loss,
    "score": dsm_loss,
    "x0": x0_loss,
    "velocity": fm_loss,
}


def get_loss(kind: str) -> Callable[..., Array]:
    """The loss whose minimiser predicts ``kind`` ('eps', 'score', 'x0' or 'velocity')."""
    if kind not in LOSSES:
        raise ValueError(f"`kind` must be one of {tuple(LOSSES)}, got {kind!r}.")
    return LOSSES[kind]


# ---------------------------------------------------------------------------------------------
# Time weightings w(t): the training objective is E_t[w(t) loss(t)].


def uniform_weight(process: AbstractProcess, t: Scalar) -> Array:
    """``w(t) = 1``."""
    return jnp.ones_like(process.sigma(t))


def likelihood_weight(process: AbstractProcess, t: Scalar) -> Array:
    """``w(t) = g(t)^2`` for the DSM loss (Song et al. 2021: bounds the KL / NLL)."""
    return process.g2(t)


def sigma2_weight(process: AbstractProcess, t: Scalar) -> Array:
    """``w(t) = sigma_t^2`` for the DSM loss (Song et al. 2021's default): equals the eps loss."""
    return process.sigma(t) ** 2


def min_snr_weight(process: AbstractProcess, t: Scalar, gamma: float = 5.0) -> Array:
    """Min-SNR-gamma for the eps loss: ``w(t) = min(SNR_t, gamma) / SNR_t`` (Hang et al.)."""
    snr = process.snr(t)
    return jnp.minimum(snr, gamma) / snr


def eps_to_fm_weight(process: AbstractProcess, t: Scalar) -> Array:
    """``(g_t^2 / (2 sigma_t))^2``: the eps loss times this is the velocity flow-matching loss
    of ``v_theta = a_t x + b_t (-eps_theta / sigma_t)``, exactly."""
    return (0.5 * process.g2(t) / process.sigma(t)) ** 2


WEIGHTINGS: dict[str, Callable[[AbstractProcess, Scalar], Array]] = {
    "uniform": uniform_weight,
    "likelihood": likelihood_weight,
    "sigma2": sigma2_weight,
    "min-snr": min_snr_weight,
    "eps-to-fm": eps_to_fm_weight,
}


def get_weighting(name: str) -> Callable[[AbstractProcess, Scalar], Array]:
    """A weighting by name: one of ``WEIGHTINGS``."""
    if name not in WEIGHTINGS:
        raise ValueError(f"`weighting` must be one of {tuple(WEIGHTINGS)}, got {name!r}.")
    return WEIGHTINGS[name]


# ---------------------------------------------------------------------------------------------
# Time samplers on [t_min, t_max].


def uniform_times(
    n: int, *, key: PRNGKeyArray, t_min: float, t_max: float, dtype=None
) -> Float[Array, " n"]:
    """``n`` i.i.d. uniform times in ``[t_min, t_max]``."""
    u = jax.random.uniform(key, (n,), dtype=dtype or jnp.result_type(float))
    return t_min + (t_max - t_min) * u


def stratified_times(
    n: int, *, key: PRNGKeyArray, t_min: float, t_max: float, dtype=None
) -> Float[Array, " n"]:
    """One uniform time in each of ``n`` equal strata of ``[t_min, t_max]`` (lower variance)."""
    u = jax.random.uniform(key, (n,), dtype=dtype or jnp.result_type(float))
    return t_min + (t_max - t_min) * (jnp.arange(n, dtype=u.dtype) + u) / n


def low_discrepancy_times(
    n: int, *, key: PRNGKeyArray, t_min: float, t_max: float, dtype=None
) -> Float[Array, " n"]:
    """Variational-diffusion style ``(u0 + i/n) mod 1``: one shared uniform shift, evenly spaced."""
    u0 = jax.random.uniform(key, (), dtype=dtype or jnp.result_type(float))
    u = jnp.mod(u0 + jnp.arange(n, dtype=u0.dtype) / n, 1.0)
    return t_min + (t_max - t_min) * u


TIME_SAMPLERS = {
    "uniform": uniform_times,
    "stratified": stratified_times,
    "low-discrepancy": low_discrepancy_times,
}
