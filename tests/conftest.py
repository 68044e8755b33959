"""Test configuration: float64 available everywhere; float32 paths are tested with float32 inputs."""

import os

os.environ.setdefault("MPLBACKEND", "Agg")
# One persistent compilation cache for the whole run (pytest-xdist workers and the notebook's
# kernel inherit it), inside the checkout.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    os.path.join(os.path.dirname(os.path.dirname(__file__)), ".pytest_cache", "jax-compile"),
)

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
