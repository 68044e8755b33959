"""Shared timing harness for ``benchmarks/``: compile time apart from steady state, JSON records.

Every benchmark module exposes ``run(quick: bool) -> list[dict]``; each dict is a record made by
:func:`record` (schema in ``RECORD_KEYS``). ``write_results`` writes them as JSON and Markdown.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax

RECORD_KEYS = ("benchmark", "case", "impl", "compile_s", "median_s", "repeats", "extra")


def block(x: Any) -> Any:
    """Wait for every array in a PyTree (JAX is asynchronous)."""
    return jax.block_until_ready(x)


def time_call(fn: Callable[[], Any], *, repeats: int = 5, warmup: int = 1) -> tuple[float, float]:
    """``(first_call_s, median_s)``: the first call (compile + run) apart from the median of
    ``repeats`` steady-state calls after ``warmup`` extra calls. ``fn`` takes no arguments and
    must block on its result (use :func:`block`)."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    for _ in range(warmup):
        fn()
    return first, statistics.median(steady_times(fn, repeats))


def steady_times(fn: Callable[[], Any], repeats: int) -> list[float]:
    """Wall times of ``repeats`` consecutive calls of ``fn`` (already warm)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def time_jitted(jitted, *args, repeats: int = 5) -> tuple[float, float]:
    """``(compile_s, median_s)`` for a ``jax.jit``-ed function: lowering + compilation timed by
    the AOT API (``lower(...).compile()``), steady state as the median of ``repeats`` runs."""
    t0 = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    compile_s = time.perf_counter() - t0
    _, median = time_call(lambda: block(compiled(*args)), repeats=repeats)
    return compile_s, median


def record(
    benchmark: str,
    case: str,
    impl: str,
    *,
    compile_s: float | None,
    median_s: float,
    repeats: int,
    **extra: Any,
) -> dict:
    """One result row. ``extra`` holds numbers such as NFE, errors, FLOP rates or ratios."""
    return {
        "benchmark": benchmark,
        "case": case,
        "impl": impl,
        "compile_s": compile_s,
        "median_s": median_s,
        "repeats": repeats,
        "extra": extra,
    }


def side_rows(
    benchmark: str,
    case: str,
    times: dict[str, list[float]],
    repeats: int,
    extras: Mapping[str, dict],
    compile_s: Mapping[str, float | None] | None = None,
) -> list[dict]:
    """One :func:`record` per side of an interleaved comparison (``times``: each side's round
    times), in its order: the median of its rounds, its compile seconds (``compile_s``, where
    known) and its ``extras``."""
    compile_s = compile_s or {}
    return [
        record(
            benchmark,
            case,
            name,
            compile_s=compile_s.get(name),
            median_s=statistics.median(ts),
            repeats=repeats,
            **extras.get(name, {}),
        )
        for name, ts in times.items()
    ]


def machine_info() -> dict:
    """Where the numbers were measured (never compare across devices)."""
    dev = jax.devices()[0]
    return {
        "platform": dev.platform,
        "device_kind": dev.device_kind,
        "num_devices": jax.device_count(),
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def run_record(module: str) -> dict:
    """The command of ``python -m benchmarks.<module>``, the commit, whether ``wgfm/`` or the
    module differ from it, and the cores and host load at the start."""
    import os
    import sys

    from .run_all import git

    status = git("status", "--porcelain", "--", "wgfm", f"benchmarks/{module}.py")
    return {
        "command": f"python -m benchmarks.{module} " + " ".join(sys.argv[1:]),
        "commit": git("rev-parse", "HEAD"),
        "code_modified": None if status is None else bool(status),
        "loadavg_1min_start": os.getloadavg()[0],
        "cores": len(os.sched_getaffinity(0)),
    }


def commit_label(run: dict) -> str:
    """The commit a run measured, as a table's header names it."""
    label = (run.get("commit") or "unknown")[:10]
    return label + (" with uncommitted changes to the code" if run.get("code_modified") else "")


def write_results(records: list[dict], out_dir: Path, name: str = "benchmarks") -> Path:
    """Write ``{name}.json`` (machine info + records) and ``{name}.md`` (a table); returns JSON path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {"machine": machine_info(), "records": records}
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=float))
    (out_dir / f"{name}.md").write_text(markdown_table(records, payload["machine"]))
    return path


def write_payload(path: Path, payload: dict) -> int:
    """Write a standalone script's run (``payload``: machine, run, settings, records) as JSON
    to ``path`` and say so; returns the script's exit status, 0."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {path}")
    return 0


def markdown_table(records: list[dict], machine: dict) -> str:
    head = (
        f"Measured on {machine['platform']} ({machine['device_kind']}), jax {machine['jax']}.\n\n"
    )
    rows = [
        "| benchmark | case | impl | compile (s) | steady (ms) | notes |",
        "|---|---|---|---|---|---|",
    ]
    for r in records:
        comp = "" if r["compile_s"] is None else f"{r['compile_s']:.3f}"
        notes = ", ".join(f"{k}={_fmt(v)}" for k, v in r["extra"].items())
        rows.append(
            f"| {r['benchmark']} | {r['case']} | {r['impl']} | {comp} | {1e3 * r['median_s']:.3f} | {notes} |"
        )
    return head + "\n".join(rows) + "\n"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    """Wall times of each (warm, blocking) callable over ``repeats`` rounds, the order of the
    sides reversed every other round so that drifting machine load falls on both alike."""
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for n in names if r % 2 == 0 else names[::-1]:
            t0 = time.perf_counter()
            fns[n]()
            times[n].append(time.perf_counter() - t0)
    return times


def ratio_stats(slow: list[float], fast: list[float]) -> dict[str, float]:
    """Speed-up ``slow / fast`` per round (rounds are interleaved): median and spread."""
    ratios = sorted(s / f for s, f in zip(slow, fast, strict=True))
    return {
        "speedup": statistics.median(ratios),
        "speedup_min": ratios[0],
        "speedup_max": ratios[-1],
    }


def warm_interleaved(
    fns: dict[str, Callable[[], Any]], repeats: int
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """``(first_call_minus_steady_s, times)``: each callable called twice (the first call's
    excess over the second is its compile and tracing time), then :func:`interleaved`."""
    compile_s = {}
    for name, fn in fns.items():
        t0 = time.perf_counter()
        fn()
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        fn()
        compile_s[name] = max(first - (time.perf_counter() - t0), 0.0)
    return compile_s, interleaved(fns, repeats)
