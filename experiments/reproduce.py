"""``wgfm reproduce``: run every claim's experiment and write REPORT.md, results.json, figures/.

Each claim lives in its own module with ``run(ctx, report)``; they share trained networks
through :class:`experiments.common.Context`, which trains each one once, lazily.
"""

from __future__ import annotations

import importlib
import os
import pickle
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
from rich.console import Console
from tqdm.auto import tqdm

from experiments.common import Context
from experiments.config import ReproduceConfig, Sizes
from experiments.report import Report

CLAIMS: dict[int, tuple[str, str]] = {
    1: ("experiments.differential", "1. Differential constraint: Jacobian asymmetry"),
    2: ("experiments.integral", "2. Integral constraint: loop circulation"),
    3: ("experiments.objectives", "3. WGF flow matching is what diffusion training does"),
    4: ("experiments.harm", "4. Non-conservative error and density transport"),
    5: ("experiments.conservative", "5. Beyond the paper: conservative versus free"),
}


# Claims that need the exact mixture oracle (not defined for image data).
ORACLE_CLAIMS = (3, 4, 5)


# With two processes: claims 1-2 here, 3-5 in a second process. Both halves take about as
# long. A network both need (the 2D and 10-D eps networks) is trained by whichever asks first
# and handed to the other through a temporary directory (``common._shared``); the image
# networks, which checkpoint under OUT/networks, are trained by claims 1-2 only.
GROUPS = ((1, 2), (3, 4, 5))


def run(config: ReproduceConfig, *, sizes: Sizes | None = None, mesh=None) -> Report:
    """Run the selected claims and write the report; returns it (rows, numbers, figures).
    ``sizes`` overrides the preset's (tests), ``mesh`` trains the networks data parallel."""
    console = Console(stderr=True)
    if config.compile_cache:
        use_compile_cache()
    report = Report(config.out)
    claims = [c for c in CLAIMS if not config.only or c in config.only]
    if not config.vector_sets:
        for c in [c for c in claims if c in ORACLE_CLAIMS]:
            report.notes[CLAIMS[c][1]] = (
                f"Not run under --preset {config.preset}: this claim is measured against the "
                "exact Gaussian-mixture oracle, which image data lack; run --preset default."
            )
        claims = [c for c in claims if c not in ORACLE_CLAIMS]
    jobs = config.jobs or (2 if (os.cpu_count() or 1) >= 2 else 1)
    groups = [[c for c in g if c in claims] for g in GROUPS]
    # A second process needs the claims of both groups, no device mesh and POSIX file locks.
    two = jobs > 1 and mesh is None and all(groups) and os.name == "posix"
    t_all = time.perf_counter()
    partitionable = jax.config.jax_threefry_partitionable
    try:
        if mesh is None:
            # Threefry's partitionable layout only pays on sharded draws; off, XLA:CPU compiles
            # the random draws in every program in about half the time (a loop sweep ~30%
            # faster to compile). Other random streams, same laws. Restored when done.
            jax.config.update("jax_threefry_partitionable", False)
        if two:
            console.log(f"claims {groups[1]} run in a second process")
            with _Worker(config, sizes, groups[1]) as other:
                ctx = _run_claims(config, sizes, groups[0], None, report=report,
                                  share_dir=other.share_dir)  # fmt: skip
                report.merge(other.result())
        else:
            ctx = _run_claims(config, sizes, claims, None, report=report, mesh=mesh)
    finally:
        jax.config.update("jax_threefry_partitionable", partitionable)
    report.order([CLAIMS[c][1] for c in CLAIMS])
    header = {
        "mode": "quick" if config.quick else "full",
        "preset": config.preset,
        "data sets": ", ".join(config.datasets),
        "process": type(ctx.process).__name__,
        "processes": 2 if two else 1,
        "seed": config.seed,
        "device": f"{jax.devices()[0].platform} ({jax.devices()[0].device_kind})",
        "python": platform.python_version(),
        "jax": jax.__version__,
        "total run time (s)": round(time.perf_counter() - t_all, 1),
    }
    md, js = report.write(header)
    console.log(f"Report: {md}  Results: {js}  Figures: {report.fig_dir}")
    return report


def use_compile_cache() -> Path:
    """Turn on JAX's persistent compilation cache (unless a directory is already configured)
    and return its directory. Most of a quick run is XLA compilation; the cache keys programs
    by their HLO, compiler options and jaxlib version, so a cached program is the same one."""
    if not jax.config.jax_compilation_cache_dir:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        jax.config.update("jax_compilation_cache_dir", str(base / "wgfm" / "jax"))
    # Also the many sub-second programs (random draws, metrics): they add up to minutes.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)
    return Path(jax.config.jax_compilation_cache_dir)


def _run_claims(
    config, sizes, claims, x64, *, report: Report | None = None, mesh=None, share_dir=None
):
    """Run ``claims`` in this process with their own :class:`Context`. In the second process
    (``report`` None) return the filled report; else fill ``report`` and return the context."""
    if x64 is not None:  # the second process: as in the first
        jax.config.update("jax_enable_x64", x64)
        jax.config.update("jax_threefry_partitionable", False)
        if config.compile_cache:
            use_compile_cache()
    console = Console(stderr=True)
    ctx = Context(config, sizes=sizes, mesh=mesh, share_dir=share_dir)
    own = report is None
    report = Report(config.out) if own else report
    bar = tqdm(claims, desc="wgfm reproduce", unit="claim", dynamic_ncols=True, disable=own)
    for c in bar:
        module, title = CLAIMS[c]
        bar.set_postfix_str(title[:48])
        t0 = time.perf_counter()
        importlib.import_module(module).run(ctx, report, title)
        report.timings[title] = time.perf_counter() - t0
        console.log(f"{title}: done in {report.timings[title]:.1f} s")
    return report if own else ctx


class _Worker:
    """Claims run in a fresh Python process (``python -m experiments.reproduce``; not
    ``multiprocessing``, which re-imports the caller's main module). Arguments and the filled
    report travel as pickles through a temporary directory; its log goes to our stderr."""

    def __init__(self, config, sizes, claims):
        self._dir = tempfile.TemporaryDirectory(prefix="wgfm-reproduce-")
        d = Path(self._dir.name)
        self.share_dir = d / "networks"  # the two processes train each network once
        args = (config, sizes, claims, jax.config.jax_enable_x64, sys.path)
        (d / "args.pkl").write_bytes(pickle.dumps(args))
        cmd = [sys.executable, "-m", "experiments.reproduce", str(d)]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        if jax.config.jax_compilation_cache_dir:  # the same cache as this process
            env["JAX_COMPILATION_CACHE_DIR"] = str(jax.config.jax_compilation_cache_dir)
        self._proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL)

    def result(self) -> Report:
        rc = self._proc.wait()
        out = Path(self._dir.name) / "report.pkl"
        if rc != 0 or not out.exists():
            raise RuntimeError(
                f"the second reproduction process (claims 3-5) failed with exit code {rc}; "
                "its error is printed above. Rerun with --jobs 1 to run everything here."
            )
        return pickle.loads(out.read_bytes())

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._proc.poll() is None:  # we failed first: do not leave it running
            self._proc.kill()
            self._proc.wait()
        self._dir.cleanup()


def _worker_main(directory: str) -> None:
    d = Path(directory)
    config, sizes, claims, x64, path = pickle.loads((d / "args.pkl").read_bytes())
    sys.path[:] = path
    report = _run_claims(config, sizes, claims, x64, share_dir=d / "networks")
    (d / "report.pkl").write_bytes(pickle.dumps(report))


if __name__ == "__main__":
    _worker_main(sys.argv[1])
