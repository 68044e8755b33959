"""Density-weighted Helmholtz split of a 2D error field ``w`` on a grid (docs/design.md §1).

``w = grad phi + r`` with ``div(p r) = 0``: ``phi`` solves ``div(p grad phi) = div(p w)``
(no-flux boundary). Only ``grad phi`` changes the continuity equation, so
``||grad phi||_{L2(p)}`` is the *harmful* part of the error and ``||w - grad phi||_{L2(p)}`` the
harmless one. Discretisation: ``phi`` at cell centres, gradients and fluxes on the faces between
cells, face weights ``p_f`` = mean of the two cells. The discrete problem is the weighted
least-squares projection ``min_phi ||w_f - G phi||_{p_f}``, whose normal equations
``G^T P G phi = G^T P w_f`` are the weak form of the PDE; ``G^T`` comes from
``jax.linear_transpose`` (exact adjoint, so harmful^2 + harmless^2 = total^2 to solver tolerance).

Solver: matrix-free conjugate gradients, ``jax.scipy.sparse.linalg.cg`` with a Jacobi
preconditioner. The operator is symmetric positive semi-definite (constants form its kernel and
the right-hand side is orthogonal to them), which is exactly CG's setting; it is jit/vmap
compatible and part of JAX itself (lineax's CG would do the same with more ceremony).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.sparse.linalg import cg
from jaxtyping import Array, ArrayLike, Float

from .._checks import check_less, check_positive, concrete


class HelmholtzSplit(eqx.Module):
    """A density-weighted Helmholtz split ``w = grad phi + r`` with ``div(p r) = 0`` on a grid.

    Attributes:
        phi: the potential, shape ``(nx, ny)``, ``E_p[phi] = 0``.
        grad_phi: its gradient at the cell centres (for plots), shape ``(nx, ny, 2)``.
        harmful: ``||grad phi||_{L2(p)}``, the part of ``w`` that changes the continuity
            equation (``p`` normalised on the grid); a scalar.
        harmless: ``||w - grad phi||_{L2(p)}``, the remainder; a scalar.
        total: ``||w||_{L2(p)}``; ``harmful^2 + harmless^2 = total^2`` to solver tolerance.
        solver_residual: ``||A phi - b|| / ||b||`` of the CG solve; a scalar.
    """

    phi: Array
    grad_phi: Array
    harmful: Array
    harmless: Array
    total: Array
    solver_residual: Array


def grid_2d(lo: float, hi: float, num: int, dtype=None) -> tuple[Array, float]:
    """The cell centres of a uniform ``num x num`` grid on ``[lo, hi]^2``.

    Args:
        lo: the lower edge.
        hi: the upper edge, above ``lo``.
        num: cells per side, at least 3.
        dtype: the points' dtype (default: JAX's default float).

    Returns:
        ``(points, spacing)``: the centres, shape ``(num, num, 2)`` (``[i, j] = (x_i, y_j)``),
        and the cell width ``(hi - lo) / num``.

    Raises:
        ValueError: ``lo >= hi`` or ``num < 3``.
    """
    check_less("lo", lo, "hi", hi)
    if int(num) < 3:
        raise ValueError(f"`num` must be >= 3, got {num}.")
    h = (hi - lo) / num
    c = lo + h * (jnp.arange(int(num), dtype=dtype or jnp.result_type(float)) + 0.5)
    gx, gy = jnp.meshgrid(c, c, indexing="ij")
    return jnp.stack([gx, gy], axis=-1), h


def helmholtz_split(
    w: Float[Array, "nx ny 2"],
    p: Float[Array, "nx ny"],
    spacing: float | tuple[float, float],
    *,
    tol: float = 1e-10,
    maxiter: int = 10_000,
) -> HelmholtzSplit:
    """The density-weighted Helmholtz split of a cell-centred 2D field ``w`` (module docstring):
    ``phi`` solves ``div(p grad phi) = div(p w)`` with no flux through the boundary, so
    ``grad phi`` is the harmful part of an error ``w`` and the remainder the harmless one
    (docs/design.md §1).

    Called eagerly, the solve runs in float64 (results in the input dtype); traced (under the
    caller's ``jit``), in the input dtype, where float32 is too coarse for CG on a density spanning
    many decades: pass float64 there, and check ``solver_residual``.

    Args:
        w: the field, shape ``(nx, ny, 2)``, ``[i, j]`` at ``(x_i, y_j)``.
        p: the density at the same cells, shape ``(nx, ny)``, ``>= 0`` (any normalisation),
            ``nx, ny >= 3``.
        spacing: the cell width, or ``(hx, hy)``.
        tol: the CG solve's relative tolerance.
        maxiter: its iteration limit.

    Returns:
        The :class:`HelmholtzSplit`.

    Raises:
        ValueError: mismatched shapes, a non-positive spacing, or ``p`` or ``w`` not finite (or
            ``p < 0``).
    """
    p = jnp.asarray(p)
    w = jnp.asarray(w)
    if p.ndim != 2 or min(p.shape) < 3:
        raise ValueError(f"`p` must be a (nx >= 3, ny >= 3) grid, got shape {p.shape}.")
    if w.shape != (*p.shape, 2):
        raise ValueError(f"`w` must have shape {(*p.shape, 2)} to match `p`, got {w.shape}.")
    hs = jnp.broadcast_to(jnp.asarray(spacing, p.dtype), (2,))
    check_positive("spacing", hs)
    pc, wc = concrete(p), concrete(w)
    if pc is None or wc is None:  # traced: the checks run inside the program
        return _split(w, p, hs, jnp.asarray(tol, p.dtype), int(maxiter), checked=True)
    # Eagerly, the checks run here, so that the compiled solve holds no host callback and
    # JAX's persistent cache keeps it.
    if not (np.all(np.isfinite(pc)) and np.all(pc >= 0)):
        raise ValueError("`p` must be finite and >= 0 everywhere.")
    if not np.all(np.isfinite(wc)):
        raise ValueError("`w` must be finite everywhere.")
    if p.dtype == jnp.float64:
        return _split(w, p, hs, jnp.asarray(tol, p.dtype), int(maxiter), checked=False)
    # Eagerly, solve in float64 whatever the inputs and the x64 flag: the face weights span
    # many orders of magnitude (p_t on a window holding all its mass), and float32 CG does
    # not converge on them (measured: solver residual 26, harmful^2 + harmless^2 off total^2
    # by 20x on a 48^2 grid at t = 0.3). Results come back in the input dtype.
    dtype = p.dtype
    with jax.enable_x64(True):
        f64 = functools.partial(jnp.asarray, dtype=jnp.float64)
        hs64 = jnp.broadcast_to(f64(spacing), (2,))  # from `spacing`, not its float32 rounding
        out = _split(f64(w), f64(p), hs64, f64(tol), int(maxiter), checked=False)
        return jax.tree.map(lambda a: a.astype(dtype), out)


@functools.partial(jax.jit, static_argnames=("maxiter", "checked"))
def _split(
    w: Array, p: Array, hs: Array, tol: Array, maxiter: int, checked: bool
) -> HelmholtzSplit:
    # One compiled program per grid shape: run eagerly, every operation (and the CG loop,
    # a fresh closure each call) would compile on its own, hundreds of small programs per call.
    hx, hy = hs[0], hs[1]
    if checked:
        p = eqx.error_if(p, jnp.any(p < 0) | ~jnp.all(jnp.isfinite(p)), "`p` must be finite, >= 0.")
        w = eqx.error_if(w, ~jnp.all(jnp.isfinite(w)), "`w` must be finite.")
    p = p / (jnp.sum(p) * hx * hy)
    # Face weights, floored so no cell is fully decoupled (the floor is invisible in L2(p)).
    floor = 1e-12 * jnp.max(p)
    px = 0.5 * (p[1:] + p[:-1]) + floor
    py = 0.5 * (p[:, 1:] + p[:, :-1]) + floor
    wf = (0.5 * (w[1:, :, 0] + w[:-1, :, 0]), 0.5 * (w[:, 1:, 1] + w[:, :-1, 1]))

    def grad(phi):
        return (phi[1:] - phi[:-1]) / hx, (phi[:, 1:] - phi[:, :-1]) / hy

    grad_t = jax.linear_transpose(grad, p)

    def weigh(f):
        return (px * f[0], py * f[1])

    def op(phi):
        return grad_t(weigh(grad(phi)))[0]

    diag = (_pad0(px, 0) / hx**2) + (_pad0(py, 1) / hy**2)
    b = grad_t(weigh(wf))[0]
    # tol is a traced array (cg accepts one; its annotation says float): no recompile per tol.
    phi, _ = cg(op, b, tol=tol, maxiter=maxiter, M=lambda r: r / diag)  # type: ignore[arg-type]
    phi = phi - jnp.sum(p * phi) * hx * hy  # fix the free constant: E_p[phi] = 0
    g = grad(phi)
    cell = hx * hy

    def norm(f):
        return jnp.sqrt(cell * (jnp.sum(px * f[0] ** 2) + jnp.sum(py * f[1] ** 2)))

    rest = (wf[0] - g[0], wf[1] - g[1])
    res = jnp.linalg.norm(op(phi) - b) / jnp.maximum(jnp.linalg.norm(b), jnp.finfo(b.dtype).tiny)
    return HelmholtzSplit(phi, _to_cells(g), norm(g), norm(rest), norm(wf), res)


def helmholtz_split_field(
    error_field: Callable[..., Array],
    log_density: Callable[..., Array],
    t: Float[ArrayLike, ""],
    *,
    lo: float,
    hi: float,
    num: int = 128,
    **kwargs,
) -> HelmholtzSplit:
    """:func:`helmholtz_split` of ``w = error_field(x, t)`` with ``p = exp(log_density(x, t))`` on
    the grid of :func:`grid_2d` (a window holding essentially all of ``p_t``'s mass).

    Args:
        error_field: a planar field ``(x (2,), t ()) -> (2,)``, the error ``w``.
        log_density: ``(x (2,), t ()) -> ()``, ``log p_t`` up to a constant.
        t: the time, a scalar.
        lo: the window's lower edge.
        hi: its upper edge.
        num: cells per side.
        **kwargs: :func:`helmholtz_split`'s ``tol`` and ``maxiter``.

    Returns:
        The :class:`HelmholtzSplit` on the ``(num, num)`` grid.
    """
    pts, h = grid_2d(lo, hi, num)
    w, p = _grid_values(error_field, log_density, pts.reshape(-1, 2), jnp.asarray(t))
    return helmholtz_split(w.reshape(num, num, 2), p.reshape(num, num), h, **kwargs)


@eqx.filter_jit
def _grid_values(error_field, log_density, flat: Array, t: Array) -> tuple[Array, Array]:
    """``w`` and the unnormalised density ``exp(log p - max log p)`` at the grid points."""
    w = jax.vmap(lambda x: error_field(x, t))(flat)
    logp = jax.vmap(lambda x: log_density(x, t))(flat)
    return w, jnp.exp(logp - jnp.max(logp))


def _pad0(f: Array, axis: int) -> Array:
    """Sum of the two face values around each cell (zero flux outside the grid)."""
    pad = [(0, 0), (0, 0)]
    pad[axis] = (1, 0)
    lo = jnp.pad(f, pad)
    pad[axis] = (0, 1)
    return lo + jnp.pad(f, pad)


def _to_cells(g: tuple[Array, Array]) -> Array:
    """Average face gradients onto cell centres (one-sided at the boundary)."""
    gx = 0.5 * (
        jnp.pad(g[0], [(1, 0), (0, 0)], mode="edge") + jnp.pad(g[0], [(0, 1), (0, 0)], mode="edge")
    )
    gy = 0.5 * (
        jnp.pad(g[1], [(0, 0), (1, 0)], mode="edge") + jnp.pad(g[1], [(0, 0), (0, 1)], mode="edge")
    )
    return jnp.stack([gx, gy], axis=-1)
