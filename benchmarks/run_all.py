"""Run every benchmark module (``bench_*.py`` and ``compare_*.py``) in one process and write
``benchmarks.json`` + ``benchmarks.md`` (``benchmarks_<platform>.*`` on an accelerator, so CPU
and GPU numbers are never mixed) and the scaling PNGs beside them. Entry point of ``wgfm bench``.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

import jax

from ._harness import RECORD_KEYS, write_results
from ._plots import write_plots
from ._summary import markdown, targets

HERE = Path(__file__).resolve().parent


def discover(only: tuple[str, ...] | list[str] = ()) -> list[str]:
    """Module names (``compare_jacobian`` ...), optionally those containing one of ``only``."""
    names = sorted(p.stem for p in HERE.glob("*.py") if p.stem.startswith(("bench_", "compare_")))
    if only:
        names = [n for n in names if any(o in n for o in only)]
    return names


def run_module(name: str, quick: bool, tiny: bool) -> list[dict]:
    """``benchmarks.<name>.run(quick)`` (``tiny=True`` reaches modules that support it)."""
    mod = importlib.import_module(f"{__package__}.{name}")
    kwargs = {"quick": quick or tiny}
    if tiny:
        if "tiny" not in inspect.signature(mod.run).parameters:
            print(f"[{name}] has no tiny configuration: skipped", file=sys.stderr)
            return []
        kwargs["tiny"] = True
    rows = mod.run(**kwargs)
    for r in rows:
        if tuple(r) != RECORD_KEYS:
            raise ValueError(f"{name}: record keys {tuple(r)} differ from {RECORD_KEYS}")
    return rows


def machine_extra() -> dict:
    """What ``_harness.machine_info`` leaves out: cores, library versions."""
    info = {"cpu_count": os.cpu_count(), "os": platform.platform()}
    for lib in ("numpy", "scipy", "diffrax", "equinox", "flax", "optax", "torch"):
        try:
            info[lib] = importlib.import_module(lib).__version__
        except ImportError:
            info[lib] = None
    return info


def run_benchmarks(
    *, quick: bool = False, out: Path = Path("results/bench"), only=(), tiny: bool = False
) -> tuple[Path, list[str]]:
    """Run the selected modules with a progress display; returns ``(json path, failed modules)``.
    A module that raises is reported and skipped, the others still run."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    names = discover(only)
    if not names:
        raise ValueError(f"`only` {list(only)} matches no benchmark module in {HERE}.")
    records, failed, timings = [], [], {}
    console = Console(stderr=True)
    cols = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn())  # fmt: skip
    with Progress(*cols, console=console) as progress:
        task = progress.add_task("benchmarks", total=len(names))
        for name in names:
            progress.update(task, description=f"running {name}")
            t0 = time.perf_counter()
            try:
                records += run_module(name, quick, tiny)
            except Exception:  # report and go on: one broken module must not hide the rest
                failed.append(name)
                console.print(f"[red]{name} failed:[/red]\n{traceback.format_exc()}")
            timings[name] = time.perf_counter() - t0
            progress.advance(task)
    plat = jax.devices()[0].platform
    path = write_results(
        records, Path(out), "benchmarks" if plat == "cpu" else f"benchmarks_{plat}"
    )
    payload = json.loads(path.read_text())
    payload["machine"].update(machine_extra())
    payload["mode"] = "tiny" if tiny else "quick" if quick else "full"
    payload["module_seconds"] = timings
    payload["failed"] = failed
    payload["plots"] = [p.name for p in write_plots(records, Path(out))]
    payload["targets"] = targets(records)
    (Path(out) / "summary.md").write_text(markdown(payload["targets"]))
    path.write_text(json.dumps(payload, indent=2))
    return path, failed


def main(
    quick: bool = False, out: Path = Path("results/bench"), only=(), tiny: bool = False
) -> int:
    if not discover(only):
        print(
            f"wgfm bench: no benchmark module matches {list(only)}; have {discover()}.",
            file=sys.stderr,
        )
        return 2
    path, failed = run_benchmarks(quick=quick, out=out, only=only, tiny=tiny)
    print(path.with_suffix(".md").read_text())
    print(f"Wrote {path} and {path.with_suffix('.md')}.")
    if failed:
        print(f"FAILED modules: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(quick="--quick" in sys.argv))
