"""Sweeps: one compiled evaluation of a diagnostic over samples x a grid of times.

``sweep(diagnostic, field, xs, ts)`` evaluates ``diagnostic(field, x, t)`` for every time
``ts[i]`` and every sample ``xs[i, n]`` (``jax.vmap`` over samples inside ``jax.lax.map`` over
times, so memory stays that of one time level), under ``equinox.filter_jit``: it compiles once
per shape and reuses the executable for new sample and time values (pass the same ``field``
object, e.g. an equinox Module or a ``functools.partial`` kept around, so it is not re-traced).
Results come back as per-time arrays and quantiles, ready to tabulate or plot by noise level.

``checked=False`` compiles the diagnostic without its in-program finiteness checks (see
:mod:`wgfm.diagnostics`) and checks the outputs on the host instead (:func:`require_finite`):
either way a non-finite value raises an error naming the first bad time index and sample.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray
from tqdm.auto import tqdm

from ..processes import AbstractProcess
from .jacobian import divergence
from .kernels import ExactAsymmetry

Diagnostic = Callable[..., Any]  # an array, or a PyTree of arrays


def _component(index: int, name: str) -> Diagnostic:
    """One entry of :class:`ExactAsymmetry`'s ``(lambda, NAsym)``, as a named diagnostic."""

    def diagnostic(field, x, t, *, checked: bool = True) -> Array:
        return ExactAsymmetry()(field, x, t, checked=checked)[index]

    diagnostic.__name__ = diagnostic.__qualname__ = name
    return diagnostic


def field_norm(field, x, t, *, checked: bool = True) -> Array:
    """``||field(x, t)||`` (non-finite values propagate; the sweep checks them)."""
    del checked
    return jnp.sqrt(jnp.sum(field(x, t) ** 2))


# By name for `sweep("lambda", ...)`; "lambda" and "nasym" are the two outputs of the one exact
# asymmetry kernel, ExactAsymmetry.
DIAGNOSTICS: dict[str, Diagnostic] = {
    "asymmetry": ExactAsymmetry(),
    "lambda": _component(0, "lambda_ratio"),
    "nasym": _component(1, "nasym"),
    "divergence": divergence,
    "norm": field_norm,
}


def times_grid(process: AbstractProcess, num_levels: int) -> np.ndarray:
    """The authors' noise levels ``t = 1, 11, ..., 991`` of 1000 (100 levels), thinned evenly to
    ``num_levels`` and clipped to ``[t_min, t_max]`` of ``process``.

    Args:
        process: the forward process (its time range).
        num_levels: how many levels, at least 1 (100 or more: all 100).

    Returns:
        The levels, increasing, shape ``(min(num_levels, 100),)``.

    Raises:
        ValueError: ``num_levels < 1``.
    """
    if int(num_levels) < 1:
        raise ValueError(f"`num_levels` must be a positive integer, got {num_levels!r}.")
    steps = np.arange(1, 1000, 10)
    if num_levels < len(steps):
        steps = steps[np.linspace(0, len(steps) - 1, num_levels).round().astype(int)]
    return np.clip(steps / 1000.0, process.t_min, process.t_max)


class SweepResult(eqx.Module):
    """What :func:`sweep` returns.

    Attributes:
        ts: the times, shape ``(T,)``.
        values: the diagnostic at time ``ts[i]`` and sample ``n``, shape ``(T, n, ...)`` (a
            PyTree of such arrays if the diagnostic returns one).
        mean: over samples, shape ``(T, ...)``.
        levels: the quantile levels, shape ``(Q,)``.
        quantiles: over samples, shape ``(Q, T, ...)``.
    """

    ts: Array
    values: Array
    mean: Array
    levels: Array
    quantiles: Array


def noised_samples(
    process: AbstractProcess,
    x0: Float[Array, "n ..."],
    ts: Float[Array, " T"],
    *,
    key: PRNGKeyArray,
) -> Array:
    """``x_t = alpha_t x0 + sigma_t eps`` at every time: the same clean ``x0`` at every time, fresh
    noise.

    Args:
        process: the forward process.
        x0: clean samples, shape ``(n, *shape)``.
        ts: times, shape ``(T,)``.
        key: the noise.

    Returns:
        The noisy samples, shape ``(T, n, *shape)``.
    """
    keys = jax.random.split(key, jnp.shape(ts)[0])
    return jax.vmap(lambda t, k: process.sample_marginal(x0, t, key=k)[0])(ts, keys)


@eqx.filter_jit
def _run(diag, field, xs, ts, keys, batch_size=None, checked=True):
    # checked=False is passed on only then, so a custom diagnostic need not take `checked`.
    kw = {} if checked else {"checked": False}

    def over(fn, *args):  # samples: one vmap, or ``batch_size`` at a time
        n = _num_samples(args[0])
        if batch_size is None or batch_size >= n:
            return jax.vmap(fn)(*args)
        return jax.lax.map(lambda a: fn(*a), args, batch_size=batch_size)

    def at_time(args):
        x_t, t, k = args
        if k is None:
            return over(lambda x: diag(field, x, t, **kw), x_t)
        ks = jax.random.split(k, _num_samples(x_t))
        return over(lambda x, kk: diag(field, x, t, key=kk, **kw), x_t, ks)

    # Times one after another (samples stay vmapped): memory of one level, and no batched
    # LAPACK kernels inside a vmap over times (see docs/xla_cpu.md).
    return jax.lax.map(at_time, (xs, ts, keys))


def _run_levels(diag, field, xs, ts, keys, batch_size, checked, label: str):
    """:func:`_run` one level at a time (the same compiled single-level program) with a bar."""
    parts = []
    for i in tqdm(range(ts.shape[0]), desc=label, unit="level", leave=False):
        level = jax.tree_util.tree_map(lambda a, i=i: a[i : i + 1], xs)
        k = None if keys is None else keys[i : i + 1]
        values = _run(diag, field, level, ts[i : i + 1], k, batch_size, checked)
        parts.append(jax.block_until_ready(values))
    return jax.tree_util.tree_map(lambda *p: jnp.concatenate(p), *parts)


def _num_samples(xs) -> int:
    return jax.tree_util.tree_leaves(xs)[0].shape[0]


def sweep(
    diagnostic: str | Diagnostic,
    field: Callable[..., Array],
    xs: Float[Array, "T n ..."] | tuple[Float[Array, "T n ..."], ...],
    ts: Float[Array, " T"],
    *,
    key: PRNGKeyArray | None = None,
    levels: Sequence[float] = (0.05, 0.25, 0.5, 0.75, 0.95),
    mesh=None,
    batch_size: int | None = None,
    checked: bool = True,
    what: str = "diagnostic values are",
    progress: str | None = None,
    select: Sequence[int] | None = None,
) -> SweepResult:
    """One compiled evaluation of ``diagnostic(field, x, t)`` on every sample ``xs[i, n]`` at
    ``ts[i]`` (module docstring).

    Args:
        diagnostic: a name in :data:`DIAGNOSTICS` or a function ``(field, x, t, *, [key,]
            [checked]) -> array or PyTree`` (the kernels of :mod:`wgfm.diagnostics.kernels`).
        field: a field ``(x (*shape), t ()) -> (*shape)``; pass the same object every call, so
            it is not re-traced.
        xs: samples, shape ``(T, n, *shape)`` (:func:`noised_samples`), or a tuple (any PyTree)
            of such arrays, e.g. ``(x0s, xts)``: the diagnostic then gets the matching tuple.
        ts: times, shape ``(T,)``.
        key: given, the diagnostic is called with a fresh ``key=`` per sample.
        levels: the quantile levels of the summary.
        mesh: a mesh of :func:`wgfm.distributed.make_mesh` splitting the samples over its
            devices (same values).
        batch_size: samples of a level at a time instead of one ``vmap`` (None): bounded memory
            for large networks, and faster once a level's Jacobian tangents outgrow the cache
            (benchmarks/README.md).
        checked: False calls the diagnostic with ``checked=False`` (no host callback in the
            compiled program, so JAX's persistent cache keeps it) and checks the outputs on the
            host instead (:func:`require_finite`).
        what: the values' name in the error naming a non-finite one.
        progress: a label: the levels then run one call each behind a tqdm bar, for sweeps that
            take minutes (one program for a single level, compiled once; the same values up to
            float32 rounding, as XLA may fuse the two programs differently).
        select: time indices: only those rows of the grid are evaluated, with the keys the
            whole grid would give them (one level of a sweep split over processes, ``wgfm
            diagnose --shard``); ``ts`` and the values then have ``len(select)`` rows.

    Returns:
        The :class:`SweepResult`: values ``(T, n, ...)``, their means and quantiles by time.

    Raises:
        ValueError: an unknown diagnostic, mismatched shapes, ``batch_size < 1``, ``select``
            outside the grid, or a non-finite value (naming the first time index and sample).
    """
    diag = _resolve(diagnostic)
    ts = jnp.asarray(ts)
    xs = jax.tree_util.tree_map(jnp.asarray, xs)
    _check_shapes(xs, ts, batch_size)
    keys = None if key is None else jax.random.split(key, ts.shape[0])
    if select is not None:
        idx = np.asarray(select, int)
        if idx.ndim != 1 or not np.all((idx >= 0) & (idx < ts.shape[0])):
            raise ValueError(
                f"`select` must be time indices in [0, {ts.shape[0]}), got {list(select)!r}."
            )
        xs = jax.tree_util.tree_map(lambda a: a[idx], xs)
        ts = ts[idx]
        keys = None if keys is None else keys[idx]
    try:
        if mesh is None:
            bs = None if batch_size is None else int(batch_size)
            if progress is None or ts.shape[0] == 1:
                values = _run(diag, field, xs, ts, keys, bs, bool(checked))
            else:
                values = _run_levels(diag, field, xs, ts, keys, bs, bool(checked), progress)
        else:
            from ..distributed import sweep_over_mesh

            values = sweep_over_mesh(diag, field, xs, ts, keys, mesh)
    except eqx.EquinoxRuntimeError as err:
        if isinstance(xs, jax.Array):
            _name_nonfinite_input(field, xs, ts, err)
        raise
    host = require_finite(values, ts, what)
    # Summaries on the host (values are there for the check): no extra programs to compile.
    q = np.asarray(levels, dtype=np.asarray(ts).dtype)
    return SweepResult(
        ts,
        values,
        jax.tree_util.tree_map(lambda v: jnp.asarray(np.mean(v, axis=1)), host),
        jnp.asarray(q),
        jax.tree_util.tree_map(lambda v: jnp.asarray(np.quantile(v, q, axis=1)), host),
    )


def _check_shapes(xs, ts: Array, batch_size: int | None) -> None:
    """Raises unless every leaf of ``xs`` is ``(T, n, *sample_shape)`` with one ``(T, n)`` and
    ``T = len(ts)``, and ``batch_size`` is None or positive."""
    shapes = [x.shape for x in jax.tree_util.tree_leaves(xs)]
    if (
        ts.ndim != 1
        or not shapes
        or any(len(s) < 3 or s[:2] != shapes[0][:2] or s[0] != ts.shape[0] for s in shapes)
    ):
        raise ValueError(
            f"`xs` must have shape (T, n, *sample_shape) with T = len(ts), and `ts` shape (T,); "
            f"got xs {shapes if len(shapes) != 1 else shapes[0]}, ts {ts.shape} (use "
            "noised_samples, or broadcast shared samples)."
        )
    if batch_size is not None and int(batch_size) < 1:
        raise ValueError(f"`batch_size` must be a positive integer or None, got {batch_size!r}.")


def _resolve(diagnostic: str | Diagnostic) -> Diagnostic:
    if isinstance(diagnostic, str):
        if diagnostic not in DIAGNOSTICS:
            raise ValueError(
                f"`diagnostic` must be one of {sorted(DIAGNOSTICS)} or a callable, got {diagnostic!r}."
            )
        return DIAGNOSTICS[diagnostic]
    if not callable(diagnostic):
        raise ValueError(f"`diagnostic` must be a name or a callable, got {diagnostic!r}.")
    return diagnostic


def _raise_at(bad: np.ndarray, ts: Array, what: str, cause=None) -> None:
    i, n = (int(a) for a in np.argwhere(bad)[0])
    raise ValueError(
        f"{what} non-finite at time index {i} (t={float(ts[i])!r}), sample index {n} "
        f"(xs[{i}, {n}]); {int(bad.sum())} of {bad.size} (time, sample) pairs are affected."
    ) from cause


def _name_nonfinite_input(field, xs, ts, err) -> None:
    """After an in-jit non-finite error: find and name the first input with bad field values."""
    vals = eqx.filter_jit(
        lambda f, x, t: jax.vmap(lambda xi, ti: jax.vmap(lambda y: f(y, ti))(xi))(x, t)
    )(field, xs, ts)
    bad = np.asarray(~jnp.all(jnp.isfinite(vals), axis=tuple(range(2, vals.ndim))))
    if bad.any():
        _raise_at(bad, ts, "`field` values are", err)


def require_finite(values, ts, what: str = "diagnostic values are"):
    """``values`` on the host, after checking every entry is finite: the host-side check of an
    unchecked sweep.

    Args:
        values: a PyTree of arrays, each ``(T, n, ...)``, time index first.
        ts: the times, shape ``(T,)``, for the error.
        what: the values' name in the error.

    Returns:
        ``values`` as NumPy arrays (the same PyTree).

    Raises:
        ValueError: a non-finite value, naming the first bad time index, its ``t`` and the
            sample index.
    """
    host = jax.tree_util.tree_map(np.asarray, values)
    for arr in jax.tree_util.tree_leaves(host):
        bad = ~np.isfinite(arr).reshape(arr.shape[0], arr.shape[1], -1).all(axis=-1)
        if bad.any():
            _raise_at(bad, ts, what)
    return host
