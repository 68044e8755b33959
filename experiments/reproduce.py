"""``wgfm reproduce``: run every claim's experiment and write REPORT.md, results.json, figures/.

Each claim lives in its own module, which declares its ``TITLE`` and results key
(``NUMBERS_KEY``) and has ``run(ctx, report, title)``; they run one after another in this process; they share data, oracles and trained networks through
:class:`experiments.assets.Context`, which builds each once, lazily.
"""

from __future__ import annotations

import platform
import time

import jax
from rich.console import Console
from tqdm.auto import tqdm

from experiments import conservative, differential, harm, integral, objectives
from experiments.assets import Context
from experiments.config import ReproduceConfig, Sizes
from experiments.report import Report

CLAIMS = {1: differential, 2: integral, 3: objectives, 4: harm, 5: conservative}


# Claims that need the exact mixture oracle (not defined for image data).
ORACLE_CLAIMS = (3, 4, 5)


def run(config: ReproduceConfig, *, sizes: Sizes | None = None, mesh=None) -> Report:
    """Run the selected claims and write the report; returns it (rows, numbers, figures).
    ``sizes`` overrides the preset's (tests), ``mesh`` trains the networks data parallel."""
    console = Console(stderr=True)
    report = Report(config.out)
    claims = [c for c in CLAIMS if not config.only or c in config.only]
    if not config.vector_sets:
        for c in [c for c in claims if c in ORACLE_CLAIMS]:
            report.notes[CLAIMS[c].TITLE] = (
                f"Not run under --preset {config.preset}: this claim is measured against the "
                "exact Gaussian-mixture oracle, which image data lack; run --preset default."
            )
        claims = [c for c in claims if c not in ORACLE_CLAIMS]
    t_all = time.perf_counter()
    ctx = Context(config, sizes=sizes, mesh=mesh)
    # A context manager: a claim that fails closes the bar (and ends its line) before the
    # command prints its one-line error.
    with tqdm(claims, desc="wgfm reproduce", unit="claim", dynamic_ncols=True) as bar:
        for c in bar:
            module = CLAIMS[c]
            title = module.TITLE
            bar.set_postfix_str(title[:48])
            t0 = time.perf_counter()
            module.run(ctx, report, title)
            report.timings[title] = time.perf_counter() - t0
            console.log(f"{title}: done in {report.timings[title]:.1f} s")
    header = {
        "mode": (
            "smoke (every code path at the smallest sizes: the numbers mean nothing)"
            if config.smoke
            else "quick"
            if config.quick
            else "full"
        ),
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


__all__ = ["CLAIMS", "run"]
