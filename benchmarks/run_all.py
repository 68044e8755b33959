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
import subprocess
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


def git(*args: str) -> str | None:
    """``git ARGS`` in the repository (stdout, stripped), or None where git or the repository
    is missing."""
    try:
        out = subprocess.run(
            ["git", "-C", str(HERE.parent), *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def run_info(quick: bool, only, tiny: bool, load_start: float | None) -> dict:
    """What a published table names as its source: the command (without ``--out``, a path of
    the machine it ran on), the commit and whether the code differed from it, the CPU, and
    whether other jobs shared the host (1-min load average at the start at least half the
    cores: ratios of interleaved rounds stay comparable, absolute times do not)."""
    cmd = "wgfm bench" + (" --tiny" if tiny else " --quick" if quick else "")
    cmd += "".join(f" --only {o}" for o in only)

    status = git("status", "--porcelain", "--", "wgfm", "benchmarks", "pyproject.toml")
    cores = os.cpu_count() or 1
    return {
        "command": cmd,
        "commit": git("rev-parse", "HEAD"),
        "code_modified": None if status is None else bool(status),
        "cpu_model": _cpu_model(),
        "cores": cores,
        "loadavg_1min_start": load_start,
        "loadavg_1min_end": _load(),
        "host_shared": None if load_start is None else load_start >= 0.5 * cores,
    }


def _load() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    for line in out.splitlines():
        if line.strip().startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


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
    load_start = _load()
    # One matmul peak for the whole run, before any module: every fraction of peak divides by it.
    from ._compare import run_peak

    peak = run_peak()
    console = Console(stderr=True)
    cols = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
    )
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
            # Records so far, so that a run killed part-way still leaves what it measured.
            Path(out).mkdir(parents=True, exist_ok=True)
            (Path(out) / "partial.json").write_text(
                json.dumps({"records": records, "module_seconds": timings, "failed": failed})
            )
    plat = jax.devices()[0].platform
    path = write_results(
        records, Path(out), "benchmarks" if plat == "cpu" else f"benchmarks_{plat}"
    )
    payload = json.loads(path.read_text())
    payload["machine"].update(machine_extra())
    payload["mode"] = "tiny" if tiny else "quick" if quick else "full"
    payload["run"] = run_info(quick, only, tiny, load_start)
    payload["matmul_peak"] = peak
    payload["module_seconds"] = timings
    payload["failed"] = failed
    payload["plots"] = [p.name for p in write_plots(records, Path(out))]
    payload["targets"] = targets(records)
    (Path(out) / "summary.md").write_text(markdown(payload["targets"]))
    path.write_text(json.dumps(payload, indent=2))
    (Path(out) / "partial.json").unlink(missing_ok=True)
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
