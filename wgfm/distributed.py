"""Scale-out with ``jax.sharding``: a 1-D data mesh, sharded batches, per-sample sweeps over the
mesh, data-parallel training steps and multi-host initialisation.

Rules (one per kind of work):

* **Training** is data parallel: the batch's leading axis is sharded over the mesh axis
  ``"data"``; parameters, optimiser state and keys are replicated. :func:`data_parallel` jits the
  step ONCE with these ``in_shardings``/``out_shardings`` and XLA's partitioner inserts the
  gradient all-reduce, so the step computes exactly the single-device mathematics (same key ->
  same ``t``/``eps`` draws, because ``jax_threefry_partitionable`` makes random bits independent
  of the sharding). A batch that does not divide the device count is an error
  (:func:`shard_batch`): padding would change the batch mean.
* **Per-sample work** (Jacobians, probe estimates, loop integrals, likelihoods, samples) goes
  through :func:`shard_over_samples`: ``jax.shard_map`` runs the function on each device's slice
  of the samples, so each sample sees the same computation as on one device. Here a count that
  does not divide the device count is padded (by repeating the last sample, always a valid
  input) and the padding is cut from the result, which therefore matches the unsharded call.
* **Checkpoints** are the ordinary orbax checkpoints of :class:`wgfm.checkpoint.Checkpointer`:
  orbax restores into the sharding of the ``like`` tree, so a checkpoint written on any mesh
  restores on one device (a plain ``like``) or on a mesh (``like = replicate(state, mesh)``).

Multi-host launch (one process per host, the same command everywhere; every process sees
the same data and computes the same global batch indices)::

    WGFM_COORDINATOR=host0:1234 WGFM_NUM_PROCESSES=4 WGFM_PROCESS_ID=$RANK wgfm train ...

(add ``--devices N`` to use N of the devices), or from Python ``distributed_init("host0:1234",
4, rank)`` before any other JAX call; on SLURM/TPU pods
``WGFM_DISTRIBUTED=1`` lets ``jax.distributed.initialize()`` detect the cluster. The mesh then
spans ``jax.devices()`` of all hosts; :func:`shard_batch` places the global batch (or, with
``process_local=True``, each host's own slice) over it.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from jaxtyping import Array, Bool

DATA_AXIS = "data"

__all__ = [
    "DATA_AXIS",
    "data_parallel",
    "data_sharding",
    "distributed_init",
    "make_mesh",
    "pad_batch",
    "replicate",
    "replicated_sharding",
    "setup_devices",
    "shard_batch",
    "shard_over_samples",
    "sweep_over_mesh",
]


# ---------------------------------------------------------------------------------------------
# Mesh and shardings.


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


def _axis(mesh: Mesh) -> str:
    if len(mesh.axis_names) != 1:
        raise ValueError(f"`mesh` must be 1-D (a data axis), got axes {mesh.axis_names}.")
    return str(mesh.axis_names[0])


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (sample) axis split over the mesh, other axes whole: ``PartitionSpec("data")``."""
    return NamedSharding(mesh, P(_axis(mesh)))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    """A full copy on every device: ``PartitionSpec()``."""
    return NamedSharding(mesh, P())


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Every array leaf of ``tree`` placed, whole, on each device of ``mesh``."""
    return jax.device_put(tree, replicated_sharding(mesh))


def _leading(tree: Any, name: str) -> int:
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
    n = _leading(batch, "batch")
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
    n = _leading(batch, "batch")
    m = -(-n // int(multiple)) * int(multiple)
    padded = jax.tree.map(lambda x: jnp.concatenate([x, jnp.repeat(x[-1:], m - n, 0)]), batch)
    return padded, jnp.arange(m) < n


# ---------------------------------------------------------------------------------------------
# Per-sample work over the mesh.


def _argnums(argnums: int | Sequence[int]) -> frozenset[int]:
    return frozenset((argnums,) if isinstance(argnums, int) else tuple(argnums))


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
    axis, size = _axis(mesh), mesh.devices.size
    which = _argnums(sharded_argnums)

    def count(args) -> int:
        if not which or max(which) >= len(args):
            raise ValueError(
                f"`sharded_argnums`={sorted(which)} must name arguments of the call "
                f"(got {len(args)} arguments)."
            )
        dyn = eqx.filter(args, eqx.is_array)
        ns = {_leading(dyn[i], f"argument {i}") for i in which}
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
    if keys is not None:  # (T,) -> (n, T), key [n, i] = split(keys[i], n)[n]
        sample_keys = jnp.swapaxes(jax.vmap(lambda k: jax.random.split(k, xs.shape[1]))(keys), 0, 1)
    argnums = (2,) if sample_keys is None else (2, 4)
    values = shard_over_samples(_sweep_local, mesh, sharded_argnums=argnums)(
        diag, field, jnp.swapaxes(xs, 0, 1), ts, sample_keys
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
    out = jax.lax.map(at_time, (jnp.swapaxes(xs_nt, 0, 1), ts, keys_tn))
    return jax.tree.map(lambda v: jnp.swapaxes(v, 0, 1), out)


# ---------------------------------------------------------------------------------------------
# Data-parallel training.


def data_parallel(
    step: Callable[..., Any],
    mesh: Mesh,
    *,
    batch_argnums: int | Sequence[int] = 1,
    donate_argnums: int | Sequence[int] = (),
) -> Callable[..., Any]:
    """``step`` compiled once with the arguments in ``batch_argnums`` sharded over samples and
    every other argument (train state, key, a resident dataset) and every output replicated.

    ``step`` must take a fixed number of positional PyTrees of arrays and return PyTrees of
    arrays (close over models and optimisers). The partitioner turns the batch mean into a
    cross-device all-reduce, so the result equals the single-device step up to float summation
    order. The returned function checks the batch size and exposes ``.lower`` (AOT)."""
    which = _argnums(batch_argnums)
    params = inspect.signature(step).parameters.values()
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if any(p.kind not in kinds for p in params):
        raise ValueError("`step` must take positional arguments only (no *args or keywords).")
    nargs = len(params)
    if not which or max(which) >= nargs:
        raise ValueError(
            f"`batch_argnums`={sorted(which)} must name arguments of `step` ({nargs})."
        )
    jitted = _data_parallel_jit(step, mesh, which, nargs, _argnums(donate_argnums))

    @functools.wraps(step)
    def run(*args):
        for i in which:
            n, local = _leading(args[i], "batch"), mesh.devices.size
            if n % local:
                raise ValueError(
                    f"`batch` has {n} samples, which does not divide over {local} devices; use "
                    f"a batch size that is a multiple of {local}."
                )
        return jitted(*args)

    run.lower = jitted.lower  # type: ignore[attr-defined]
    return run


@functools.lru_cache(maxsize=16)
def _data_parallel_jit(step, mesh: Mesh, which, nargs: int, donate) -> Any:
    # Cached so that re-wrapping the same step (e.g. on resume) does not recompile.
    data, rep = data_sharding(mesh), replicated_sharding(mesh)
    shardings = tuple(data if i in which else rep for i in range(nargs))
    return jax.jit(step, in_shardings=shardings, out_shardings=rep, donate_argnums=tuple(donate))


# ---------------------------------------------------------------------------------------------
# Multi-host and the CLI's --devices.

_ENV = ("WGFM_COORDINATOR", "WGFM_NUM_PROCESSES", "WGFM_PROCESS_ID")


def distributed_init(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> bool:
    """Call ``jax.distributed.initialize`` when flags or ``WGFM_COORDINATOR`` /
    ``WGFM_NUM_PROCESSES`` / ``WGFM_PROCESS_ID`` (or ``WGFM_DISTRIBUTED=1`` for cluster
    auto-detection) are set; returns whether it did. Must run before any other JAX call."""
    env = [os.environ.get(k) for k in _ENV]
    coordinator = coordinator or env[0]
    num_processes = num_processes if num_processes is not None else _int_env(_ENV[1], env[1])
    process_id = process_id if process_id is not None else _int_env(_ENV[2], env[2])
    given = [v is not None for v in (coordinator, num_processes, process_id)]
    auto = os.environ.get("WGFM_DISTRIBUTED", "") not in ("", "0")
    if not any(given) and not auto:
        return False
    if any(given) and not all(given):
        raise ValueError(
            "multi-host needs all of `coordinator` (host:port), `num_processes` and "
            f"`process_id`; got coordinator={coordinator!r}, num_processes={num_processes!r}, "
            f"process_id={process_id!r}."
        )
    if all(given):
        assert num_processes is not None and process_id is not None
        if not 0 <= process_id < num_processes:
            raise ValueError(
                f"`process_id` must lie in [0, num_processes={num_processes}), got {process_id}."
            )
    jax.distributed.initialize(coordinator, num_processes, process_id)
    return True


def _int_env(name: str, value: str | None) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(
            f"environment variable {name} must be an integer, got {value!r}."
        ) from None


def setup_devices(
    devices: int | None = None,
    *,
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> Mesh | None:
    """The CLI's entry: multi-host init (if asked) then a data mesh over ``devices`` devices
    (all devices if multi-host and ``devices`` is None); ``None`` for the plain 1-device path."""
    multi = distributed_init(coordinator, num_processes, process_id)
    if devices is None and not multi:
        return None
    return make_mesh(devices)
