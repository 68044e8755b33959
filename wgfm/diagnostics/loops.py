"""Integral constraint: loop families and line integrals (docs/design.md §1).

A gradient field has zero circulation around every closed loop and path-independent line
integrals. A *path* is an array ``(n + 1, *shape)`` of points; a *loop* is a path whose last point
equals its first (every constructor here returns one, exactly closed). Sampled paths are taken as
piecewise linear and integrated by the midpoint or trapezoid rule (second order, exact for
linear fields); smooth parametric loops ``theta -> x`` by composite Gauss–Legendre.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PRNGKeyArray

from .._checks import check_positive, concrete
from ..processes import AbstractProcess
from ..typing import Field, Scalar
from ._common import check_closed, check_finite

Rule = Literal["midpoint", "trapezoid"]


# ---------------------------------------------------------------------------------------------
# Loop constructors (all return (n + 1, *shape) with path[-1] == path[0] exactly).


def _close(path: Array) -> Array:
    return jnp.concatenate([path, path[:1]], axis=0)


def _angles(n: int, dtype) -> Array:
    if int(n) < 3:
        raise ValueError(f"`num_points` must be >= 3, got {n}.")
    return 2 * jnp.pi * jnp.arange(int(n), dtype=dtype) / n


def circle(center: Array, u: Array, v: Array, radius: Scalar, num_points: int) -> Array:
    """A circle ``center + r (cos th u + sin th v)`` in the plane ``(u, v)``, at ``num_points``
    equally spaced angles. The field ``x -> A x`` circulates ``2 pi r^2 v^T A u`` around it
    (docs/design.md §1).

    Args:
        center: the centre, any shape ``(*shape)``.
        u: a unit direction shaped like ``center``.
        v: a unit direction shaped like ``center``, orthogonal to ``u``.
        radius: ``r > 0``.
        num_points: points on the circle, at least 3.

    Returns:
        The closed loop, shape ``(num_points + 1, *shape)``.

    Raises:
        ValueError: ``u``, ``v`` not orthonormal or not shaped like ``center``, ``radius <= 0``
            or fewer than 3 points.
    """
    center, u, v = jnp.asarray(center), jnp.asarray(u), jnp.asarray(v)
    _check_orthonormal(center, u, v)
    check_positive("radius", radius)
    th = _angles(num_points, jnp.result_type(center, float))
    c, s = jnp.cos(th), jnp.sin(th)
    pts = center + radius * (_outer(c, u) + _outer(s, v))
    return _close(pts)


def rectangle(
    center: Array, u: Array, v: Array, width: Scalar, height: Scalar, points_per_side: int
) -> Array:
    """A planar rectangle ``width x height`` around ``center`` with sides along ``u`` and ``v``.

    Args:
        center: the centre, any shape ``(*shape)``.
        u: a unit direction shaped like ``center`` (the ``width`` side).
        v: a unit direction shaped like ``center``, orthogonal to ``u`` (the ``height`` side).
        width: the side along ``u``, positive.
        height: the side along ``v``, positive.
        points_per_side: sub-segments of each side.

    Returns:
        The closed loop, shape ``(4 points_per_side + 1, *shape)``.

    Raises:
        ValueError: ``u``, ``v`` not orthonormal, or a non-positive side.
    """
    center, u, v = jnp.asarray(center), jnp.asarray(u), jnp.asarray(v)
    _check_orthonormal(center, u, v)
    check_positive("width", width)
    check_positive("height", height)
    a, b = 0.5 * width * u, 0.5 * height * v
    corners = jnp.stack([center - a - b, center + a - b, center + a + b, center - a + b])
    return polyline(corners, points_per_side, closed=True)


def polyline(points: Array, points_per_segment: int, *, closed: bool = False) -> Array:
    """A piecewise-linear path through ``points``, each segment cut into ``points_per_segment``.

    Args:
        points: the corners, shape ``(m, *shape)``, ``m >= 2``.
        points_per_segment: sub-segments per segment, at least 1.
        closed: also join the last point back to the first (a loop).

    Returns:
        The path, shape ``((m - 1) k + 1, *shape)``, or ``(m k + 1, *shape)`` closed
        (``k = points_per_segment``).

    Raises:
        ValueError: fewer than 2 points or ``points_per_segment < 1``.
    """
    points = jnp.asarray(points)
    if points.ndim < 2 or points.shape[0] < 2:
        raise ValueError(f"`points` must have shape (m >= 2, *shape), got {points.shape}.")
    k = int(points_per_segment)
    if k < 1:
        raise ValueError(f"`points_per_segment` must be >= 1, got {points_per_segment}.")
    ends = jnp.concatenate([points[1:], points[:1]]) if closed else points[1:]
    starts = points[: ends.shape[0]]
    s = jnp.arange(k, dtype=jnp.result_type(points, float)) / k
    seg = starts[:, None] + jnp.moveaxis(_outer(s, ends - starts), 0, 1)  # (m', k, *shape)
    body = seg.reshape(-1, *points.shape[1:])
    return jnp.concatenate([body, (points[:1] if closed else points[-1:])], axis=0)


def refine(path: Array, factor: int) -> Array:
    """The same curve with every segment of a sampled path cut into ``factor`` equal pieces
    (the midpoint rule's error then shrinks like ``factor^-2``).

    Args:
        path: a path, shape ``(n + 1, *shape)``.
        factor: pieces per segment, at least 1.

    Returns:
        The refined path, shape ``(n factor + 1, *shape)``.
    """
    return polyline(path, factor, closed=False)


def brownian_bridge(x: Array, num_steps: int, step_scale: Scalar, *, key: PRNGKeyArray) -> Array:
    """The authors' Brownian-bridge loop from ``x`` back to ``x``: ``x + W_k - (k/n) W_n`` with
    ``N(0, step_scale^2)`` increments.

    Args:
        x: the start and end, any shape ``(*shape)``.
        num_steps: ``n``, at least 3.
        step_scale: the increments' standard deviation, positive.
        key: the increments.

    Returns:
        The closed loop, shape ``(n + 1, *shape)``.

    Raises:
        ValueError: ``num_steps < 3`` or ``step_scale <= 0``.
    """
    x = jnp.asarray(x)
    n = int(num_steps)
    if n < 3:
        raise ValueError(f"`num_steps` must be >= 3, got {num_steps}.")
    check_positive("step_scale", step_scale)
    steps = step_scale * jax.random.normal(key, (n, *x.shape), dtype=jnp.result_type(x, float))
    w = jnp.concatenate([jnp.zeros_like(x)[None], jnp.cumsum(steps, axis=0)])
    frac = jnp.arange(n + 1, dtype=w.dtype) / n
    bridge = w - _outer(frac, w[-1])
    return (x + bridge).at[-1].set(x)


def pair_rotation(x: Array, center: Array, num_points: int, *, key: PRNGKeyArray) -> Array:
    """The authors' pair-rotation loop: the coordinates paired at random and every pair of
    ``x - center`` rotated by the same angle ``th in [0, 2 pi)`` (an odd one out stays put), so
    ``||x - center||`` is constant on the loop.

    Args:
        x: the start, any shape ``(*shape)`` with at least 2 entries.
        center: the centre of rotation, broadcast to ``x``'s shape (the clean point
            ``alpha_t x0`` in the diagnosis).
        num_points: angles, at least 3.
        key: the pairing.

    Returns:
        The closed loop, shape ``(num_points + 1, *shape)``.

    Raises:
        ValueError: ``x`` with fewer than 2 entries, or fewer than 3 points.
    """
    x, center = jnp.asarray(x), jnp.broadcast_to(jnp.asarray(center), jnp.shape(x))
    d = jnp.reshape(x - center, (-1,))
    if d.shape[0] < 2:
        raise ValueError(f"`x` needs at least 2 entries to pair, got shape {x.shape}.")
    perm = jax.random.permutation(key, d.shape[0])
    m = d.shape[0] // 2
    i, j = perm[:m], perm[m : 2 * m]
    th = _angles(num_points, jnp.result_type(x, float))

    def at(a):
        c, s = jnp.cos(a), jnp.sin(a)
        return d.at[i].set(c * d[i] - s * d[j]).at[j].set(s * d[i] + c * d[j])

    pts = center + jax.vmap(at)(th).reshape(-1, *x.shape)
    return _close(pts)


def noisy_copy_cycle(
    process: AbstractProcess,
    x0: Array,
    t: Scalar,
    *,
    num_copies: int,
    points_per_segment: int,
    key: PRNGKeyArray,
) -> Array:
    """The authors' cycle through ``num_copies`` noisy copies ``alpha_t x0 + sigma_t eps_i``, joined
    linearly and cyclically. Each point's offset from ``alpha_t x0`` is rescaled to the norm
    interpolated between its two end copies, so the loop stays on the noise shell (radius
    ``~ sigma_t sqrt D``).

    Args:
        process: the forward process (``alpha_t``, ``sigma_t``).
        x0: the clean sample, any shape ``(*shape)``.
        t: the time, a scalar in the process's range.
        num_copies: copies ``m``, at least 2.
        points_per_segment: ``k`` points per segment between copies, at least 1.
        key: the copies' noise.

    Returns:
        The closed loop, shape ``(m k + 1, *shape)``.

    Raises:
        ValueError: ``t`` outside the process's range, ``num_copies < 2`` or
            ``points_per_segment < 1``.
    """
    process.check_time(t)
    if int(num_copies) < 2:
        raise ValueError(f"`num_copies` must be >= 2, got {num_copies}.")
    if int(points_per_segment) < 1:
        raise ValueError(f"`points_per_segment` must be >= 1, got {points_per_segment}.")
    x0 = jnp.asarray(x0)
    dt = jnp.result_type(x0, float)
    eps = jax.random.normal(key, (int(num_copies), *x0.shape), dtype=dt)
    offs = process.sigma(t) * eps
    nxt = jnp.roll(offs, -1, axis=0)
    s = jnp.arange(int(points_per_segment), dtype=dt) / points_per_segment
    lin = offs[:, None] + jnp.moveaxis(_outer(s, nxt - offs), 0, 1)  # (k, m, *shape)
    axes = tuple(range(2, lin.ndim))
    norm = lambda a: jnp.sqrt(jnp.sum(a**2, axis=tuple(range(1, a.ndim))))  # noqa: E731
    radius = (1 - s) * norm(offs)[:, None] + s * norm(nxt)[:, None]
    lin_norm = jnp.sqrt(jnp.sum(lin**2, axis=axes))
    pts = process.alpha(t) * x0 + lin * jnp.expand_dims(radius / lin_norm, axes)
    return _close(pts.reshape(-1, *x0.shape))


def parametric_loop(curve: Callable[[Array], Array], num_points: int, *, dtype=None) -> Array:
    """A smooth closed curve ``theta -> x`` (period ``2 pi``) sampled at ``num_points`` angles.

    Args:
        curve: ``theta () -> x (*shape)``.
        num_points: angles, at least 3.
        dtype: the angles' dtype (default: JAX's default float).

    Returns:
        The closed loop, shape ``(num_points + 1, *shape)``.
    """
    th = _angles(num_points, dtype or jnp.result_type(float))
    return _close(jax.vmap(curve)(th))


# ---------------------------------------------------------------------------------------------
# Line integrals.


def _materialize(paths):
    """The path points computed once, before their uses (``jax.lax.optimization_barrier``).
    The quadrature telescopes only if each segment's end is bit for bit the next one's start
    and the last point the first; fused into its consumers, a loop built under ``jit`` can be
    recomputed per use, and the copies need not round alike (measured in the reproduction's
    float32 sweep: the oracle's median pair-rotation circulation at t = 0.001 is 2.7e-6
    without the barrier, 1.9e-9 with it, 2e-16 in float64)."""
    return jax.lax.optimization_barrier(paths)


def _eval(field: Field, pts: Array, t: Scalar, chunk_size: int | None) -> Array:
    shape = pts.shape[1:]

    def one(p):
        out = field(p, t)
        if jnp.shape(out) != shape:
            raise ValueError(
                f"`field` must return an array shaped like its input {shape}, got {jnp.shape(out)}."
            )
        return out

    if chunk_size is None:
        return jax.vmap(one)(pts)
    return jax.lax.map(one, pts, batch_size=int(chunk_size))


def _query_points(path: Array, rule: Rule) -> Array:
    """Where ``rule`` evaluates the field along ``path``: segment midpoints or vertices."""
    path = jnp.asarray(path)
    if path.ndim < 2 or path.shape[0] < 2:
        raise ValueError(f"`path` must have shape (n + 1 >= 2, *shape), got {path.shape}.")
    if rule == "midpoint":
        return 0.5 * (path[1:] + path[:-1])
    if rule == "trapezoid":
        return path
    raise ValueError(f"`rule` must be 'midpoint' or 'trapezoid', got {rule!r}.")


def _contributions(
    values: Array, path: Array, t: Scalar, rule: Rule, checked: bool = True
) -> tuple[Array, Array]:
    """Per-segment ``int_seg v . dx`` and the same for ``v / ||v||``, from the field's
    ``values`` at :func:`_query_points`."""
    delta = path[1:] - path[:-1]
    axes = tuple(range(1, path.ndim))

    def unit(v):
        n = jnp.sqrt(jnp.sum(v**2, axis=axes, keepdims=True))
        return v / jnp.where(n > 0, n, 1.0)

    if rule == "midpoint":
        v, vn = values, unit(values)
    else:
        wn = unit(values)
        v, vn = 0.5 * (values[1:] + values[:-1]), 0.5 * (wn[1:] + wn[:-1])
    contrib = jnp.sum(v * delta, axis=axes), jnp.sum(vn * delta, axis=axes)
    return check_finite(contrib, path, t, "values along the path", checked=checked)


def _segments(
    field: Field, path: Array, t: Scalar, rule: Rule, chunk_size: int | None
) -> tuple[Array, Array]:
    """Per-segment contributions ``int_seg v . dx`` and the same for ``v / ||v||``."""
    path = _materialize(jnp.asarray(path))
    return _contributions(_eval(field, _query_points(path, rule), t, chunk_size), path, t, rule)


def line_integral(
    field: Field,
    path: Array,
    t: Scalar,
    *,
    rule: Rule = "midpoint",
    chunk_size: int | None = None,
) -> Array:
    """``int v(x, t) . dx`` along a sampled piecewise-linear path (second order in the segment
    length; exact for a linear field).

    Args:
        field: a field ``(x (*shape), t ()) -> (*shape)``.
        path: the path, shape ``(n + 1, *shape)``.
        t: the time, a scalar.
        rule: ``"midpoint"`` (the field at segment midpoints) or ``"trapezoid"`` (at vertices).
        chunk_size: points per field evaluation (None: all at once).

    Returns:
        The integral, a scalar.

    Raises:
        ValueError: a path of fewer than 2 points, an unknown rule, or a field whose output is
            not shaped like its input.
    """
    return jnp.sum(_segments(field, path, t, rule, chunk_size)[0])


def parametric_line_integral(
    field: Field,
    curve: Callable[[Array], Array],
    t: Scalar,
    *,
    start: float = 0.0,
    end: float = 2 * np.pi,
    order: int = 16,
    num_panels: int = 8,
    dtype=None,
) -> Array:
    """``int_start^end v(c(th), t) . c'(th) dth`` by composite Gauss-Legendre quadrature, ``c'`` by
    forward-mode autodiff: a reference for the sampled-path integrals.

    Args:
        field: a field ``(x (*shape), t ()) -> (*shape)``.
        curve: ``c: theta () -> x (*shape)``.
        t: the time, a scalar.
        start: the first angle.
        end: the last angle (default ``2 pi``: a closed curve's circulation).
        order: Gauss-Legendre nodes per panel.
        num_panels: panels of ``[start, end]``.
        dtype: the nodes' dtype (default: JAX's default float).

    Returns:
        The integral, a scalar.

    Raises:
        ValueError: a field whose output is not shaped like its input.
    """
    nodes, weights = np.polynomial.legendre.leggauss(int(order))  # float64 reference nodes
    h = (end - start) / int(num_panels)
    mids = start + h * (np.arange(int(num_panels))[:, None] + 0.5)
    th = jnp.asarray((mids + 0.5 * h * nodes).reshape(-1), dtype or jnp.result_type(float))
    w = jnp.asarray(np.tile(0.5 * h * weights, int(num_panels)), th.dtype)

    def integrand(a):
        x, dx = jax.jvp(curve, (a,), (jnp.ones_like(a),))
        v = field(x, t)
        if jnp.shape(v) != jnp.shape(x):
            raise ValueError(f"`field` must return an array shaped like x {jnp.shape(x)}.")
        return jnp.sum(v * dx)

    return jnp.sum(w * jax.vmap(integrand)(th))


class LoopReport(eqx.Module):
    """Circulation statistics of one closed loop (docs/design.md §1), each a scalar.

    Attributes:
        I: the circulation ``oint v . dx``.
        I_norm: the circulation of the unit field ``v / ||v||`` (each segment's contribution
            divided by the field's norm at its midpoint).
        L: the loop's length.
        I_over_L: ``I / L``, the circulation per length.
    """

    I: Array  # noqa: E741
    I_norm: Array
    L: Array
    I_over_L: Array


def loop_report(
    field: Field,
    loop: Array,
    t: Scalar,
    *,
    rule: Rule = "midpoint",
    chunk_size: int | None = None,
    checked: bool = True,
) -> LoopReport:
    """Circulation statistics of a closed sampled loop: zero for a gradient up to quadrature error.

    Args:
        field: a field ``(x (*shape), t ()) -> (*shape)``.
        loop: a closed loop, shape ``(n + 1, *shape)`` with ``loop[-1] == loop[0]``.
        t: the time, a scalar.
        rule: ``"midpoint"`` or ``"trapezoid"`` (:func:`line_integral`).
        chunk_size: points per field evaluation (None: all at once).
        checked: raise on an open loop or non-finite values (False: leave that to the caller,
            see :mod:`wgfm.diagnostics`).

    Returns:
        The :class:`LoopReport` (``I``, ``I_norm``, ``L``, ``I / L``).

    Raises:
        ValueError: an open loop, or a non-finite value (``checked``).
    """
    loop = _materialize(check_closed("loop", jnp.asarray(loop), checked=checked))
    values = _eval(field, _query_points(loop, rule), t, chunk_size)
    return _report(values, loop, t, rule, checked)


def _report(values: Array, loop: Array, t: Scalar, rule: Rule, checked: bool) -> LoopReport:
    contrib, contrib_norm = _contributions(values, loop, t, rule, checked)
    axes = tuple(range(1, loop.ndim))
    length = jnp.sum(jnp.sqrt(jnp.sum((loop[1:] - loop[:-1]) ** 2, axis=axes)))
    circ = jnp.sum(contrib)
    return LoopReport(circ, jnp.sum(contrib_norm), length, circ / length)


def loop_reports(
    field: Field,
    loops: Sequence[Array],
    t: Scalar,
    *,
    rule: Rule = "midpoint",
    chunk_size: int | None = None,
    checked: bool = True,
) -> tuple[LoopReport, ...]:
    """:func:`loop_report` of each of several closed loops with ONE batched evaluation of
    ``field`` over all their points: under ``jit`` the field (a network) appears once in the
    compiled program instead of once per loop. Same numbers as separate calls.

    Args:
        field: a field ``(x (*shape), t ()) -> (*shape)``.
        loops: closed loops of one sample shape, each ``(n_i + 1, *shape)`` (any lengths).
        t: the time, a scalar.
        rule: ``"midpoint"`` or ``"trapezoid"``.
        chunk_size: points per field evaluation (None: all at once).
        checked: raise on an open loop or non-finite values.

    Returns:
        One :class:`LoopReport` per loop, in order.

    Raises:
        ValueError: no loops, loops of different sample shapes, an open loop, or a non-finite
            value.
    """
    if len(loops) == 0:
        raise ValueError("`loops` must hold at least one loop.")
    loops = [
        check_closed(f"loops[{i}]", jnp.asarray(lp), checked=checked) for i, lp in enumerate(loops)
    ]
    loops = _materialize(loops)
    shapes = {lp.shape[1:] for lp in loops}
    if len(shapes) != 1:
        raise ValueError(f"`loops` must share one sample shape, got {sorted(shapes)}.")
    pts = [_query_points(lp, rule) for lp in loops]
    values = _eval(field, jnp.concatenate(pts, axis=0), t, chunk_size)
    splits = np.cumsum([q.shape[0] for q in pts])[:-1]
    parts = jnp.split(values, splits, axis=0)
    return tuple(_report(v, lp, t, rule, checked) for lp, v in zip(loops, parts, strict=True))


class PathDependence(eqx.Module):
    """Line integrals from ``a`` to ``b`` along two paths (:func:`path_dependence`), scalars.

    Attributes:
        straight: along the segment ``a -> b``.
        detour: along ``a -> via -> b``.
        difference: ``straight - detour``: zero for a gradient, up to quadrature error.
    """

    straight: Array
    detour: Array
    difference: Array


def path_dependence(
    field: Field, a: Array, b: Array, via: Array, t: Scalar, *, num_points: int = 64
) -> PathDependence:
    """``int_a^b v . dx`` along the segment ``a -> b`` against the one along ``a -> via -> b``.

    Args:
        field: a field ``(x (*shape), t ()) -> (*shape)``.
        a: the start, shape ``(*shape)``.
        b: the end, shape ``(*shape)``.
        via: the detour point, shape ``(*shape)``.
        t: the time, a scalar.
        num_points: sub-segments per leg of the detour (twice that on the straight path).

    Returns:
        The :class:`PathDependence`: both integrals and their difference.
    """
    straight = line_integral(field, polyline(jnp.stack([a, b]), 2 * num_points), t)
    detour = line_integral(field, polyline(jnp.stack([a, via, b]), num_points), t)
    return PathDependence(straight, detour, straight - detour)


def triangle_identity(
    field: Field, a: Array, b: Array, c: Array, t: Scalar, *, num_points: int = 64
) -> Array:
    """``I(b, a) + I(c, b) + I(a, c)``, with ``I(q, p)`` the straight-line integral from ``p`` to
    ``q``: the circulation around the triangle ``a, b, c``, zero for a gradient.

    Args:
        field: a field ``(x (*shape), t ()) -> (*shape)``.
        a: a corner, shape ``(*shape)``.
        b: a corner, shape ``(*shape)``.
        c: a corner, shape ``(*shape)``.
        t: the time, a scalar.
        num_points: sub-segments per side.

    Returns:
        The sum, a scalar.
    """
    pts = [(a, b), (b, c), (c, a)]
    return sum(
        (line_integral(field, polyline(jnp.stack(s), num_points), t) for s in pts),
        start=jnp.zeros((), jnp.result_type(a, float)),
    )


# ---------------------------------------------------------------------------------------------


def _outer(s: Array, x: Array) -> Array:
    """``out[k] = s[k] * x``: shape ``(len(s), *x.shape)``."""
    return jnp.reshape(s, s.shape + (1,) * x.ndim) * x


def _check_orthonormal(center: Array, u: Array, v: Array) -> None:
    for name, a in (("u", u), ("v", v)):
        if a.shape != center.shape:
            raise ValueError(
                f"`{name}` must have the shape of `center` {center.shape}, got {a.shape}."
            )
    cu, cv = concrete(u), concrete(v)
    if cu is not None and cv is not None:
        g = np.array([[np.vdot(cu, cu), np.vdot(cu, cv)], [np.vdot(cv, cu), np.vdot(cv, cv)]])
        if not np.allclose(g, np.eye(2), atol=1e-6):
            raise ValueError(f"`u` and `v` must be orthonormal, got Gram matrix {g.tolist()}.")
