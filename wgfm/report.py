"""Reports: claim rows (claim, measured, control, verdict), the numbers behind them, and their
rendering as REPORT.md and results.json with PNG figures. ``wgfm diagnose`` and ``wgfm
reproduce`` write theirs with :class:`Report`."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class ClaimRow:
    """One line of a claim's table: what was measured, against which control, and the verdict."""

    claim: str
    measured: str
    control: str
    verdict: bool
    note: str = ""


@dataclasses.dataclass(frozen=True)
class Measurement:
    """What a claim's measurement returns: its rows, the numbers behind them (for
    results.json) and its figures (name -> matplotlib figure), ready for a :class:`Report`."""

    rows: list[ClaimRow]
    numbers: dict[str, Any]
    figures: dict[str, Any]


@dataclasses.dataclass
class Report:
    """Accumulates rows, numbers and figures; :meth:`write` renders them."""

    out: Path
    rows: dict[str, list[ClaimRow]] = dataclasses.field(default_factory=dict)
    numbers: dict[str, Any] = dataclasses.field(default_factory=dict)
    figures: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    notes: dict[str, str] = dataclasses.field(default_factory=dict)
    title: str = "wgfm reproduction report"
    started: dict[str, float] = dataclasses.field(default_factory=lambda: usage_now())
    # What the run used when it was measured elsewhere (a diagnosis written after the fact, or
    # joined from several processes); None: from ``started`` to the write.
    used: dict[str, Any] | None = None

    @property
    def fig_dir(self) -> Path:
        d = self.out / "figures"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def add(self, section: str, row: ClaimRow) -> None:
        self.rows.setdefault(section, []).append(row)

    def add_measurement(self, section: str, m: Measurement) -> None:
        """``m``'s rows and figures under ``section`` (its numbers are the caller's to place)."""
        for row in m.rows:
            self.add(section, row)
        for name, fig in m.figures.items():
            self.save_figure(section, fig, name)

    def save_figure(self, section: str, fig, name: str) -> Path:
        path = self.fig_dir / f"{name}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        _close(fig)
        self.figures.setdefault(section, []).append(f"figures/{name}.png")
        return path

    def write(self, header: dict[str, Any]) -> tuple[Path, Path]:
        self.out.mkdir(parents=True, exist_ok=True)
        results = {
            "title": self.title,
            "header": header,
            "claims": {s: [dataclasses.asdict(r) for r in rs] for s, rs in self.rows.items()},
            "numbers": _jsonable(self.numbers),
            "figures": self.figures,
            "timings_s": self.timings,
            "notes": self.notes,
            "resources": self.used or resources(self.started),
            "all_verdicts_pass": all(r.verdict for rs in self.rows.values() for r in rs),
        }
        jpath = self.out / "results.json"
        jpath.write_text(json.dumps(results, indent=2))
        mpath = self.out / "REPORT.md"
        mpath.write_text(self.markdown(header, results["resources"]))
        return mpath, jpath

    def markdown(self, header: dict[str, Any], used: dict[str, Any] | None = None) -> str:
        """REPORT.md: the header as a list (with ``used``, the run's :func:`resources`, as its
        last line), then per section its note, table, figures and time."""
        lines = [f"# {self.title}", ""]
        lines += _list_lines(header)
        if used is not None:
            lines.append(f"- resources: {resources_line(used)}")
        lines.append("")
        for section in list(self.rows) + [s for s in self.notes if s not in self.rows]:
            rows = self.rows.get(section, [])
            lines += [f"## {section}", ""]
            if section in self.notes:
                lines += [f"_{self.notes[section]}_", ""]
            if not rows:
                continue
            lines += [
                "| claim | measured | control | verdict |",
                "|---|---|---|---|",
            ]
            for r in rows:
                verdict = "holds" if r.verdict else "**does not hold**"
                note = f" ({r.note})" if r.note else ""
                cells = (r.claim, r.measured, r.control, f"{verdict}{note}")
                lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
            lines.append("")
            for f in self.figures.get(section, []):
                lines += [f"![{Path(f).stem}]({f})", ""]
            if section in self.timings:
                lines += [f"_Run time: {self.timings[section]:.1f} s._", ""]
        return "\n".join(lines)


def _list_lines(items: dict[str, Any], indent: str = "") -> list[str]:
    """``- key: value`` per item; a dict value as a nested list under its key."""
    lines = []
    for k, v in items.items():
        if isinstance(v, dict):
            lines += [f"{indent}- {k}:", *_list_lines(v, indent + "  ")]
        else:
            lines.append(f"{indent}- {k}: {v}")
    return lines


def render_results(results: dict[str, Any]) -> str:
    """The REPORT.md that :meth:`Report.write` wrote beside ``results`` (its results.json, as
    loaded), rebuilt from the JSON alone: a committed REPORT.md is checked against its numbers."""
    report = Report(
        Path("."),
        rows={s: [ClaimRow(**r) for r in rs] for s, rs in results["claims"].items()},
        figures=results["figures"],
        timings=results["timings_s"],
        notes=results["notes"],
        title=results.get("title", Report.title),
    )
    return report.markdown(results["header"], results.get("resources"))


def usage_now() -> dict[str, float]:
    """Wall clock, CPU seconds (user + system, this process and its waited-for children) and
    the 1-minute load average, now: the ``started`` of :func:`resources`."""
    own, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    cpu = own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
    return {"wall": time.time(), "cpu": cpu, "load1": os.getloadavg()[0]}


def resources(started: dict[str, float]) -> dict[str, Any]:
    """What a run used from ``started`` (:func:`usage_now` when the run began) to now: wall
    and CPU seconds, the process's peak resident memory, the cores it could use and the host's
    load averages at both ends (other jobs on the host slow the wall time, not the CPU time).
    Measured by the run itself, so every published timing has its record in results.json."""
    now = usage_now()
    # ru_maxrss is in KiB on Linux (bytes on macOS): the peak over the whole process.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak_mb = peak / 2**20 if sys.platform == "darwin" else peak / 2**10
    return {
        "wall_s": round(now["wall"] - started["wall"], 2),
        "cpu_s": round(now["cpu"] - started["cpu"], 2),
        "peak_rss_mb": round(peak_mb, 0),
        "cores": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "load_average_start": round(started["load1"], 2),
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "started_at": round(started["wall"], 2),
        "ended_at": round(now["wall"], 2),
    }


def combined_resources(used: list[dict[str, Any]]) -> dict[str, Any]:
    """:func:`resources` of processes that shared one run (``wgfm diagnose --shard``): wall
    from the first start to the last end, CPU summed, the largest peak memory, the cores of
    all, the load at the first start and at the last end."""
    if len(used) == 1:
        return used[0]
    first = min(used, key=lambda u: u["started_at"])
    last = max(used, key=lambda u: u["ended_at"])
    return {
        "wall_s": round(last["ended_at"] - first["started_at"], 2),
        "cpu_s": round(sum(u["cpu_s"] for u in used), 2),
        "peak_rss_mb": max(u["peak_rss_mb"] for u in used),
        "cores": sum(u["cores"] for u in used),
        "load_average_start": first["load_average_start"],
        "load_average_end": last["load_average_end"],
        "started_at": first["started_at"],
        "ended_at": last["ended_at"],
        "processes": len(used),
    }


def resources_line(used: dict[str, Any]) -> str:
    """:func:`resources` as one header line."""
    return (
        f"{used['wall_s']:.0f} s wall, {used['cpu_s']:.0f} s CPU (user + system), peak memory "
        f"{used['peak_rss_mb']:.0f} MB, {used['cores']} cores; host load average (1 min) "
        f"{used['load_average_start']} at the start, {used['load_average_end'][0]} at the end"
    )


def _close(fig) -> None:
    """Release a figure made through pyplot (one made as ``matplotlib.figure.Figure``, as wgfm's
    are, is freed with its last reference). pyplot is not imported for this: importing it picks a
    GUI backend in some environments."""
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:
        pyplot.close(fig)


def jsonable(x: Any) -> Any:
    """``x`` with arrays as lists and non-finite floats as strings (JSON has neither)."""
    return _jsonable(x)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if hasattr(x, "tolist"):
        return _jsonable(np.asarray(x).tolist())
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return x


def fmt(x: float, digits: int = 3) -> str:
    """A number for a table cell."""
    return f"{float(x):.{digits}g}"


def level_bar(text: str, x0) -> str | None:
    """``sweep``'s ``progress`` label for image samples ``x0`` (every Jacobian column and loop
    point a U-Net evaluation, so a sweep takes minutes), ``None`` for vectors."""
    return text if x0.ndim > 2 else None
