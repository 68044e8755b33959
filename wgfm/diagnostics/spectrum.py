"""The effective rank of a Jacobian's skew part, exactly and from the probes drawn anyway.

``M = J - J^T``; its effective rank ``r_eff = ||M||_F^4 / ||M^T M||_F^2`` (between 1 and the
rank of ``M``; ``2k`` for ``k`` equal pairs of singular values, ``D`` for an orthogonal ``M``)
decides how many probes the VJP estimator needs: one probe's term ``a = ||M v||^2 = v^T B v``
(``B = M^T M``) has mean ``tr B = ||M||_F^2`` and, for Gaussian ``v``, variance
``2 ||B||_F^2``, so its relative variance is ``2 / r_eff`` and the ratio's (half of it,
``lambda ~ sqrt(A)``) about ``1 / (2 r_eff)`` per probe.

**The estimator.** From the ``K`` per-probe terms ``a_k`` (:func:`wgfm.diagnostics.jacobian.
probe_terms`, ``method="vjp"``), with ``abar`` their mean and ``s^2`` their unbiased variance:

    ``r_hat = 2 (abar^2 - s^2 / K) / s^2``.

The numerator is unbiased for ``(E a)^2`` (``E abar^2 = (E a)^2 + Var a / K``) and ``s^2`` for
``Var a``; the ratio is consistent, not unbiased (``E[1 / s^2] > 1 / Var a``: it overstates
``r_eff`` by a relative ``O(1 / K)``; the tests bound it). It is computed as ``1 / r_hat`` so
that ``s^2 = 0`` (every probe saw the same ``||M v||``) gives ``r_hat = inf``, not NaN.

**Rademacher probes** (the default) have ``Var a = 2 (||B||_F^2 - sum_i B_ii^2)``: no
variance from ``B``'s diagonal, so ``r_hat`` estimates ``r_R = ||M||_F^4 / (||B||_F^2 -
sum_i B_ii^2) >= r_eff`` (:func:`rademacher_rank`), the number that sets their probe count.
Since ``sum_i B_ii^2 >= ||M||_F^4 / D`` (Cauchy-Schwarz over the column norms ``B_ii``),
``r_eff <= 1 / (1 / r_R + 1 / D)``, with equality when ``M``'s columns have equal norms (the
skew part spread over all coordinates); :func:`estimate_effective_rank` returns that bound.

The forward estimator's per-probe terms (``2 ||J v||^2 - 2 v . J J v``) are not ``||M v||^2``
and say nothing about ``M``'s spectrum alone: there is no estimate from them.
"""

from __future__ import annotations

from typing import Literal

import jax.numpy as jnp
from jaxtyping import Array, Float

from .jacobian import ProbeKind


def skew_effective_rank(jac: Float[Array, "d d"]) -> Array:
    """The exact effective rank ``||M||_F^4 / ||M^T M||_F^2`` of the skew part ``M = J - J^T``:
    over how many directions the asymmetry is spread (module docstring).

    Args:
        jac: the Jacobian, shape ``(D, D)``.

    Returns:
        The rank, a scalar in ``[1, D]`` (0 for a symmetric ``J``).

    Raises:
        ValueError: ``jac`` not square.
    """
    if jnp.ndim(jac) != 2 or jnp.shape(jac)[0] != jnp.shape(jac)[1]:
        raise ValueError(f"`jac` must be a square (D, D) matrix, got shape {jnp.shape(jac)}.")
    m = jac - jac.T
    b2 = jnp.sum((m.T @ m) ** 2)
    return jnp.where(b2 > 0, jnp.sum(m**2) ** 2 / jnp.where(b2 > 0, b2, 1.0), 0.0)


def rademacher_rank(jac: Float[Array, "d d"]) -> Array:
    """Exact ``||M||_F^4 / (||B||_F^2 - sum_i B_ii^2)``, ``B = M^T M``: what ``r_hat`` estimates
    with Rademacher probes (inf when their terms do not vary, e.g. an orthogonal ``M``)."""
    m = jac - jac.T
    b = m.T @ m
    var = jnp.sum(b**2) - jnp.sum(jnp.diag(b) ** 2)
    return jnp.sum(m**2) ** 2 / var


def inverse_rank_from_terms(a2: Float[Array, " k"], mask: Array | None = None) -> Array:
    """``1 / r_hat = s^2 / (2 (abar^2 - s^2 / K))`` from the VJP terms ``a_k = ||M v_k||^2``
    over the probes where ``mask`` is true (module docstring; inf for fewer than 2 probes or
    where ``abar^2 <= s^2 / K``, a spread the probes cannot tell from ``abar``)."""
    m = jnp.ones(a2.shape, bool) if mask is None else jnp.asarray(mask, bool)
    k = jnp.sum(m).astype(a2.dtype)
    kf = jnp.maximum(k, 2.0)
    mean = jnp.sum(jnp.where(m, a2, 0)) / kf
    var = jnp.sum(jnp.where(m, (a2 - mean) ** 2, 0)) / (kf - 1)
    num = 2 * (mean**2 - var / kf)
    ok = (k >= 2) & (num > 0)
    return jnp.where(ok, var / jnp.where(ok, num, 1.0), jnp.inf)


def estimate_effective_rank(
    a2: Float[Array, " k"], dim: int, *, kind: ProbeKind = "rademacher", mask: Array | None = None
) -> Array:
    """The skew part's effective rank from the VJP estimator's per-probe terms (module
    docstring): ``r_hat`` for Gaussian probes, ``1 / (1 / r_hat + 1 / D)`` for Rademacher ones
    (an upper bound on ``r_eff``, equal to it when ``M``'s columns have equal norms).

    Args:
        a2: ``(K,)`` terms ``||(J - J^T) v_k||^2``.
        dim: ``D``, the dimension of the probes.
        kind: the probes' distribution.
        mask: ``(K,)`` which terms count (all by default).

    Returns:
        A scalar: in ``(0, D]`` for Rademacher probes, ``> 0`` (``inf`` where the terms do not
        vary) for Gaussian ones; 0 where the spread is not resolved (fewer than 2 probes, or
        ``abar^2 <= s^2 / K``).

    Raises:
        ValueError: an unknown ``kind`` or ``dim < 1``.
    """
    if kind not in ("rademacher", "gaussian"):
        raise ValueError(f"`kind` must be 'rademacher' or 'gaussian', got {kind!r}.")
    if int(dim) < 1:
        raise ValueError(f"`dim` must be a positive integer, got {dim}.")
    inv = inverse_rank_from_terms(a2, mask)
    if kind == "gaussian":
        return 1.0 / inv
    return 1.0 / (inv + 1.0 / dim)


def probes_for_target(
    jac: Float[Array, "d d"],
    *,
    method: Literal["vjp", "forward"] = "vjp",
    kind: ProbeKind = "rademacher",
    target: float = 0.1,
) -> Array:
    """Probes the estimator ``method`` needs for a relative s.e. of ``target`` on ``lambda``
    at the Jacobian ``jac``, exactly (no sampling): the delta-method variance of one probe.

    Each per-probe term is a quadratic form ``v^T P v``: ``a = ||M v||^2`` has ``P = M^T M``
    (``"vjp"``), ``a = 2 ||J v||^2 - 2 v . J J v`` has ``P = 2 J^T J - J^2 - (J^2)^T``
    (``"forward"``), and ``f = ||J v||^2`` has ``J^T J``. The ratio's relative error per probe
    is that of ``u = (a / A - f / F) / 2 = v^T R v`` (:func:`wgfm.diagnostics.probe_asymmetry`),
    whose variance is ``2 ||R||_F^2`` for Gaussian probes and ``2 (||R||_F^2 - sum_i R_ii^2)``
    for Rademacher ones; ``K`` probes give ``Var(u) / K``, so ``K = Var(u) / target^2``.
    Each probe is two network passes. ``O(D^3)`` work on the ``D x D`` Jacobian: for
    benchmarks on exact Jacobians (``benchmarks/probe_passes.py``).

    Returns:
        A scalar (float; 0 for a symmetric ``jac``, whose ratio every probe gets exactly)."""
    if method not in ("vjp", "forward"):
        raise ValueError(f"`method` must be 'vjp' or 'forward', got {method!r}.")
    if kind not in ("rademacher", "gaussian"):
        raise ValueError(f"`kind` must be 'rademacher' or 'gaussian', got {kind!r}.")
    if not target > 0:
        raise ValueError(f"`target` must be > 0, got {target!r}.")
    jac = jnp.asarray(jac)
    if jac.ndim != 2 or jac.shape[0] != jac.shape[1]:
        raise ValueError(f"`jac` must be a square (D, D) matrix, got shape {jac.shape}.")
    m = jac - jac.T
    c = jac.T @ jac
    if method == "vjp":
        p = m.T @ m
    else:
        jj = jac @ jac
        p = 2 * c - jj - jj.T
    a, f = jnp.sum(m**2), jnp.sum(jac**2)
    zero = a == 0
    r = (p / jnp.where(zero, 1.0, a) - c / f) / 2
    var = 2 * jnp.sum(r**2)
    if kind == "rademacher":
        var = var - 2 * jnp.sum(jnp.diag(r) ** 2)
    return jnp.where(zero, 0.0, var / target**2)
