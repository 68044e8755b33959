"""JAX's persistent compilation cache for the commands (``wgfm reproduce`` / ``diagnose``)."""

from __future__ import annotations

import os
from pathlib import Path

import jax


def use_compile_cache() -> Path:
    """Turn on JAX's persistent compilation cache (unless a directory is already configured)
    and return its directory. Most of a quick run is XLA compilation; the cache keys programs
    by their HLO, compiler options and jaxlib version, so a cached program is the same one.
    A process-wide setting: the commands call it, library functions never do."""
    if not jax.config.values["jax_compilation_cache_dir"]:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        jax.config.update("jax_compilation_cache_dir", str(base / "wgfm" / "jax"))
    # Also the many sub-second programs (random draws, metrics): together they add up.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)
    return Path(jax.config.values["jax_compilation_cache_dir"])
