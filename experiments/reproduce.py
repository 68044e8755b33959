"""``wgfm reproduce``: run every claim's experiment and write REPORT.md, results.json, figures/.

Each claim lives in its own module with ``run(ctx, report, title)``, run one after another in
this process; they share data, oracles and trained networks through
:class:`experiments.assets.Context`, which builds each once, lazily.
"""

from __future__ import annotations

import importlib
import os
import platform
import time
from pathlib import Path

import jax
from rich.console import Console
from tqdm.auto import tqdm

from experiments.assets import Context
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
    t_all = time.perf_counter()
    ctx = Context(config, sizes=sizes, mesh=mesh)
    bar = tqdm(claims, desc="wgfm reproduce", unit="claim", dynamic_ncols=True)
    for c in bar:
        module, title = CLAIMS[c]
        bar.set_postfix_str(title[:48])
        t0 = time.perf_counter()
        importlib.import_module(module).run(ctx, report, title)
        report.timings[title] = time.perf_counter() - t0
        console.log(f"{title}: done in {report.timings[title]:.1f} s")
    header = {
        "mode": "quick" if config.quick else "full",
        "preset": config.preset,
        "data sets": ", ".join(config.datasets),
        "process": type(ctx.process).__name__,
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
    if not jax.config.values["jax_compilation_cache_dir"]:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        jax.config.update("jax_compilation_cache_dir", str(base / "wgfm" / "jax"))
    # Also the many sub-second programs (random draws, metrics): together they add up.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)
    return Path(jax.config.values["jax_compilation_cache_dir"])
