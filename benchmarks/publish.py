"""Write every published benchmark table from a run's JSON: nothing in them is typed by hand.

    python -m benchmarks.publish [RUN_DIR]

With ``RUN_DIR`` (the ``--out`` of a ``wgfm bench`` run), its ``benchmarks.json`` and plots are
copied into ``benchmarks/results/`` first (a run of some modules, ``--only``, into
``benchmarks/results/reruns/``: its rows replace those modules' rows of the full run); without
it, the committed ``benchmarks/results/`` is the source. Then, from
``benchmarks/results/benchmarks.json`` (and ``xla_flags_ab.json``, ``probe_variance.json``,
``probe_passes.json``, ``diagnose_memory.json``, ``plan_check.json``):

- ``benchmarks/results/benchmarks.md`` (every record) and ``summary.md`` (the targets);
- the blocks between ``<!-- BEGIN GENERATED: name -->`` and ``<!-- END GENERATED: name -->``
  in ``benchmarks/README.md``, ``docs/diagnose_your_model.md`` and ``docs/xla_cpu.md``.

Each table opens with the run it comes from (date, commit, CPU, the ``wgfm bench`` command).
``tests/test_published.py`` fails when a committed file differs from what this writes.
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

from experiments.publish import replace_between

from ._harness import markdown_table
from ._summary import markdown, targets

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
BEGIN, END = "<!-- BEGIN GENERATED: {} -->", "<!-- END GENERATED: {} -->"
NOTE = "<!-- written by `python -m benchmarks.publish` from the run's JSON; do not edit -->"


# ---------------------------------------------------------------------------------------------
# The run a table comes from.


def run_header(payload: dict, source: str = "benchmarks/results/benchmarks.json") -> str:
    """One paragraph naming the run: command, date, commit, CPU, library versions, host."""
    m, run = payload["machine"], payload.get("run")
    libs = ", ".join(f"{k} {m[k]}" for k in ("jax", "torch") if m.get(k))
    if run is None:
        return (
            f"From `{source}`: a run that recorded no command or commit (older format), "
            f"{m.get('time', '?')[:10]}, {libs}."
        )
    commit = (run.get("commit") or "unknown")[:10]
    if run.get("code_modified"):
        commit += " with uncommitted changes to the code"
    host = {
        True: "a host shared with other jobs, so absolute times are slower than on an idle "
        "machine; the speed-ups are ratios of interleaved rounds in one process",
        False: "an otherwise idle host",
        None: "a host of unrecorded load",
    }[run.get("host_shared")]
    peak = payload.get("matmul_peak")
    peak_txt = (
        f" The run's float32 matmul peak, measured once and used by every fraction of peak: "
        f"{peak['peak_gflops']:.0f} GFLOP/s (JAX {peak['jax_gflops']:.0f}, torch "
        f"{peak.get('torch_gflops', float('nan')):.0f})."
        if peak
        else ""
    )
    scope = "the modules named" if "--only" in run["command"] else "all modules"
    start, end = run.get("loadavg_1min_start"), run.get("loadavg_1min_end")
    load = (
        f" The host's 1-minute load average was {start:.2f} at the start and {end:.2f} at the "
        f"end (as the harness recorded them; {run['cores']} cores)."
        if start is not None and end is not None
        else ""
    )
    return (
        f"From `{source}`: `{run['command']}`, {m['time'][:16].replace('T', ' ')} "
        f"(UTC{m['time'][19:]}), commit `{commit}`, {run['cpu_model']} ({run['cores']} cores, "
        f"{m['platform']}), {libs}, {scope} in one process, on {host}.{peak_txt}{load}"
    )


# ---------------------------------------------------------------------------------------------
# Tables.


def _ms(s: float) -> str:
    return f"{1e3 * s:,.0f} ms" if s >= 0.1 else f"{1e3 * s:.3g} ms"


def _spread(e: dict, key: str) -> str:
    if key not in e:
        return ""
    lo, hi = e.get(f"{key}_min"), e.get(f"{key}_max")
    rng = f" [{lo:.3g}-{hi:.3g}]" if lo is not None and hi is not None else ""
    return f"{e[key]:.3g}{rng}"


# ---------------------------------------------------------------------------------------------
# Runs: the last full run (benchmarks.json) and later partial ones (`--only`, reruns/*.json).


def load_runs(results: Path = RESULTS) -> list[dict]:
    """The committed runs, oldest first, each with ``source`` (its path in the repository):
    ``benchmarks.json`` (a full run) and ``reruns/*.json`` (runs of some modules, later)."""
    paths = [results / "benchmarks.json", *sorted((results / "reruns").glob("*.json"))]
    runs = []
    for path in paths:
        payload = json.loads(path.read_text())
        payload["source"] = str(path.relative_to(ROOT))
        runs.append(payload)
    return sorted(runs, key=lambda p: p["machine"]["time"])


def merged(runs: list[dict]) -> tuple[list[dict], dict[str, dict]]:
    """``(records, benchmark -> run)``: each benchmark's rows from the latest run that measured
    it (a rerun of a module replaces all of that module's rows, never some of them)."""
    by: dict[str, dict] = {}
    for run in runs:
        for r in run["records"]:
            by[r["benchmark"]] = run
    records = [r for run in runs for r in run["records"] if by[r["benchmark"]] is run]
    return records, by


def runs_header(runs: list[dict], by: dict[str, dict]) -> str:
    """One paragraph per run that supplies rows, saying which benchmarks it supplies."""
    parts = []
    for run in runs:
        benches = sorted(b for b, r in by.items() if r is run)
        if benches:
            names = ", ".join(f"`{b}`" for b in benches)
            parts.append(f"{run_header(run, run['source'])} Rows of this run: {names}.")
    if len(parts) > 1:
        parts.insert(
            0,
            "Each benchmark's rows come from the latest run that measured it: a later run of "
            "some modules (`--only`) replaces those modules' rows, and the targets read them.",
        )
    return "\n\n".join(parts)


def targets_block(runs: list[dict]) -> str:
    records, by = merged(runs)
    return runs_header(runs, by) + "\n\n" + markdown(targets(records))


# Rows behind the targets' reasons: (benchmark, extra keys shown besides time and speed-up).
SUPPORT = {
    "peer_sampling": (
        "nfe",
        "max_err_vs_ref",
        "field_frac_of_peak",
        "per_nfe_vs_bare_eval",
        "torch_threads",
        "fastest_peer",
    ),
    "peer_likelihood": ("nfe", "hutchinson_std", "hutchinson_std_se", "agree", "torch_threads"),
    "peer_ddim": ("torch_threads", "fastest_peer", "compile_s"),
    "train_step": ("frac_of_matmul_peak", "torch_threads", "fastest_in_group", "compile_s"),
    "jacobian_asymmetry": ("peak_frac", "torch_threads", "fastest_peer", "compile_s"),
    "sub_jacobian_64": ("torch_threads", "fastest_peer", "compile_s"),
    "diffusers_unet": ("torch_threads", "fastest_peer", "fastest_port"),
}
SPEEDUP_KEYS = ("speedup", "wgfm_default_speedup")


def support_block(runs: list[dict]) -> str:
    """Every row of the benchmarks the targets read: median time, speed-up of wgfm's default
    over the row [min-max over rounds], and the numbers the reasons cite."""
    records, by = merged(runs)
    lines = [runs_header(runs, by), ""]
    for bench, keys in SUPPORT.items():
        rows = [r for r in records if r["benchmark"] == bench]
        if not rows:
            continue
        lines += [
            f"`{bench}` (from `{by[bench]['source']}`):",
            "",
            "| case | impl | median | wgfm default's speed-up | "
            + " | ".join(keys)
            + (" |" if keys else "|"),
            "|---|---|---|---|" + "---|" * len(keys),
        ]
        for r in rows:
            e = r["extra"]
            sp = next((_spread(e, k) for k in SPEEDUP_KEYS if k in e), "")
            cells = [_fmt(r.get(k, e.get(k))) for k in keys]
            lines.append(
                f"| {r['case']} | {r['impl']} | {_ms(r['median_s'])} | {sp} | "
                + " | ".join(cells)
                + (" |" if cells else "|")
            )
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def diffusers_block(runs: list[dict]) -> str:
    """The ``diffusers_unet`` rows: the flax port, diffusers in PyTorch (fastest formulation and
    the authors' method) and ``torch_field``, with agreement and compile time."""
    records, by = merged(runs)
    rows = [r for r in records if r["benchmark"] == "diffusers_unet"]
    run = by.get("diffusers_unet", runs[-1])
    lines = [run_header(run, run["source"]), ""]
    if not rows:
        return "\n".join(lines + ["No `diffusers_unet` rows in this run.", ""])
    lines += [
        "| case | implementation | median | port's speed-up [min-max] | "
        "max diff / max entry | compile |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        e = r["extra"]
        comp = "" if r["compile_s"] is None else f"{r['compile_s']:.1f} s"
        diff = _fmt(e.get("rel_diff_vs_wgfm"))
        lines.append(
            f"| {r['case']} | {r['impl']} | {_ms(r['median_s'])} | "
            f"{_spread(e, 'wgfm_default_speedup')} | {diff} | {comp} |"
        )
    return "\n".join(lines) + "\n"


def xla_block(ab: dict | None) -> str:
    src = "benchmarks/results/xla_flags_ab.json"
    if ab is None:
        return f"No `{src}` in this checkout.\n"
    run = ab.get("run")
    head = (
        f"From `{src}` (`{run['command']}`, {run['date']}, commit `{(run['commit'] or '?')[:10]}`,"
        f" {run['cpu_model']}); "
        if run
        else f"From `{src}` (`python -m benchmarks.ab_xla_flags`; the file records no date or "
        f"commit); "
    )
    head += (
        f"{ab['n']:,} points, D = 2, one process per setting and round, rounds alternating. "
        "wgfm time / PyTorch time in the same process (lower is better for wgfm):"
    )
    lines = [
        head,
        "",
        "| XLA_FLAGS | rounds | median wgfm / PyTorch | per round |",
        "|---|---|---|---|",
    ]
    for flags, med in ab["median_jax_over_torch"].items():
        rs = [x for x in ab["rounds"] if (x["flags"] or "(none)") == flags]
        per = ", ".join(f"{x['jax_over_torch']:.2f}" for x in rs)
        check = statistics.median(x["jax_over_torch"] for x in rs)
        assert abs(check - med) < 1e-12, "the file's medians disagree with its rounds"
        lines.append(f"| `{flags}` | {len(rs)} | {med:.2f} | {per} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Where the tables go.


def probe_variance_block(results: Path = RESULTS) -> str:
    """The probes each asymmetry estimator needs for a 10% s.e., from ``probe_variance.json``
    (``python -m benchmarks.probe_variance``)."""
    from .probe_variance import table

    return table(json.loads((results / "probe_variance.json").read_text()))


def probe_passes_block(results: Path = RESULTS) -> str:
    """Passes per estimator and the skew part's effective rank from exact Jacobians, from
    ``probe_passes.json`` (``python -m benchmarks.probe_passes``), beside the sampled counts
    of ``probe_variance.json``."""
    from .probe_passes import table

    variance = json.loads((results / "probe_variance.json").read_text())
    return table(json.loads((results / "probe_passes.json").read_text()), variance)


def diagnose_memory_block(results: Path = RESULTS) -> str:
    """Peak memory of a quick diagnosis at D = 65,536 and 262,144, from
    ``diagnose_memory.json`` (``python -m benchmarks.diagnose_memory``)."""
    from .diagnose_memory import table

    return table(json.loads((results / "diagnose_memory.json").read_text()))


def plan_check_block(results: Path = RESULTS) -> str:
    """The plan of a run against a measured medium-size diagnosis, from ``plan_check.json``
    (``python -m benchmarks.plan_check``)."""
    from .plan_check import table

    return table(json.loads((results / "plan_check.json").read_text()))


def blocks() -> dict[str, list[tuple[str, Callable[[list[dict], dict | None], str]]]]:
    """File (relative to the repository) -> its generated blocks ``(name, render)``."""
    return {
        "benchmarks/README.md": [
            ("targets", lambda runs, _: targets_block(runs)),
            ("rows", lambda runs, _: support_block(runs)),
            ("xla-flags", lambda _, ab: xla_block(ab)),
        ],
        "docs/diagnose_your_model.md": [
            ("diffusers-unet", lambda runs, _: diffusers_block(runs)),
            ("probe-variance", lambda _, __: probe_variance_block()),
            ("probe-passes", lambda _, __: probe_passes_block()),
            ("diagnose-memory", lambda _, __: diagnose_memory_block()),
            ("plan-check", lambda _, __: plan_check_block()),
        ],
        "docs/xla_cpu.md": [("xla-flags", lambda _, ab: xla_block(ab))],
    }


def replace_block(text: str, name: str, body: str, path: str) -> str:
    """``text`` with its generated block ``name`` replaced by :data:`NOTE` and ``body``."""
    begin, end = BEGIN.format(name), END.format(name)
    return replace_between(text, begin, end, f"{NOTE}\n\n{body.rstrip()}\n", path)


def render(results: Path = RESULTS, root: Path = ROOT) -> dict[Path, str]:
    """Every generated file's expected content (path -> text), from ``results``' JSON."""
    runs = load_runs(results)
    records, by = merged(runs)
    ab_path = results / "xla_flags_ab.json"
    ab = json.loads(ab_path.read_text()) if ab_path.is_file() else None
    out = {
        results / "benchmarks.md": runs_header(runs, by)
        + "\n\n"
        + markdown_table(records, runs[-1]["machine"]),
        results / "summary.md": targets_block(runs),
    }
    for rel, items in blocks().items():
        path = root / rel
        text = path.read_text()
        for name, fn in items:
            text = replace_block(text, name, fn(runs, ab), rel)
        out[path] = text
    return out


def copy_run(run_dir: Path, results: Path = RESULTS) -> None:
    """A run's JSON (and a full run's plots) into ``results`` (its Markdown is regenerated,
    not copied): a full run replaces ``benchmarks.json`` and clears ``reruns/``; a run of some
    modules (``--only``) goes to ``reruns/`` beside the full run whose other rows it keeps."""
    payload = json.loads((run_dir / "benchmarks.json").read_text())
    reruns = results / "reruns"
    if "--only" in payload["run"]["command"]:
        reruns.mkdir(exist_ok=True)
        stamp = payload["machine"]["time"][:19].replace(":", "").replace("-", "")
        modules = "-".join(sorted(payload["module_seconds"]))
        shutil.copy2(run_dir / "benchmarks.json", reruns / f"{stamp}-{modules}.json")
        return
    shutil.rmtree(reruns, ignore_errors=True)
    shutil.copy2(run_dir / "benchmarks.json", results / "benchmarks.json")
    for name in payload.get("plots", []):
        shutil.copy2(run_dir / name, results / name)
    if (run_dir / "xla_flags_ab.json").is_file():
        shutil.copy2(run_dir / "xla_flags_ab.json", results / "xla_flags_ab.json")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv:
        copy_run(Path(argv[0]))
    changed = []
    for path, text in render().items():
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
            changed.append(path.relative_to(ROOT))
    print("rewrote: " + ", ".join(map(str, changed)) if changed else "all up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
