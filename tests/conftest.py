"""Test configuration: float64 available everywhere; float32 paths are tested with float32 inputs."""

import os

os.environ.setdefault("MPLBACKEND", "Agg")

from wgfm._runtime import configure_xla_cpu  # noqa: E402

configure_xla_cpu()  # before the backend starts: see wgfm/_runtime.py (XLA:CPU hang)

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
