"""Per-sample work (diagnostics, transport, sweeps) split over the mesh with ``jax.shard_map``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from .mesh import argnum_set, data_axis, leading_size, pad_batch


def shard_over_samples(
    fn: Callable[..., Any],
    mesh: Mesh,
    *,
    sharded_argnums: int | Sequence[int] = 0,
) -> Callable[..., Any]:
    """``fn`` (batched: samples on the leading axis of the arguments in ``sharded_argnums`` and
    of every output leaf) run with its samples split over ``mesh`` by ``jax.shard_map``.

    Other arguments (fields, parameters, shared probes or indices) are replicated; non-array
    leaves are static. The sample count is padded to a multiple of the mesh size by repeating
    the last sample and the padding is cut from the outputs, so the result equals ``fn(*args)``
    for any ``fn`` that treats its samples independently (e.g. ``jax.vmap`` of a per-sample
    diagnostic, ``sample_ode``/``log_likelihood`` with ``per_sample=True``). Per-sample
    randomness must come in as per-sample keys (a sharded argument), not one shared key.
    Compiled once per input shape (``equinox.filter_jit``)."""
    axis, size = data_axis(mesh), mesh.devices.size
    which = argnum_set(sharded_argnums)

    def count(args) -> int:
        if not which or max(which) >= len(args):
            raise ValueError(
                f"`sharded_argnums`={sorted(which)} must name arguments of the call "
                f"(got {len(args)} arguments)."
            )
        dyn = eqx.filter(args, eqx.is_array)
        ns = {leading_size(dyn[i], f"argument {i}") for i in which}
        if len(ns) != 1:
            raise ValueError(f"sharded arguments {sorted(which)} disagree on sample count {ns}.")
        return ns.pop()

    @eqx.filter_jit
    def padded(*args):
        dyn, static = eqx.partition(args, eqx.is_array)
        dyn = tuple(pad_batch(a, size)[0] if i in which else a for i, a in enumerate(dyn))
        specs = tuple(P(axis) if i in which else P() for i in range(len(dyn)))

        def local(*d):
            return fn(*eqx.combine(d, static))

        # check_vma=False: diffrax's while loops and equinox's error_if do not annotate
        # varying-manual-axes; every output is per-sample, so out_specs P(axis) is exact.
        return jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=P(axis), check_vma=False)(
            *dyn
        )

    def run(*args):
        n = count(args)
        out = padded(*args)
        if -(-n // size) * size == n:
            return out
        # The program above has no cross-device communication, so an equinox.error_if raised on
        # some devices only surfaces here as an error. Cutting the padding needs a gather: run it
        # only once every device has finished (a collective after a partial failure deadlocks).
        jax.block_until_ready(out)
        return jax.tree.map(lambda y: y[:n], out)

    run.lower = padded.lower  # type: ignore[attr-defined]
    return run


def sweep_over_mesh(diag, field, xs, ts, keys, mesh: Mesh) -> Any:
    """``wgfm.diagnostics.sweep``'s values ``(T, n)`` with the n samples split over ``mesh``.

    The per-time ``keys`` are split into per-sample keys HERE, exactly as the unsharded sweep
    splits them, so a keyed (probe) diagnostic sees the same random numbers."""
    sample_keys = None
    n = jax.tree_util.tree_leaves(xs)[0].shape[1]  # xs: an array or a PyTree (e.g. a pair)
    if keys is not None:  # (T,) -> (n, T), key [n, i] = split(keys[i], n)[n]
        sample_keys = jnp.swapaxes(jax.vmap(lambda k: jax.random.split(k, n))(keys), 0, 1)
    argnums = (2,) if sample_keys is None else (2, 4)
    values = shard_over_samples(_sweep_local, mesh, sharded_argnums=argnums)(
        diag, field, _swap(xs), ts, sample_keys
    )
    return jax.tree.map(lambda v: jnp.swapaxes(v, 0, 1), values)


def _sweep_local(diag, field, xs_nt, ts, keys_nt):
    """One device's samples ``xs_nt (n_local, T, ...)``: ``lax.map`` over times as in sweep."""

    def at_time(args):
        x_t, t, k = args
        if k is None:
            return jax.vmap(lambda x: diag(field, x, t))(x_t)
        return jax.vmap(lambda x, kk: diag(field, x, t, key=kk))(x_t, k)

    keys_tn = None if keys_nt is None else jnp.swapaxes(keys_nt, 0, 1)
    out = jax.lax.map(at_time, (_swap(xs_nt), ts, keys_tn))
    return _swap(out)


def _swap(tree):
    """Every leaf's two leading axes swapped (samples <-> times)."""
    return jax.tree.map(lambda v: jnp.swapaxes(v, 0, 1), tree)
