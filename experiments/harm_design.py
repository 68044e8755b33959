"""Claim 4 on trained networks, as a designed experiment: does sample quality follow the transport
residual or the Jacobian asymmetry lambda?

On the 2D mixture (exact ``p_t``, score and velocity), base networks that differ in quality
(objective, training length, seed and, in the full run, width) are measured as trained and with
an added score error ``e`` of several ``L2(p_t)`` sizes (relative to ``||grad log p_t||``):

* *harmless*: ``e = c(t) A grad log p_t`` (oracle score, ``A`` antisymmetric). The residual of a
  velocity ``v`` against ``p_t`` is ``R(v) = d_t log p_t + div v + v . grad log p_t``, linear in
  ``v``; the error adds ``w = -g^2/2 e`` to the velocity and ``div w + w . grad log p_t =
  -g^2 c / 2 (tr(A H) + s^T A s) = 0`` (``H`` the symmetric Hessian of ``log p_t``): the residual
  is unchanged *exactly*, while ``A H`` is not symmetric, so lambda rises;
* *generic*: random Fourier features of the same size, which raise both.

The perturbation size is a traced input (``TimeScaled`` scales), and every variant of a base
network is the same PyTree structure (score + harmless + generic, with zero scales for the
families not applied), so each architecture compiles each measurement once.

Quality: sliced W2 and MMD of probability-flow samples against the data law (with noise floors),
and the NLL of held-out data by the exact-divergence likelihood, in excess of the exact NLL on
the same points; each field gets its own draws, so their noise enters the bootstrap. Statistics:
:mod:`experiments.rankstats`.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from experiments.assets import Context, Trained
from experiments.measures import (
    floors,
    marginal_samples,
    median_lambda,
    relative_residual,
    sample_quality,
)
from experiments.rankstats import (
    Interval,
    cluster_bootstrap,
    partial_spearman,
    spearman,
    standardized_regression,
    transport_verdict,
)
from wgfm import gmm, perturbations
from wgfm.diagnostics import times_grid
from wgfm.diagnostics.helmholtz import helmholtz_split_field
from wgfm.fields import wgf_velocity
from wgfm.train import TrainConfig, fit
from wgfm.transport import log_likelihood

# objective label -> (predicts, conservative head, loss weighting or None for the default)
OBJECTIVES: dict[str, tuple[str, bool, str | None]] = {
    "eps": ("eps", False, None),
    "WGF-FM": ("velocity", False, None),
    "DSM": ("score", False, "sigma2"),
    "conservative": ("eps", True, None),
}
FAMILIES = ("trained", "+harmless", "+generic")
LEVELS, SAMPLES_FACTOR = 8, 4  # noise levels and samples (x num_diag_samples) of the sweeps
T_SPLIT = 0.3  # time of the Helmholtz split (the published finding's)


@dataclasses.dataclass(frozen=True)
class Base:
    """A base network: one snapshot of one training run."""

    name: str
    net: Trained
    run: str  # the training run it comes from (objective, width, seed)


def _train(ctx: Context, objective: str, arch: str, seed: int) -> Trained:
    """One training run with EMA snapshots at the sizes' fractions. Seed 0 of the default
    width is the network the other claims use (``Context.network``: trained once per run); the
    others follow the same recipe from their own key, shared by every objective of that seed and
    width (a controlled comparison, as ``Context.network``)."""
    predicts, conservative, weighting = OBJECTIVES[objective]
    sz = ctx.sizes
    if seed == 0 and arch == sz.arch_vector:
        return ctx.network("2d", predicts, conservative=conservative, weighting=weighting)
    name = f"harm-{arch}-{seed}-{predicts}-{'cons' if conservative else 'free'}-{weighting}"
    if name in ctx._cache:
        return ctx._cache[name]  # type: ignore[return-value]
    from wgfm.models import get_model

    steps = sz.train_steps_2d
    model = get_model(arch, kind=predicts, conservative=conservative)
    cfg = TrainConfig(
        steps=steps,
        batch_size=sz.batch_size,
        lr=2e-3,
        warmup_steps=min(100, steps // 10),
        ema_decay=max(0.0, min(0.999, 1.0 - 10.0 / steps)),
        weighting=weighting or "uniform",
        log_every=max(1, min(100, steps)),
    )
    snaps = sorted({max(1, int(f * steps)) for f in sz.snapshots} - {steps})
    t0 = time.perf_counter()
    res = fit(
        model,
        ctx.process,
        ctx.data("2d"),
        cfg,
        key=ctx.key(f"harm-net-{arch}-{seed}"),
        progress=False,
        snapshot_steps=snaps,
    )
    jax.block_until_ready(res.ema)
    secs = time.perf_counter() - t0
    loss = float(res.logged_losses[-1]) if len(res.logged_losses) else float("nan")
    out = Trained(name, model, res.ema, ctx.process, secs, steps, loss, res.snapshots)
    ctx._cache[name] = out
    return out


def base_networks(ctx: Context) -> list[Base]:
    sz = ctx.sizes
    bases = []
    for arch in sz.harm_archs or (sz.arch_vector,):
        for seed in range(sz.harm_seeds):
            for obj in sz.harm_objectives:
                run = _train(ctx, obj, arch, seed)
                label = f"{obj}, {arch}, seed {seed}"
                for step in sorted({max(1, int(f * run.steps)) for f in sz.snapshots}):
                    bases.append(Base(f"{label}, step {step}", run.at(step), label))
    return bases


def _unit_errors(ctx: Context):
    """The harmless and generic errors scaled to ``||e_t||_{L2(p_t)} = ||grad log p_t||_{L2(p_t)}``
    at every time (``TimeScaled``); a size multiplies their scales."""
    mix, proc = ctx.mix2d, ctx.process
    k1, k2, k3 = jax.random.split(ctx.key("harm-design-errors"), 3)
    score = gmm.score_field(mix, proc)
    a = perturbations.random_antisymmetric(2, key=k1).astype(jnp.float32)
    errs = {
        "+harmless": perturbations.AntisymmetricScore(score, a),
        "+generic": perturbations.GenericError(2, key=k2),
    }
    return {
        k: perturbations.scale_to_size(e, mix, proc, 1.0, key=k3, relative_to=score)
        for k, e in errs.items()
    }


def designed_score(net_score, units: dict, family: str, size: float):
    """``s_theta + size e_family`` as one PyTree structure for every family and size."""
    h, g = units["+harmless"], units["+generic"]
    ch = size if family == "+harmless" else 0.0
    cg = size if family == "+generic" else 0.0
    return perturbations.perturb(
        perturbations.perturb(net_score, dataclasses.replace(h, scales=ch * h.scales)),
        dataclasses.replace(g, scales=cg * g.scales),
    )


def measure(ctx: Context) -> dict:
    """Every field of the design: per row its base network, family, size, lambda, residual,
    SW2, MMD and excess NLL; per base network its harmless share. Plain lists (results.json)."""
    sz = ctx.sizes
    mix = ctx.mix2d
    ts = times_grid(ctx.process, LEVELS)
    xs = marginal_samples(
        ctx, mix, ts, sz.num_diag_samples * SAMPLES_FACTOR, ctx.key("harm-design-x")
    )
    units = _unit_errors(ctx)
    bases = base_networks(ctx)
    # Each error with both signs: in 2D the unit antisymmetric A is one of two rotations, and a
    # network's own error (an angular bias, say) can be undone by one direction and doubled by
    # the other; with both, neither direction of the harmless error is favoured by the draw.
    variants = [("trained", 0.0)] + [
        (f, sign * s) for f in FAMILIES[1:] for s in sz.harm_strengths for sign in (1.0, -1.0)
    ]
    rows: list[dict] = []
    t0 = time.perf_counter()
    for b_idx, base in enumerate(bases):
        ctx.console.log(f"claim 4: {base.name} ({time.perf_counter() - t0:.0f} s into the design)")
        for family, size in variants:
            score = designed_score(base.net.score(), units, family, size)
            vel = wgf_velocity(ctx.process, score)
            # Levels summarised by their median, as lambda is: the relative residual divides by
            # RMS d_t log p_t, which vanishes as t -> 1, so a mean would be the last level's.
            lam = float(np.median(median_lambda(score, xs, ts)))
            res = float(np.median(relative_residual(ctx, vel, mix, xs, ts)))
            # Fresh prior draws, reference samples and held-out points for every field: with
            # common ones, their draw shifts every field's quality alike, which the bootstrap
            # over networks cannot see (it holds them fixed), and the sign of a small effect
            # then follows the draw: it flipped between master seeds.
            k_q, k_ll = jax.random.split(ctx.key(f"harm-design-q-{b_idx}-{family}-{size}"))
            q = sample_quality(ctx, vel, mix, sz.num_eval_samples, k_q)
            held_out = mix.sample(sz.num_likelihood, key=k_ll)
            ll = log_likelihood(vel, ctx.process, held_out, rtol=1e-4, atol=1e-4)
            nll = -float(np.mean(np.asarray(ll.log_likelihood)))
            exact_nll = -float(_mean_log_density(mix, held_out))  # on the same points
            rows.append(
                {
                    "base": b_idx,
                    "run": base.run,
                    "network": base.name,
                    "family": family,
                    "size": size,
                    "lambda": lam,
                    "residual": res,
                    "sw2": q["sw2"],
                    "mmd": q["mmd"],
                    "excess_nll": nll - exact_nll,
                }
            )
    return {
        "rows": rows,
        "bases": [b.name for b in bases],
        "runs": sorted({b.run for b in bases}),
        "shares": harmless_shares(ctx, bases),
        "floor": floors(ctx, mix, sz.num_eval_samples),
        "strengths": list(sz.harm_strengths),
    }


@eqx.filter_jit
def _mean_log_density(mix, x):
    return jnp.mean(jax.vmap(mix.log_density)(x))


def harmless_shares(ctx: Context, bases: list[Base]) -> list[dict]:
    """Per base network, the harmless share ``||r||^2 / ||v_theta - v||^2`` of the learned
    velocity error at ``T_SPLIT`` (2D density-weighted Helmholtz split, float64 CG), on the
    sizes' grid and on a grid of half the cells per side: their difference bounds the
    discretisation error of the share (the split is second order in the spacing)."""
    logp = gmm.log_density_field(ctx.mix2d, ctx.process)
    v_exact = gmm.velocity_field(ctx.mix2d, ctx.process)
    t = jnp.float32(T_SPLIT)
    out = []
    for base in bases:
        err = perturbations.perturb(base.net.velocity(), _Scaled(v_exact, -1.0))
        shares = []
        for num in (ctx.sizes.helmholtz_grid, ctx.sizes.helmholtz_grid // 2):
            split = helmholtz_split_field(err, logp, t, lo=-6.0, hi=6.0, num=num)
            if not float(split.solver_residual) < 1e-6:  # float64 CG: ~1e-10 expected
                raise RuntimeError(
                    f"Helmholtz split of {base.name}: CG stopped at relative residual "
                    f"{float(split.solver_residual):.3g}; the shares would be wrong."
                )
            h2, f2 = float(split.harmless) ** 2, float(split.harmful) ** 2
            shares.append(h2 / (h2 + f2))
        out.append(
            {"network": base.name, "share": shares[0], "discretisation": abs(shares[0] - shares[1])}
        )
    return out


class _Scaled(eqx.Module):
    """``(x, t) -> factor * field(x, t)``."""

    field: object
    factor: float

    def __call__(self, x, t):
        return self.factor * self.field(x, t)  # type: ignore[operator]


# quality metric -> label; the verdict of the claim is SW2's, the others are reported beside it
METRICS = {"sw2": "SW2", "mmd": "MMD", "excess_nll": "excess NLL"}
STATISTICS = (
    "spearman_residual",
    "spearman_lambda",
    "partial_residual_given_lambda",
    "partial_lambda_given_residual",
    "slope_residual",
    "slope_lambda",
)


def analyse(numbers: dict, *, seed: int, n_resamples: int) -> dict:
    """Per quality metric: Spearman and partial rank correlations with the residual and with
    lambda, the slopes of a regression of the quality's ranks on both (standardised ranks),
    each with a 95% bootstrap interval over base networks, and the verdict from them; the
    harmless share's mean over base networks with its interval; checks of the design."""
    rows = numbers["rows"]
    col = {k: np.array([r[k] for r in rows]) for k in ("lambda", "residual", "base", *METRICS)}
    fam = np.array([r["family"] for r in rows])
    rk = stats.rankdata
    out: dict = {
        "n_fields": len(rows),
        "n_bases": len(numbers["bases"]),
        "n_resamples": n_resamples,
    }
    floor = numbers["floor"]
    for m in METRICS:
        # Below its noise floor a metric cannot order two sample sets (two exact ones differ by
        # that much): values under the floor are censored to it, so they tie in the ranks.
        y_m = np.maximum(col[m], floor[m]) if m in floor else col[m]

        def stat(idx, y=y_m):
            lam, res, q = col["lambda"][idx], col["residual"][idx], y[idx]
            slope = standardized_regression(rk(q), rk(res), rk(lam))
            return np.array(
                [
                    spearman(res, q),
                    spearman(lam, q),
                    partial_spearman(q, res, lam),
                    partial_spearman(q, lam, res),
                    slope[0],
                    slope[1],
                ]
            )

        est, lo, hi = cluster_bootstrap(stat, col["base"], seed=seed, n_resamples=n_resamples)
        iv = {
            s: Interval(float(e), float(a), float(b))
            for s, e, a, b in zip(STATISTICS, est, lo, hi, strict=True)
        }
        out[m] = {
            **{s: dataclasses.asdict(v) for s, v in iv.items()},
            "verdict": transport_verdict(
                iv["partial_residual_given_lambda"], iv["partial_lambda_given_residual"]
            ),
        }
    out["at_floor"] = {
        "sw2": int(np.sum(col["sw2"] <= floor["sw2"])),
        "mmd": int(np.sum(col["mmd"] <= floor["mmd"])),
    }
    # The design's premise, measured: the harmless error keeps each base network's residual
    # and raises its lambda; the generic one raises both.
    trained = {
        int(b): i for i, (b, f) in enumerate(zip(col["base"], fam, strict=True)) if f == "trained"
    }
    for f in FAMILIES[1:]:
        idx = np.flatnonzero(fam == f)
        ref = np.array([trained[int(b)] for b in col["base"][idx]])
        out[f] = {
            "max_rel_residual_change": float(
                np.max(np.abs(col["residual"][idx] / col["residual"][ref] - 1))
            ),
            "median_residual_ratio": float(np.median(col["residual"][idx] / col["residual"][ref])),
            "median_lambda_ratio": float(np.median(col["lambda"][idx] / col["lambda"][ref])),
        }
        # The paired effect on quality: mean log ratio of the copy's censored SW2 to its base
        # network's (0: unchanged), with its interval over base networks.
        sw = np.maximum(col["sw2"], floor["sw2"])
        lr = np.log(sw[idx] / sw[ref])
        est, lo, hi = cluster_bootstrap(
            lambda i, lr=lr: np.array([lr[i].mean()]),
            col["base"][idx],
            seed=seed,
            n_resamples=n_resamples,
        )
        out[f]["sw2_log_ratio"] = dataclasses.asdict(
            Interval(float(est[0]), float(lo[0]), float(hi[0]))
        )
    share = np.array([s["share"] for s in numbers["shares"]])
    est, lo, hi = cluster_bootstrap(
        lambda i: np.array([share[i].mean()]),
        np.arange(len(share)),
        seed=seed,
        n_resamples=n_resamples,
    )
    out["harmless_share_mean"] = dataclasses.asdict(
        Interval(float(est[0]), float(lo[0]), float(hi[0]))
    )
    out["harmless_share_max_discretisation"] = float(
        max(s["discretisation"] for s in numbers["shares"])
    )
    return out


_COLOURS = {"trained": "C0", "+harmless": "C2", "+generic": "C3"}
LAMBDA_DRAWN_MIN = 1e-3


def figure_quality(numbers: dict):
    """Quality against lambda and against the residual, coloured by family, each base network
    joined to its perturbed copies, the noise floor (SW2) dashed: a harmless copy moves right
    in lambda and stays put in the residual."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    rows = numbers["rows"]
    fig, axes = plt.subplots(2, 2, figsize=(10, 7.5), sharey="row")
    sizes = sorted(set(numbers["strengths"]))
    for r, metric in enumerate(("sw2", "excess_nll")):
        for c, x in enumerate(("lambda", "residual")):
            ax = axes[r, c]
            by_base: dict[int, dict] = {}
            for row in rows:
                by_base.setdefault(row["base"], {}).setdefault(row["family"], []).append(row)

            def xv(q, x=x):  # the conservative head's lambda is rounding (~1e-8): drawn at 1e-3
                return max(q[x], LAMBDA_DRAWN_MIN) if x == "lambda" else q[x]

            for fams in by_base.values():
                t0 = fams["trained"][0]
                for f in FAMILIES[1:]:
                    for sign in (1, -1):
                        pts = [t0] + sorted(
                            (q for q in fams.get(f, []) if q["size"] * sign > 0),
                            key=lambda q: abs(q["size"]),
                        )
                        ax.plot(
                            [xv(p) for p in pts],
                            [p[metric] for p in pts],
                            color=_COLOURS[f],
                            lw=0.6,
                            alpha=0.35,
                        )
            for f in FAMILIES:
                pts = [q for q in rows if q["family"] == f]
                ms = [
                    12
                    if f == "trained"
                    else 12 + 30 * (sizes.index(abs(q["size"])) + 1) / len(sizes)
                    for q in pts
                ]
                ax.scatter(
                    [xv(q) for q in pts],
                    [q[metric] for q in pts],
                    s=ms,
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
        "(marker size: perturbation size; lines join a network to its copies)",
        fontsize=10,
    )
    fig.tight_layout()
    return fig


def figure_shares(numbers: dict):
    """The harmless share of each base network's learned error, with its discretisation bound."""
    import matplotlib.pyplot as plt

    sh = numbers["shares"]
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(sh)), 4))
    x = np.arange(len(sh))
    ax.bar(
        x, [s["share"] for s in sh], color="C2", yerr=[s["discretisation"] for s in sh], capsize=2
    )
    ax.set_xticks(x)
    ax.set_xticklabels([s["network"] for s in sh], rotation=80, fontsize=6)
    ax.set_ylabel("harmless share of ||v_theta - v||^2")
    ax.set_ylim(0, 1)
    ax.set_title(
        f"Learned error at t = {T_SPLIT}: share with div(p_t r) = 0\n"
        "(2D density-weighted Helmholtz split; bars: discretisation)",
        fontsize=9,
    )
    fig.tight_layout()
    return fig


# -- the table of runs in docs/reproduction.md --------------------------------------------------

BEGIN, END = "<!-- claim4:begin -->", "<!-- claim4:end -->"


def runs_table(results: list[dict], runs: list[dict] | None = None) -> str:
    """A markdown table of claim 4's designed experiment in each run's results.json: the
    headline statistics with their intervals and the verdicts; ``runs`` (one per result, as in
    docs/claim4_runs/runs.json) name each run's commit and its CPU time where measured."""
    lines = [
        "| run | commit | networks / fields | SW2 ~ residual given lambda "
        "| SW2 ~ lambda given residual | verdict SW2 / MMD / NLL | + harmless: log SW2 ratio "
        "| harmless share | claim 4 wall time (s) | CPU time (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, res in enumerate(results):
        h = res["header"]
        meta = runs[i] if runs else {}
        an = res["numbers"]["harm"]["designed"]["analysis"]
        time_s = next((v for k, v in res["timings_s"].items() if k.startswith("4.")), float("nan"))
        cpu = meta.get("cpu_s")

        def iv(d):
            return Interval(**d).text()

        verdicts = " / ".join("holds" if an[m]["verdict"] else "does not hold" for m in METRICS)
        lines.append(
            f"| {h['mode']}, seed {h['seed']} | {meta.get('commit', 'n/a')} "
            f"| {an['n_bases']} / {an['n_fields']} "
            f"| {iv(an['sw2']['partial_residual_given_lambda'])} "
            f"| {iv(an['sw2']['partial_lambda_given_residual'])} | {verdicts} "
            f"| {iv(an['+harmless']['sw2_log_ratio'])} | {Interval(**an['harmless_share_mean']).text(3)} "
            f"| {time_s:.0f} | {'not measured' if cpu is None else f'{cpu:.0f}'} |"
        )
    return "\n".join(lines)


def render_table(runs_dir: Path) -> str:
    """:func:`runs_table` of the runs that ``runs_dir/runs.json`` lists, in its order."""
    import json

    runs = json.loads((Path(runs_dir) / "runs.json").read_text())["runs"]
    results = [json.loads((Path(runs_dir) / r["dir"] / "results.json").read_text()) for r in runs]
    return runs_table(results, runs)


def replace_table(text: str, table: str, where: str = "the document") -> str:
    """``text`` with the part between the claim-4 markers replaced by ``table``."""
    from experiments.publish import replace_between

    return replace_between(text, BEGIN, END, table, where)


def publish_table(doc: Path, runs_dir: Path) -> None:
    """Replace the text between ``doc``'s claim-4 markers with the table of ``runs_dir``."""
    doc.write_text(replace_table(doc.read_text(), render_table(runs_dir), str(doc)))


if __name__ == "__main__":
    import sys

    # python -m experiments.harm_design DOC.md RUNS_DIR (holding runs.json)
    publish_table(Path(sys.argv[1]), Path(sys.argv[2]))
