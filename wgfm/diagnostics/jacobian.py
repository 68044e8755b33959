"""Jacobians of a field: full, principal sub-blocks, exact and probe (Hutchinson) divergences.

All are forward mode: ``jax.linearize`` evaluates the field once, then the linear map
``v -> J v`` is applied to one-hot tangents (columns of ``J``) with ``jax.vmap``, in chunks of
``chunk_size`` via ``jax.lax.map(..., batch_size=)`` so memory stays bounded at image sizes.
Inputs ``x`` of any shape are flattened to ``D = x.size``; ``J[i, j] = d f_i / d x_j``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

from .._checks import concrete
from ..typing import Field, Scalar
from ._common import check_finite, flat_field

ProbeKind = Literal["rademacher", "gaussian"]


def _linearized(field: Field, x: Array, t: Scalar) -> tuple[Array, Callable[[Array], Array]]:
    """``(f(x) flat, v -> J v)``: one primal evaluation shared by every tangent (which must
    have the dtype of ``x``)."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"`x` must be a floating-point array, got dtype {x.dtype}.")
    fx, jvp = jax.linearize(flat_field(field, x, t), jnp.reshape(x, (-1,)))
    return fx, jvp


def _map_tangents(fn: Callable[[Array], Array], items: Array, chunk_size: int | None) -> Array:
    """``fn`` over the leading axis of ``items``: one ``vmap`` or ``lax.map`` in chunks."""
    if chunk_size is None or chunk_size >= items.shape[0]:
        return jax.vmap(fn)(items)
    if chunk_size < 1:
        raise ValueError(f"`chunk_size` must be a positive integer or None, got {chunk_size}.")
    return jax.lax.map(fn, items, batch_size=int(chunk_size))


# Tangents per pass of :func:`jacobian` by default. Under the caller's ``vmap`` over a batch,
# all D tangents at once make batch x D rows per layer, which leave the cache at D = 64 with a
# few hundred samples; small passes stay in it and cost ~nothing for one sample
# (benchmarks/README.md, "Jacobian default chunk").
JACOBIAN_CHUNK = 8


def jacobian(
    field: Field,
    x: Array,
    t: Scalar,
    *,
    chunk_size: int | None = JACOBIAN_CHUNK,
    checked: bool = True,
) -> Float[Array, "d d"]:
    """Exact Jacobian ``J[i, j] = d field_i / d x_j`` of the flattened field: ``D`` JVPs.

    Args:
        field: a field ``(x (*shape), t ()) -> (*shape)``.
        x: the point, any shape; ``D = x.size``.
        t: the time, a scalar.
        chunk_size: tangents per pass (None: all ``D`` at once); chunks bound memory.
        checked: raise on non-finite values (False: leave that to the caller, see
            :mod:`wgfm.diagnostics`; the same for every diagnostic that takes it).

    Returns:
        ``J``, shape ``(D, D)``.

    Raises:
        ValueError: ``x`` not floating point, or a non-finite value (``checked``).
    """
    fx, jvp = _linearized(field, x, t)
    d, dt = fx.shape[0], jnp.result_type(x)
    cols = _map_tangents(lambda j: jvp(jax.nn.one_hot(j, d, dtype=dt)), jnp.arange(d), chunk_size)
    return check_finite((cols.T, fx), x, t, "values or Jacobian entries", checked=checked)[0]


def sub_jacobian(
    field: Field,
    x: Array,
    t: Scalar,
    idx: Int[ArrayLike, " k"],
    *,
    chunk_size: int | None = None,
    checked: bool = True,
) -> Float[Array, "k k"]:
    """Principal block ``J[idx][:, idx]`` of the flattened field's Jacobian from ``k`` one-hot
    JVPs (not ``D``): a certificate, since an asymmetric block proves the field is not a gradient.

    Args:
        field: a field ``(x (*shape), t ()) -> (*shape)``.
        x: the point, any shape; ``D = x.size``.
        t: the time, a scalar.
        idx: ``k`` distinct flat coordinates in ``[0, D)``, shape ``(k,)``
            (:func:`random_indices`).
        chunk_size: tangents per pass (None: all at once; chunks bound memory and keep large
            networks in cache).
        checked: raise on non-finite values or bad indices.

    Returns:
        The block, shape ``(k, k)``.

    Raises:
        ValueError: ``idx`` not distinct integers in ``[0, D)``, or a non-finite value.
    """
    d = int(np.prod(jnp.shape(x)))
    idx = _check_indices(idx, d, checked=checked)
    fx, jvp = _linearized(field, x, t)
    dt = jnp.result_type(x)
    cols = _map_tangents(lambda j: jvp(jax.nn.one_hot(j, d, dtype=dt))[idx], idx, chunk_size)
    return check_finite((cols.T, fx), x, t, "values or Jacobian entries", checked=checked)[0]


def random_indices(key: PRNGKeyArray, dim: int, k: int) -> Int[Array, " k"]:
    """``k`` distinct coordinates out of ``dim``, uniformly (for :func:`sub_jacobian`).

    Args:
        key: the draw.
        dim: ``D``, the coordinates to choose from.
        k: how many, ``1 <= k <= dim``.

    Returns:
        Integer indices, shape ``(k,)``.

    Raises:
        ValueError: ``k`` outside ``[1, dim]``.
    """
    if not 0 < k <= dim:
        raise ValueError(f"`k` must lie in [1, dim={dim}], got {k}.")
    return jax.random.choice(key, dim, (k,), replace=False)


def divergence(
    field: Field, x: Array, t: Scalar, *, chunk_size: int | None = None, checked: bool = True
) -> Array:
    """Exact divergence ``div field = tr J = sum_i e_i^T J e_i``: ``D`` JVPs, never storing ``J``.

    Args:
        field: a field ``(x (*shape), t ()) -> (*shape)``.
        x: the point, any shape.
        t: the time, a scalar.
        chunk_size: tangents per pass (None: all at once).
        checked: raise on non-finite values.

    Returns:
        The divergence, a scalar.
    """
    div, fx = exact_trace(field, x, t, chunk_size=chunk_size)
    return check_finite((div, fx), x, t, "values or divergence", checked=checked)[0]


def exact_trace(
    field: Field, x: Array, t: Scalar, *, chunk_size: int | None = None
) -> tuple[Array, Array]:
    """``(div field, field(x) flat)`` without the finiteness check of :func:`divergence`: for
    ODE right-hand sides (``wgfm.transport``), which check the finished solve once instead of
    branching on every evaluation."""
    fx, jvp = _linearized(field, x, t)
    d, dt = fx.shape[0], jnp.result_type(x)
    diag = _map_tangents(
        lambda j: jvp(jax.nn.one_hot(j, d, dtype=dt))[j], jnp.arange(d), chunk_size
    )
    return jnp.sum(diag), fx


def probe_divergence(
    field: Field, x: Array, t: Scalar, probes: Float[Array, "k ..."], *, checked: bool = True
) -> Array:
    """Hutchinson estimate ``(1/K) sum_k v_k^T J v_k`` of the divergence (``E[v v^T] = I``).

    Pass the same probes for a whole ODE solve (resampling per step breaks adaptive solvers).

    Args:
        field: a field ``(x (*shape), t ()) -> (*shape)``.
        x: the point, any shape.
        t: the time, a scalar.
        probes: ``K`` probes, shape ``(K, *x.shape)`` (:func:`make_probes`).
        checked: raise on non-finite values.

    Returns:
        The estimate, a scalar.

    Raises:
        ValueError: ``probes`` not shaped ``(K, *x.shape)``.
    """
    shape = jnp.shape(x)
    if jnp.ndim(probes) != len(shape) + 1 or jnp.shape(probes)[1:] != shape:
        raise ValueError(
            f"`probes` must have shape (K, *x.shape) = (K, {', '.join(map(str, shape))}), "
            f"got {jnp.shape(probes)}."
        )
    est, fx = probe_trace(field, x, t, probes)
    return check_finite((est, fx), x, t, "values or probe divergence", checked=checked)[0]


def probe_trace(
    field: Field, x: Array, t: Scalar, probes: Float[Array, "k ..."]
) -> tuple[Array, Array]:
    """``(Hutchinson estimate, field(x) flat)`` without the finiteness check (see
    :func:`exact_trace`); ``probes`` as in :func:`probe_divergence`."""
    fx, jvp = _linearized(field, x, t)
    flat = jnp.reshape(probes, (probes.shape[0], -1)).astype(jnp.result_type(x))
    return jnp.mean(jax.vmap(lambda v: jnp.vdot(v, jvp(v)))(flat)), fx


def make_probes(
    key: PRNGKeyArray,
    num_probes: int,
    shape: tuple[int, ...],
    *,
    kind: ProbeKind = "rademacher",
    dtype=None,
) -> Float[Array, "k ..."]:
    """I.i.d. probes with ``E[v v^T] = I``: Rademacher (+-1) or standard normal.

    Args:
        key: the draw.
        num_probes: ``K``, at least 1.
        shape: each probe's shape.
        kind: ``"rademacher"`` or ``"gaussian"``.
        dtype: the probes' dtype (default: JAX's default float).

    Returns:
        The probes, shape ``(K, *shape)``.

    Raises:
        ValueError: ``num_probes < 1`` or an unknown ``kind``.
    """
    if int(num_probes) < 1:
        raise ValueError(f"`num_probes` must be a positive integer, got {num_probes}.")
    dtype = dtype or jnp.result_type(float)
    full = (int(num_probes), *tuple(shape))
    if kind == "rademacher":
        return jax.random.rademacher(key, full, dtype=dtype)
    if kind == "gaussian":
        return jax.random.normal(key, full, dtype=dtype)
    raise ValueError(f"`kind` must be 'rademacher' or 'gaussian', got {kind!r}.")


# ---------------------------------------------------------------------------------------------
# Asymmetry statistics (differential constraint: a gradient field has a symmetric Jacobian).


class Asymmetry(eqx.Module):
    """Asymmetry of one Jacobian (docs/design.md §1), each a scalar.

    Attributes:
        ratio: ``lambda = ||J - J^T||_F / ||J||_F``: 0 for a gradient, 2 for an antisymmetric
            ``J``; 0 when ``J = 0``.
        asym: QCSBM's ``Asym = ||J - J^T||_F^2 / 2``.
        nasym: QCSBM's ``NAsym = ||J - J^T||_F^2 / (4 ||J||_F^2)``.
        fro: ``||J||_F``.
        asym_fro: ``||J - J^T||_F``.
    """

    ratio: Array
    asym: Array
    nasym: Array
    fro: Array
    asym_fro: Array


def asymmetry(jac: Float[Array, "d d"]) -> Asymmetry:
    """The asymmetry statistics of a square Jacobian (docs/design.md §1; vmap for batches).

    Args:
        jac: the Jacobian, shape ``(D, D)`` (:func:`jacobian`, or a block of
            :func:`sub_jacobian`).

    Returns:
        Its :class:`Asymmetry`: ``lambda``, ``Asym``, ``NAsym`` and the two norms, scalars.

    Raises:
        ValueError: ``jac`` not square.
    """
    if jnp.ndim(jac) != 2 or jnp.shape(jac)[0] != jnp.shape(jac)[1]:
        raise ValueError(f"`jac` must be a square (D, D) matrix, got shape {jnp.shape(jac)}.")
    return _asym_from_squares(jnp.sum((jac - jac.T) ** 2), jnp.sum(jac**2))


def _asym_from_squares(a2: Array, f2: Array) -> Asymmetry:
    # 0 when J = 0 exactly; a non-finite J stays non-finite (`f2 > 0` would turn NaN into 0,
    # hiding it from a caller that checks the outputs, as unchecked sweeps do).
    zero = f2 == 0
    nasym = jnp.where(zero, 0.0, a2 / (4 * jnp.where(zero, 1.0, f2)))
    return Asymmetry(2 * jnp.sqrt(nasym), a2 / 2, nasym, jnp.sqrt(f2), jnp.sqrt(a2))


class ProbeAsymmetry(eqx.Module):
    """Probe estimates of a Jacobian's asymmetry (:func:`probe_asymmetry`), each a scalar.

    Attributes:
        asym_sq: unbiased estimate of ``||J - J^T||_F^2``.
        fro_sq: unbiased estimate of ``||J||_F^2``.
        asym_sq_se: its standard error.
        fro_sq_se: its standard error.
        stats: the two plugged into :class:`Asymmetry` (the ratio is then consistent, not
            unbiased).
        ratio_se: the standard error of ``stats.ratio`` (delta method, see
            :func:`probe_asymmetry`).
    """

    asym_sq: Array
    fro_sq: Array
    asym_sq_se: Array
    fro_sq_se: Array
    stats: Asymmetry
    ratio_se: Array


ProbeMethod = Literal["auto", "vjp", "forward"]


def probe_asymmetry(
    field: Field,
    x: Array,
    t: Scalar,
    *,
    key: PRNGKeyArray,
    num_probes: int,
    kind: ProbeKind = "rademacher",
    method: ProbeMethod = "auto",
    checked: bool = True,
) -> ProbeAsymmetry:
    """Unbiased probe estimates of ``||J - J^T||_F^2`` and ``||J||_F^2`` (``E[v v^T] = I``), ``J``
    never formed: ``E_v[v^T J J^T v - v^T J J v] = ||J - J^T||_F^2 / 2`` (docs/design.md §1).

    ``method``:

    - ``"vjp"``: ``||J v - J^T v||^2`` per probe, one JVP and one VJP (QCSBM's estimator).
    - ``"forward"``: ``2 ||J v||^2 - 2 v . J (J v)`` per probe, from
      ``||J - J^T||_F^2 = 2 ||J||_F^2 - 2 tr(J^2)``: two JVPs in sequence, no VJP, so it works
      for fields with forward-mode derivatives only (a ``jax.custom_jvp`` without a transpose).
      It is noisier: its relative standard error grows like ``1 / lambda`` where the VJP
      estimator's does not, so compare the returned standard errors.
    - ``"auto"``: ``"vjp"`` where the field can be transposed, else ``"forward"``.

    ``||J||_F^2`` is ``||J v||^2`` per probe either way.

    ``ratio_se``: the delta-method standard error of ``lambda = sqrt(A / F)`` (``A``, ``F`` the
    two means): ``lambda`` times the standard error of the mean of the per-probe terms
    ``(a_k / A - f_k / F) / 2``, which keeps the covariance of ``a_k`` and ``f_k`` (the form
    ``0.5 hypot(se_A / A, se_F / F)`` drops it, overstating the error when they move together,
    as they do per probe). Where ``A`` is within one standard error of 0 the linearisation
    fails, and ``A`` is replaced by ``se_A`` there: the s.e. is then ``~ sqrt(se_A / F) / 2``,
    the size of a ratio the probes cannot tell from 0. Infinite for one probe.

    Args:
        field: a field ``(x (*shape), t ()) -> (*shape)``.
        x: the point, any shape; ``D = x.size``.
        t: the time, a scalar.
        key: the probes.
        num_probes: ``K``.
        kind: ``"rademacher"`` or ``"gaussian"`` probes.
        method: ``"auto"``, ``"vjp"`` or ``"forward"`` (above).
        checked: raise on non-finite values.

    Returns:
        The :class:`ProbeAsymmetry`: both estimates, their standard errors, the plug-in
        statistics and the ratio's standard error, scalars.

    Raises:
        ValueError: ``method="vjp"`` for a field without a transpose, or a non-finite value.
    """
    x = jnp.asarray(x)
    fx_shape = (int(np.prod(jnp.shape(x))),)
    probes = make_probes(key, num_probes, fx_shape, kind=kind, dtype=jnp.result_type(x))
    a2, f2, fx = probe_terms(field, x, t, probes, method=method)
    a2, f2 = check_finite((a2, f2, fx), x, t, "values or probe estimates", checked=checked)[:2]
    return summarise_terms(a2, f2)


def probe_terms(
    field: Field,
    x: Array,
    t: Scalar,
    probes: Float[Array, "k d"],
    *,
    method: ProbeMethod = "auto",
) -> tuple[Float[Array, " k"], Float[Array, " k"], Float[Array, " d"]]:
    """The per-probe terms of :func:`probe_asymmetry` for the given flat probes ``(K, D)``:
    ``(a_k, f_k, field(x) flat)``, ``a_k`` the estimate of ``||J - J^T||_F^2`` (``||M v_k||^2``
    with ``M = J - J^T`` for ``"vjp"``) and ``f_k = ||J v_k||^2`` (``method`` as there)."""
    fx, jvp, vjp = probe_maps(field, x, t, method=method)
    a2, f2 = probe_terms_of(jvp, vjp, probes.astype(jnp.result_type(x)))
    return a2, f2, fx


def probe_maps(
    field: Field, x: Array, t: Scalar, *, method: ProbeMethod = "auto"
) -> tuple[Array, Callable[[Array], Array], Callable | None]:
    """``(field(x) flat, v -> J v, v -> (J^T v,) or None)``: one linearisation that every probe
    (and every round of :mod:`wgfm.diagnostics.adaptive`) shares; the transpose is None for
    ``method="forward"``, or for ``"auto"`` where the field has none."""
    if method not in ("auto", "vjp", "forward"):
        raise ValueError(f"`method` must be 'auto', 'vjp' or 'forward', got {method!r}.")
    fx, jvp = _linearized(field, x, t)
    vjp = None
    if method != "forward":
        try:
            vjp = jax.linear_transpose(jvp, jnp.reshape(x, (-1,)))
            jax.eval_shape(vjp, fx)  # a field without a transpose rule fails here, at trace time
        except (NotImplementedError, TypeError, ValueError) as e:
            if method == "vjp":
                raise ValueError(
                    f"`method='vjp'`: the field has no reverse-mode derivative ({e}); use "
                    "method='forward' (two JVPs per probe)."
                ) from e
            vjp = None
    return fx, jvp, vjp


def probe_terms_of(
    jvp: Callable[[Array], Array], vjp: Callable | None, probes: Float[Array, "k d"]
) -> tuple[Float[Array, " k"], Float[Array, " k"]]:
    """``(a_k, f_k)`` of :func:`probe_terms` from the maps of :func:`probe_maps`."""

    def one(v):
        jv = jvp(v)
        if vjp is not None:
            jtv = vjp(v.astype(jv.dtype))[0]
            return jnp.sum((jv - jtv) ** 2), jnp.sum(jv**2)
        jjv = jvp(jv.astype(v.dtype))
        return 2 * jnp.sum(jv**2) - 2 * jnp.vdot(v, jjv), jnp.sum(jv**2)

    return jax.vmap(one)(probes)


def summarise_terms(
    a2: Float[Array, " k"], f2: Float[Array, " k"], mask: Array | None = None
) -> ProbeAsymmetry:
    """:class:`ProbeAsymmetry` from per-probe terms (:func:`probe_terms`), over the probes where
    ``mask`` is true (all by default; a mask keeps shapes fixed for rounds drawn in a
    ``while_loop``, :mod:`wgfm.diagnostics.adaptive`)."""
    m = jnp.ones(a2.shape, bool) if mask is None else jnp.asarray(mask, bool)
    k = jnp.sum(m)
    kf = jnp.maximum(k, 1).astype(a2.dtype)

    def mean(s):
        return jnp.sum(jnp.where(m, s, 0)) / kf

    def se(s):
        var = jnp.sum(jnp.where(m, (s - mean(s)) ** 2, 0)) / jnp.maximum(kf - 1, 1)
        return jnp.where(k > 1, jnp.sqrt(var / kf), jnp.inf)

    a2m, f2m = mean(a2), mean(f2)
    a2se = se(a2)
    # The forward estimate of ||J - J^T||^2 is a difference and can fall below 0 with few
    # probes; the ratio takes it clipped at 0 (the unclipped mean stays in `asym_sq`).
    stats = _asym_from_squares(jnp.maximum(a2m, 0), f2m)
    return ProbeAsymmetry(a2m, f2m, a2se, se(f2), stats, _ratio_se(a2, f2, a2m, f2m, a2se, se))


def _ratio_se(a2: Array, f2: Array, a2m: Array, f2m: Array, a2se: Array, se) -> Array:
    """Delta-method s.e. of ``sqrt(mean a2 / mean f2)`` (see :func:`probe_asymmetry`)."""
    a_c = jnp.maximum(a2m, a2se)
    # 0 where the estimate is exact: J = 0 (ratio defined as 0), or every probe saw a
    # symmetric J (a2 = 0, so A = se_A = 0). Inner `where`s keep NaN out of the other branch.
    zero = (f2m == 0) | (a_c == 0)
    a_safe, f_safe = jnp.where(zero, 1.0, a_c), jnp.where(zero, 1.0, f2m)
    rel = se(0.5 * (a2 / a_safe - f2 / f_safe))
    return jnp.where(zero, jnp.zeros_like(rel), jnp.sqrt(a_safe / f_safe) * rel)


def curl_2d(field: Field, x: Float[Array, " 2"], t: Scalar, *, checked: bool = True) -> Array:
    """Scalar curl ``d v_y / d x - d v_x / d y`` of a planar field at one point (for plots).

    Args:
        field: a planar field ``(x (2,), t ()) -> (2,)``.
        x: the point, shape ``(2,)``.
        t: the time, a scalar.
        checked: raise on non-finite values.

    Returns:
        The curl, a scalar (0 for a gradient).

    Raises:
        ValueError: ``x`` not of shape ``(2,)``.
    """
    if jnp.shape(x) != (2,):
        raise ValueError(f"`x` must be one planar point of shape (2,), got {jnp.shape(x)}.")
    jac = jacobian(field, x, t, checked=checked)
    return jac[1, 0] - jac[0, 1]


def _check_indices(idx: ArrayLike, d: int, *, checked: bool = True) -> Array:
    arr = jnp.asarray(idx)
    if arr.ndim != 1 or arr.shape[0] < 1 or not jnp.issubdtype(arr.dtype, jnp.integer):
        raise ValueError(
            f"`idx` must be a non-empty 1-D integer array, got {arr.dtype}{arr.shape}."
        )
    c = concrete(arr)
    if c is not None:
        if np.any(c < 0) or np.any(c >= d):
            raise ValueError(f"`idx` must lie in [0, {d}) (x has {d} entries), got {c}.")
        if np.unique(c).size != c.size:
            raise ValueError(f"`idx` must not contain duplicates, got {c}.")
    elif checked:
        s = jnp.sort(arr)
        bad = (s[0] < 0) | (s[-1] >= d) | jnp.any(s[1:] == s[:-1])
        arr = eqx.error_if(arr, bad, f"`idx` must be distinct indices in [0, {d}).")
    return arr
