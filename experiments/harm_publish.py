"""Publishing claim 4's designed experiment: its figures, and the table of runs in
docs/reproduction.md, *recomputed* from each run's committed rows (results.json) by
:func:`experiments.harm_analysis` (never read back from the run's stored analysis), written
between its markers by :func:`experiments.publish.replace_between`.

``python -m experiments.harm_publish DOC.md RUNS_DIR`` (RUNS_DIR holding runs.json) rewrites it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from experiments import harm_analysis as ha
from experiments.harm_design import COPIES, FAMILIES
from experiments.publish import replace_between
from experiments.rankstats import Interval

_COLOURS = {"trained": "C0", "replica": "C7", "+harmless": "C2", "+generic": "C3"}
LAMBDA_DRAWN_MIN = 1e-3


def figure_quality(numbers: dict):
    """Quality against lambda and against the residual, coloured by family, each final network
    joined to its perturbed copies, the noise floor (SW2) dashed: a harmless copy moves right
    in lambda and stays put in the residual."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    rows = numbers["rows"]
    by_base: dict[int, dict] = {}
    for row in rows:
        by_base.setdefault(row["base"], {}).setdefault(row["family"], []).append(row)
    fig, axes = plt.subplots(2, 2, figsize=(10, 7.5), sharey="row")
    for r, metric in enumerate(("sw2", "excess_nll")):
        for c, x in enumerate(("lambda", "residual")):
            ax = axes[r, c]

            def xv(q, x=x):  # the conservative head's lambda is rounding (~1e-8): drawn at 1e-3
                return max(q[x], LAMBDA_DRAWN_MIN) if x == "lambda" else q[x]

            for fams in by_base.values():
                for f in COPIES:
                    for sign in (1, -1):
                        pts = fams["trained"][:1] + [
                            q for q in fams.get(f, []) if q["size"] * sign > 0
                        ]
                        ax.plot(
                            [xv(p) for p in pts],
                            [p[metric] for p in pts],
                            color=_COLOURS[f],
                            lw=0.6,
                            alpha=0.35,
                        )
            for f in FAMILIES:
                pts = [q for q in rows if q["family"] == f]
                ax.scatter(
                    [xv(q) for q in pts],
                    [q[metric] for q in pts],
                    s=14,
                    color=_COLOURS[f],
                    alpha=0.75,
                    label=f,
                    edgecolors="none",
                )
            if metric == "sw2":
                ax.axhline(numbers["floor"]["sw2"], color="k", ls="--", lw=1, label="noise floor")
                ax.set_yscale("log")
            else:
                ax.axhline(0.0, color="k", ls=":", lw=1, label="exact density")
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel(
                f"median asymmetry ratio lambda (below {LAMBDA_DRAWN_MIN:g}: at it)"
                if x == "lambda"
                else "median relative transport residual"
            )
            if c == 0:
                ax.set_ylabel(
                    "sliced W2 to the data law"
                    if metric == "sw2"
                    else "NLL of held-out data - exact NLL"
                )
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(
        "Sample quality against lambda and against the transport residual\n"
        "(lines join a run's final network to its copies)",
        fontsize=10,
    )
    fig.tight_layout()
    return fig


def figure_contrasts(analysis: dict):
    """The primary test per metric: each run's replica, harmless and generic contrasts (dots),
    their mean with its interval over runs (bar), and the margins (shaded: equivalence)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(ha.METRICS), figsize=(4 * len(ha.METRICS), 3.8))
    for ax, (m, label) in zip(np.atleast_1d(axes), ha.METRICS.items(), strict=True):
        p = analysis["primary"][m]
        delta = p["margin"]
        if np.isfinite(delta):
            ax.axhspan(-delta, delta, color="C2", alpha=0.12, label="equivalence margin")
            ax.axhline(delta, color="C3", ls="--", lw=1, label="harm margin")
        ax.axhline(0.0, color="k", lw=0.6)
        for i, f in enumerate(("replica", *COPIES)):
            vals = np.asarray(p["per_network"][f])
            jitter = np.linspace(-0.15, 0.15, len(vals)) if len(vals) > 1 else np.zeros(1)
            ax.scatter(i + jitter[: len(vals)], vals, s=10, color=_COLOURS[f], alpha=0.7)
            iv = Interval(**p[f])
            if iv.decided:
                ax.errorbar(
                    i + 0.3,
                    iv.estimate,
                    yerr=[[iv.estimate - iv.lo], [iv.hi - iv.estimate]],
                    fmt="o",
                    color="k",
                    capsize=3,
                )
        ax.set_xticks(range(3), ["replica", "+ harmless", "+ generic"])
        unit = "nats" if m == "excess_nll" else "log ratio"
        ax.set_ylabel(f"{label}: change from the network ({unit})")
        ax.set_title(f"{label}: {p['verdict']}", fontsize=9)
    np.atleast_1d(axes)[0].legend(fontsize=7)
    fig.suptitle(
        "Paired contrast per run (dots), mean with 95% interval over runs (black)", fontsize=10
    )
    fig.tight_layout()
    return fig


def figure_shares(numbers: dict):
    """The harmless share of each run's learned error, with its discretisation bound."""
    import matplotlib.pyplot as plt

    sh = numbers["shares"]
    fig, ax = plt.subplots(figsize=(max(6, 0.3 * len(sh)), 4))
    x = np.arange(len(sh))
    ax.bar(
        x, [s["share"] for s in sh], color="C2", yerr=[s["discretisation"] for s in sh], capsize=2
    )
    ax.set_xticks(x)
    ax.set_xticklabels([s["network"] for s in sh], rotation=80, fontsize=6)
    ax.set_ylabel("harmless share of ||v_theta - v||^2")
    ax.set_ylim(0, 1)
    ax.set_title(
        "Learned error at t = 0.3: share with div(p_t r) = 0\n"
        "(2D density-weighted Helmholtz split; bars: discretisation)",
        fontsize=9,
    )
    fig.tight_layout()
    return fig


# -- the table of runs in docs/reproduction.md --------------------------------------------------

BEGIN, END = "<!-- claim4:begin -->", "<!-- claim4:end -->"
HEADER = (
    "| run | commit | runs / networks / fields | SW2 margin | + harmless: SW2 | + generic: SW2 "
    "| harmless interval / margin width | primary verdict SW2 / MMD / NLL "
    "| secondary, trained only: SW2 ~ lambda given residual | harmless share "
    "| claim 4 wall time (s) | CPU time (s) |"
)


def table_row(result: dict, meta: dict) -> str:
    """One run's row, recomputed from its rows (``numbers.harm.designed``) by the analysis."""
    h = result["header"]
    numbers = result["numbers"]["harm"]["designed"]
    seed, n = int(h["seed"]), int(numbers["n_resamples"])
    rows, floor = numbers["rows"], numbers["floor"]
    prim = {m: ha.primary(rows, m, floor, seed=seed, n_resamples=n) for m in ha.METRICS}
    sec = ha.secondary(rows, ha.CLAIM_METRIC, floor, seed=seed, n_resamples=n)
    share = ha.share_summary(numbers["shares"], seed=seed, n_resamples=n)
    p = prim[ha.CLAIM_METRIC]
    harmless = Interval(**p["+harmless"])
    # what the equivalence test needs: an interval narrower than the margin band (< 1)
    power = (harmless.hi - harmless.lo) / (2 * p["margin"]) if p["margin"] > 0 else float("nan")
    wall = next((v for k, v in result["timings_s"].items() if k.startswith("4.")), float("nan"))
    cpu = meta.get("cpu_s")
    return (
        f"| {h['mode']}, seed {h['seed']} | {meta.get('commit', 'n/a')} "
        f"| {len(numbers['runs'])} / {len(numbers['bases'])} / {len(rows)} "
        f"| {p['margin']:.2f} | {harmless.text()} | {Interval(**p['+generic']).text()} "
        f"| {power:.2f} | {' / '.join(prim[m]['verdict'] for m in ha.METRICS)} "
        f"| {Interval(**sec['partial_lambda_given_residual']).text()} "
        f"| {Interval(**share['mean']).text(3)} "
        f"| {wall:.0f} | {'not measured' if cpu is None else f'{cpu:.0f}'} |"
    )


def render_table(runs_dir: Path) -> str:
    """The table of the runs that ``runs_dir/runs.json`` lists, in its order, each row
    recomputed from that run's ``results.json``."""
    runs = json.loads((Path(runs_dir) / "runs.json").read_text())["runs"]
    lines = [HEADER, "|" + "---|" * HEADER.count(" | ") + "---|"]
    for r in runs:
        result = json.loads((Path(runs_dir) / r["dir"] / "results.json").read_text())
        lines.append(table_row(result, r))
    return "\n".join(lines)


def publish_table(doc: Path, runs_dir: Path) -> None:
    """Replace the text between ``doc``'s claim-4 markers with the table of ``runs_dir``."""
    doc.write_text(replace_between(doc.read_text(), BEGIN, END, render_table(runs_dir), str(doc)))


if __name__ == "__main__":
    publish_table(Path(sys.argv[1]), Path(sys.argv[2]))
