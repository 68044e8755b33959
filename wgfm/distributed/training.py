"""Data-parallel training: one compiled step, batch sharded, state replicated."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import jax
from jax.sharding import Mesh

from .mesh import argnum_set, data_sharding, leading_size, replicated_sharding


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
    which = argnum_set(batch_argnums)
    params = inspect.signature(step).parameters.values()
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if any(p.kind not in kinds for p in params):
        raise ValueError("`step` must take positional arguments only (no *args or keywords).")
    nargs = len(params)
    if not which or max(which) >= nargs:
        raise ValueError(
            f"`batch_argnums`={sorted(which)} must name arguments of `step` ({nargs})."
        )
    jitted = _data_parallel_jit(step, mesh, which, nargs, argnum_set(donate_argnums))

    @functools.wraps(step)
    def run(*args):
        for i in which:
            n, local = leading_size(args[i], "batch"), mesh.devices.size
            if n % local:
                raise ValueError(
                    f"`batch` has {n} samples, which does not divide over {local} devices; use "
                    f"a batch size that is a multiple of {local}."
                )
        return jitted(*args)

    run.lower = jitted.lower  # type: ignore[attr-defined]
    return run


def _data_parallel_jit(step, mesh: Mesh, which, nargs: int, donate) -> Any:
    # No cache of our own: JAX's keys its traces and executables on `step` and the shardings,
    # so re-wrapping the same (or an equal) step, e.g. on resume, does not recompile.
    data, rep = data_sharding(mesh), replicated_sharding(mesh)
    shardings = tuple(data if i in which else rep for i in range(nargs))
    return jax.jit(step, in_shardings=shardings, out_shardings=rep, donate_argnums=tuple(donate))
