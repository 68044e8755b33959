"""Test configuration: float64 available everywhere; float32 paths are tested with float32 inputs."""

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
