"""Process-wide XLA settings applied by the command line and the tests.

XLA:CPU (jaxlib 0.10) can intermittently wedge its multi-threaded Eigen pool on vmapped programs
that mix LAPACK custom calls (Cholesky, triangular solves) with host callbacks such as
``equinox.error_if``: the computation never returns, with every thread idle. We saw it in loop
sweeps over the oracle, in ``log_likelihood`` and in the benchmarks, always under load. Running
Eigen single-threaded avoids it (reported independently by other JAX users) for a modest
slowdown on CPU; GPU runs are unaffected. Opt out with ``WGFM_XLA_CPU_MULTI_THREAD=1``.
"""

from __future__ import annotations

import os

FLAG = "--xla_cpu_multi_thread_eigen=false"


def configure_xla_cpu() -> None:
    """Append :data:`FLAG` to ``XLA_FLAGS`` unless set already or opted out. Must run before
    JAX initialises its backend (the first computation) to take effect."""
    if os.environ.get("WGFM_XLA_CPU_MULTI_THREAD") == "1":
        return
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_multi_thread_eigen" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {FLAG}".strip()
