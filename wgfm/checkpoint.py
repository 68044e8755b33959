"""Orbax checkpoints of a training state with atomic writes, checksums and fallback on corruption.

Each checkpoint is one orbax step directory holding the state PyTree (parameters, optimiser
state, EMA, step, RNG key), a JSON record (step, data position, anything else the caller
passes) and, in orbax's per-step custom metadata, a SHA-256 of both. Orbax writes into a
temporary directory and renames it only once complete, so a write interrupted mid-way never
replaces the previous checkpoint. :meth:`Checkpointer.restore_latest` verifies the checksum and
moves a step that cannot be read or does not match it aside, into ``corrupt/`` next to the
steps (kept for inspection, never deleted), then falls back to the next older step with one
:class:`CheckpointWarning` line. A checkpoint of another model (other array shapes) is not
corrupt: it raises :class:`CheckpointMismatchError` and nothing is moved.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import inspect
import json
import logging
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

_CHECKSUM_KEY = "wgfm_sha256"
# Loggers through which a failed orbax/tensorstore restore reports, besides its exception
# (tracebacks of abandoned asyncio tasks, "Event loop is closed", orbax's own error logs).
_NOISY_LOGGERS = ("absl", "asyncio", "orbax", "jax._src.distributed")


class CheckpointWarning(UserWarning):
    """A checkpoint could not be read and an older one was used instead."""


class CheckpointMismatchError(ValueError):
    """The checkpoint holds a state of another structure (another model or optimiser)."""


class CorruptCheckpointError(RuntimeError):
    """The checkpoint's contents do not match the checksum stored with them."""


def tree_checksum(state: Any, meta: dict) -> str:
    """SHA-256 over every leaf's dtype, shape and bytes (in tree order) and the JSON of ``meta``."""
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(state):
        dtype = getattr(leaf, "dtype", None)  # Python scalars have none
        if dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)  # typed keys have no NumPy view
        arr = np.ascontiguousarray(jax.device_get(leaf))
        h.update(f"{arr.dtype.str}{arr.shape}".encode())
        h.update(arr.tobytes())
    h.update(json.dumps(meta, sort_keys=True).encode())
    return h.hexdigest()


@contextlib.contextmanager
def _quiet_orbax():
    """Silence the loggers a failed restore writes tracebacks to; the caller reports one line."""
    saved = [(lg, lg.level) for lg in map(logging.getLogger, _NOISY_LOGGERS)]
    for lg, _ in saved:
        lg.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for lg, level in saved:
            lg.setLevel(level)


def _collect_quietly(timeout: float = 2.0) -> None:
    """Collect the reads a failed tensorstore restore abandons, now and in silence. Collected
    later (at the latest at exit), they print "Exception ignored" tracebacks ("while reading
    array index", "Event loop is closed") and asyncio "Task exception was never retrieved"
    logs, long after the one-line warning that reports the failure. Reads still in flight are
    waited for (up to ``timeout`` seconds) and collected once they end. The hook, the warning
    filters and the logger levels are put back on return: nothing outlives the call."""
    hook = sys.unraisablehook
    sys.unraisablehook = lambda _: None
    try:
        with warnings.catch_warnings(), _quiet_orbax():
            warnings.simplefilter("ignore")
            gc.collect()
            deadline = time.monotonic() + timeout
            while _reads_in_flight() and time.monotonic() < deadline:
                time.sleep(0.05)
                gc.collect()
    finally:
        sys.unraisablehook = hook


def _reads_in_flight() -> bool:
    """Whether an orbax coroutine is still suspended (a read of the failed restore that has
    not ended yet: it is collected, noisily, only once it has)."""
    return any(
        inspect.iscoroutine(o) and o.cr_frame is not None and "orbax" in o.cr_code.co_filename
        for o in gc.get_objects()
    )


class Checkpointer:
    """Save/restore ``(state, meta)`` pairs under ``directory`` (synchronous; keeps ``max_to_keep``)."""

    def __init__(self, directory: str | Path, max_to_keep: int = 3):
        if max_to_keep < 2:
            # One spare is needed to fall back to when the newest checkpoint is corrupt.
            raise ValueError(f"`max_to_keep` must be >= 2, got {max_to_keep}.")
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, enable_async_checkpointing=False, create=True
        )
        # Handlers named up front, so that a fresh manager reads a step's metadata too.
        handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_handlers=handlers
        )

    def steps(self) -> list[int]:
        """Steps of the complete checkpoints, oldest first (re-read from disk)."""
        self._manager.reload()
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Write ``state`` (a PyTree of arrays) and ``meta`` (JSON-able) as checkpoint ``step``."""
        meta = {**meta, "step": step}
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        checksum = {_CHECKSUM_KEY: tree_checksum(state, meta)}
        self._manager.save(step, args=args, force=True, custom_metadata=checksum)
        self._manager.wait_until_finished()

    def restore(self, step: int, like: Any) -> tuple[Any, dict]:
        """Checkpoint ``step`` restored into the structure, shapes and dtypes of ``like``.

        Raises :class:`CheckpointMismatchError` if the stored arrays do not fit ``like``,
        :class:`CorruptCheckpointError` if they do not match their stored checksum, and
        whatever orbax/tensorstore raise for an unreadable step."""
        with _quiet_orbax():
            self._check_structure(step, like)
            abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
            args = ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
            )
            out = self._manager.restore(step, args=args)
            stored = self._manager.metadata(step).custom_metadata.get(_CHECKSUM_KEY)
        state, meta = out["state"], dict(out["meta"])
        # Checkpoints written before checksums existed carry none and are taken as they are.
        if stored is not None and stored != tree_checksum(state, meta):
            raise CorruptCheckpointError(f"contents do not match the checksum of step {step}")
        return state, meta

    def _check_structure(self, step: int, like: Any) -> None:
        """Compare the stored arrays' shapes and dtypes with ``like``'s (from orbax's metadata:
        nothing is read when they differ). Unreadable metadata is left to the restore."""
        try:
            tree = self._manager.item_metadata(step)["state"].tree
            stored = sorted(_shape_dtype(m) for m in jax.tree.leaves(tree))
            wanted = sorted(_shape_dtype(x) for x in jax.tree.leaves(like))
        except Exception:  # never let the check itself make a sound step look unreadable
            return
        if stored != wanted:
            raise CheckpointMismatchError(
                f"checkpoint at step {step} in {self.directory} holds {len(stored)} arrays "
                f"({_count(stored)} values) but the state being restored has {len(wanted)} "
                f"({_count(wanted)} values): it was written for another model or optimiser."
            )

    def restore_latest(self, like: Any) -> tuple[Any, dict] | None:
        """The newest readable checkpoint, or ``None`` if there is none.

        Each newer step that cannot be read or fails its checksum is moved into ``corrupt/``
        with one :class:`CheckpointWarning` naming the step, the error and where it went.
        :class:`CheckpointMismatchError` (another model) propagates and moves nothing."""
        steps = self.steps()
        for step in reversed(steps):
            try:
                return self.restore(step, like)
            except CheckpointMismatchError:
                raise
            except Exception as e:  # orbax/tensorstore raise many types on corrupt files
                error = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:160]}"
            # Outside the except block: the exception's traceback no longer holds the reads
            # it abandoned, so they can be collected here rather than at exit.
            _collect_quietly()
            moved = self.move_aside(step)
            warnings.warn(
                f"checkpoint at step {step} is unreadable ({error}); moved to {moved}, "
                "falling back to an older one.",
                CheckpointWarning,
                stacklevel=2,
            )
        if steps:
            raise RuntimeError(
                f"no readable checkpoint in {self.directory}: steps {steps} were all unreadable "
                f"and moved to {self.directory / 'corrupt'}."
            )
        return None

    def move_aside(self, step: int) -> Path:
        """Rename step ``step``'s directory to ``corrupt/<step>[-<n>]`` (a name orbax does not
        list as a step), so that training can write that step again; returns the new path."""
        src = self.directory / str(step)
        dest_dir = self.directory / "corrupt"
        dest_dir.mkdir(exist_ok=True)
        dest, n = dest_dir / str(step), 1
        while dest.exists():
            dest, n = dest_dir / f"{step}-{n}", n + 1
        src.rename(dest)
        self._manager.reload()
        return dest

    def close(self) -> None:
        self._manager.close()


def _shape_dtype(x) -> tuple[tuple[int, ...], str]:
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.eval_shape(jax.random.key_data, x)  # orbax stores a typed key as its data
    return tuple(int(d) for d in x.shape), str(np.dtype(x.dtype))


def _count(shapes: list[tuple[tuple[int, ...], str]]) -> int:
    return sum(int(np.prod(s)) for s, _ in shapes)
