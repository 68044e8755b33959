"""Scaling plots from the benchmark records, written next to ``benchmarks.json``: time against
D (Jacobian, likelihood), against batch size (sampling, DDIM) and work-precision (error and
time against NFE). A plot whose records are absent from the run (``--only``) is left out."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path


def _num(case: str, key: str) -> int | None:
    m = re.search(rf"\b{key}=(\d+)", case)
    return int(m.group(1)) if m else None


def _series(records, bench: str, xkey: str, keep=lambda r: True, per_sample: bool = False):
    """``{impl: sorted [(x, seconds)]}`` for one benchmark, x parsed from the case string."""
    out = defaultdict(list)
    for r in records:
        x = _num(r["case"], xkey)
        if r["benchmark"] == bench and x is not None and keep(r):
            n = _num(r["case"], "n") or _num(r["case"], "B") or 1
            out[r["impl"]].append((x, r["median_s"] / (n if per_sample else 1)))
    return {k: sorted(v) for k, v in out.items() if len(v) >= 2}


def _loglog(ax, series, xlabel: str, ylabel: str, title: str) -> None:
    for impl, pts in series.items():
        xs, ys = zip(*pts, strict=True)
        ax.loglog(xs, ys, "o-", label=impl)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)


def write_plots(records: list[dict], out_dir: Path) -> list[Path]:
    """Write the PNGs that the records support; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = {
        "scaling_jacobian_vs_dim.png": (
            _series(records, "diagnostics", "D", lambda r: "jacobian" in r["impl"], True),
            "D",
            "seconds per sample",
            "Exact Jacobian + asymmetry vs D",
        ),
        "scaling_likelihood_vs_dim.png": (
            _series(records, "peer_likelihood", "D", per_sample=True),
            "D",
            "seconds per sample",
            "Likelihood vs D (MLP velocity, rtol=atol=1e-5)",
        ),
        "scaling_sampling_vs_batch.png": (
            {
                k: v
                for d in (
                    _series(records, "peer_sampling", "n", lambda r: "D=2," in r["case"]),
                    _series(records, "peer_ddim", "n", lambda r: "D=2," in r["case"]),
                )
                for k, v in d.items()
            },
            "particles (D=2)",
            "seconds per solve",
            "Sampling vs batch size",
        ),
    }
    paths = []
    for name, (series, xl, yl, title) in panels.items():
        if series:
            fig, ax = plt.subplots(figsize=(6, 4))
            _loglog(ax, series, xl, yl, title)
            paths.append(_save(fig, out_dir / name))
    # Work-precision, one panel per problem (a line per solver), and time against NFE for the
    # timed (network) cases.
    wp = defaultdict(lambda: defaultdict(list))
    for r in records:
        if r["benchmark"] == "pf_solver_choice":
            wp[r["case"]][r["impl"]].append(
                (r["extra"]["nfe"], r["extra"]["max_err_vs_ref"], r["median_s"])
            )
    cases = [c for c, by in wp.items() if any(len(v) >= 2 for v in by.values())]
    if cases:
        fig, axes = plt.subplots(1, len(cases) + 1, figsize=(4.2 * (len(cases) + 1), 4))
        for ax, case in zip(axes, cases, strict=False):
            for impl, pts in sorted(wp[case].items()):
                nfe, err, _ = zip(*sorted(pts), strict=True)
                ax.loglog(nfe, err, "o-", label=impl)
            ax.set(xlabel="NFE", ylabel="max error vs float64 reference", title=case)
        for case in cases:
            for impl, pts in sorted(wp[case].items()):
                timed = sorted((n, t) for n, _, t in pts if t is not None)
                if timed:
                    axes[-1].loglog(*zip(*timed, strict=True), "o-", label=f"{case}: {impl}")
        axes[-1].set(xlabel="NFE", ylabel="seconds per solve", title="Time vs NFE")
        for a in axes:
            a.grid(True, which="both", alpha=0.3)
            a.legend(fontsize=6)
        paths.append(_save(fig, out_dir / "scaling_nfe.png"))
    return paths


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
