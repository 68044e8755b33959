"""Orbax checkpoints of a training state with atomic writes and fallback on corruption.

Each checkpoint is one orbax step directory holding the state PyTree (parameters, optimiser
state, EMA, step, RNG key) and a JSON record (step, data position, anything else the caller
passes). Orbax writes into a temporary directory and renames it only once complete, so a write
interrupted mid-way never replaces the previous checkpoint; :meth:`Checkpointer.restore_latest`
additionally falls back, with a warning, to older checkpoints when the newest cannot be read.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp


class CheckpointWarning(UserWarning):
    """A checkpoint could not be read and an older one was used instead."""


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
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def steps(self) -> list[int]:
        """Steps of the complete checkpoints, oldest first (re-read from disk)."""
        self._manager.reload()
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Write ``state`` (a PyTree of arrays) and ``meta`` (JSON-able) as checkpoint ``step``."""
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave({**meta, "step": step})
        )
        self._manager.save(step, args=args, force=True)
        self._manager.wait_until_finished()

    def restore(self, step: int, like: Any) -> tuple[Any, dict]:
        """Checkpoint ``step`` restored into the structure, shapes and dtypes of ``like``."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
        )
        out = self._manager.restore(step, args=args)
        return out["state"], dict(out["meta"])

    def restore_latest(self, like: Any) -> tuple[Any, dict] | None:
        """The newest readable checkpoint, or ``None`` if there is none. Unreadable newer ones
        are skipped with a :class:`CheckpointWarning` naming the step and the error."""
        steps = self.steps()
        for step in reversed(steps):
            try:
                return self.restore(step, like)
            except Exception as e:  # orbax/tensorstore raise many types on corrupt files
                warnings.warn(
                    f"checkpoint at step {step} in {self.directory} is unreadable "
                    f"({type(e).__name__}: {str(e)[:200]}); falling back to an older one.",
                    CheckpointWarning,
                    stacklevel=2,
                )
        if steps:
            raise RuntimeError(f"no readable checkpoint in {self.directory} (steps {steps}).")
        return None

    def close(self) -> None:
        self._manager.close()
