"""Multi-host initialisation and the CLI's ``--devices``."""

from __future__ import annotations

import os

import jax
from jax.sharding import Mesh

from .mesh import make_mesh

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
    num_processes = num_processes if num_processes is not None else int_env(_ENV[1], env[1])
    process_id = process_id if process_id is not None else int_env(_ENV[2], env[2])
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


def int_env(name: str, value: str | None) -> int | None:
    """Environment variable ``name``'s ``value`` as an integer (None if unset or empty); a
    ``ValueError`` naming it otherwise."""
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
