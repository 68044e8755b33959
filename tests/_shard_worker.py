"""Run by ``tests/test_diagnose_shards.py`` in a subprocess: ``wgfm diagnose`` of a tiny JAX
field (:func:`model`) as one process of a sharded run, optionally SIGKILLed halfway through
writing its second level.

Usage: ``python _shard_worker.py OUT I/N [die]``. Exits 0 when its share is done, 3 if it was
to die but never got there.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)  # as tests/conftest.py: the same programs

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from wgfm.diagnosis import QUICK, outdir  # noqa: E402
from wgfm.diagnosis.command import DiagnoseConfig, run  # noqa: E402
from wgfm.processes import VP  # noqa: E402

# D = 6 with probes forced: the adaptive probe path (rounds of 2 probes up to 8), whose keys
# and stopping are per sample; 3 levels for claim 1 and 2 for claim 2; the quick mode's sizes
# otherwise, smaller where they cost.
SIZES = dataclasses.replace(
    QUICK, num_levels=3, loop_levels=2, sub_jacobian_size=4, num_probes=2, max_probes=8,
    max_exact_dim=64, loop_points=8, bridge_steps=8, noisy_points=4, num_generated=4,
    ddim_steps=4,
)  # fmt: skip


def model():
    """A non-conservative score field on R^6 (``tanh(W x)`` with ``W`` not symmetric)."""
    w = jnp.arange(36.0).reshape(6, 6) / 36.0
    field = lambda x, t: jnp.tanh(w @ x) * (1 + t)  # noqa: E731
    field.sample_shape = (6,)  # pyright: ignore[reportFunctionMemberAccess]
    return field, VP(), "score"


def config(out: Path, shard: str | None) -> DiagnoseConfig:
    return DiagnoseConfig(
        model=f"{Path(__file__).stem}:model",  # pyright: ignore[reportArgumentType]
        out=out,
        shard=shard,
        jacobians="probes",
        compile_cache=False,
    )


def die_in_second_write() -> None:
    """Keep the first level; SIGKILL halfway through writing the second (inside ``np.savez``,
    after part of its bytes)."""
    store = outdir.store_level
    calls = [0]

    def torn(file, *args, **kwargs):
        file.write(b"PK\x03\x04 cut short")
        file.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    def killing(path, values, stamp):
        calls[0] += 1
        if calls[0] == 2:
            np.savez = torn
        store(path, values, stamp)

    outdir.store_level = killing


if __name__ == "__main__":
    if sys.argv[3:] == ["die"]:
        die_in_second_write()
    run(config(Path(sys.argv[1]), sys.argv[2]), sizes=SIZES)
    sys.exit(3 if sys.argv[3:] == ["die"] else 0)
