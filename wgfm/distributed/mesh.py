"""The 1-D data mesh, its two shardings, and placing or padding a batch of samples."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from jaxtyping import Array, Bool

DATA_AXIS = "data"


def make_mesh(devices: int | None = None, *, axis_name: str = DATA_AXIS) -> Mesh:
    """A 1-D mesh over the first ``devices`` of ``jax.devices()`` (all of them if ``None``)."""
    available = jax.devices()
    n = len(available) if devices is None else devices
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"`devices` must be a positive integer or None, got {devices!r}.")
    if n > len(available):
        hint = ""
        if available[0].platform == "cpu":
            hint = (
                " To simulate CPU devices, set XLA_FLAGS=--xla_force_host_platform_device_count="
                f"{n} before JAX starts."
            )
        raise ValueError(
            f"`devices`={n} requested but only {len(available)} {available[0].platform} "
            f"device(s) exist.{hint}"
        )
    return Mesh(np.asarray(available[: int(n)]), (axis_name,))


def data_axis(mesh: Mesh) -> str:
    """The name of the one (data) axis of ``mesh``; ``ValueError`` for a mesh of other rank."""
    if len(mesh.axis_names) != 1:
        raise ValueError(f"`mesh` must be 1-D (a data axis), got axes {mesh.axis_names}.")
    return str(mesh.axis_names[0])


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (sample) axis split over the mesh, other axes whole: ``PartitionSpec("data")``."""
    return NamedSharding(mesh, P(data_axis(mesh)))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    """A full copy on every device: ``PartitionSpec()``."""
    return NamedSharding(mesh, P())


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Every array leaf of ``tree`` placed, whole, on each device of ``mesh``."""
    return jax.device_put(tree, replicated_sharding(mesh))


def leading_size(tree: Any, name: str) -> int:
    """The leading (sample) axis length shared by every leaf of ``tree`` (argument ``name`` in
    the error when the leaves disagree or one is a scalar)."""
    leaves = jax.tree_util.tree_leaves(tree)
    sizes = {int(jnp.shape(x)[0]) for x in leaves if jnp.ndim(x) > 0}
    if not leaves or len(sizes) != 1 or any(jnp.ndim(x) == 0 for x in leaves):
        shapes = [jnp.shape(x) for x in leaves]
        raise ValueError(
            f"`{name}` must be a PyTree of arrays sharing one leading (sample) axis, got shapes "
            f"{shapes}."
        )
    return sizes.pop()


def shard_batch(batch: Any, mesh: Mesh, *, process_local: bool = False) -> Any:
    """Place a batch (PyTree, leading axis = samples) with its samples split over ``mesh``.

    Raises ``ValueError`` if the batch size does not divide the device count (use
    :func:`pad_batch` and a mask). Multi-host: by default ``batch`` is the GLOBAL batch, the same
    on every process; with ``process_local`` each process passes only its own slice and the
    global batch is their concatenation (``jax.make_array_from_process_local_data``)."""
    n = leading_size(batch, "batch")
    sharding = data_sharding(mesh)
    local = mesh.devices.size // (jax.process_count() if process_local else 1)
    if n % local:
        raise ValueError(
            f"`batch` has {n} samples, which does not divide over {local} device(s); pick a "
            f"batch size that is a multiple of {local} or use wgfm.distributed.pad_batch."
        )
    if process_local:
        return jax.tree.map(
            lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch
        )
    return jax.device_put(batch, sharding)


def pad_batch(batch: Any, multiple: int) -> tuple[Any, Bool[Array, " m"]]:
    """``(padded, mask)``: the leading axis padded to a multiple of ``multiple`` by repeating the
    last sample (a valid input for any field), and ``mask`` true on the real samples."""
    if int(multiple) < 1:
        raise ValueError(f"`multiple` must be a positive integer, got {multiple!r}.")
    n = leading_size(batch, "batch")
    m = -(-n // int(multiple)) * int(multiple)
    padded = jax.tree.map(lambda x: jnp.concatenate([x, jnp.repeat(x[-1:], m - n, 0)]), batch)
    return padded, jnp.arange(m) < n


def argnum_set(argnums: int | Sequence[int]) -> frozenset[int]:
    """``argnums`` (one index or several) as a set of argument indices."""
    return frozenset((argnums,) if isinstance(argnums, int) else tuple(argnums))
