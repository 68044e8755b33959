"""Claim 3 — WGF flow matching is what diffusion training does.

The same network (same initialisation, data, steps) is trained three ways: eps-prediction (DDPM,
uniform weight), denoising score matching (weight sigma_t^2, Song et al.) and WGF flow matching
(regression of the velocity onto ``u_t = alpha_t' x0 + sigma_t' eps``). All three target the
same object, the WGF velocity ``v_t = f - g^2/2 grad log p_t``: we compare their velocity fields
on held-out points of every ``p_t`` and their probability-flow samples. As a control, the
probability-flow ODE with the exact velocity transports the prior onto the data law at the
metrics' noise floor: the probability-flow ODE *is* the WGF transport.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from experiments.assets import Context
from experiments.measures import floors, sample_quality
from experiments.report import ClaimRow, Report, fmt, samples_vs_oracle
from wgfm import gmm
from wgfm.diagnostics import noised_samples, sweep, times_grid

TITLE = "3. WGF flow matching is what diffusion training does"
NUMBERS_KEY = "objectives"


@dataclasses.dataclass(frozen=True)
class Objective:
    """A training objective of the mixtures' networks: what the network predicts, the loss
    weighting, and whether its head is the gradient of a scalar potential."""

    predicts: str
    weighting: str = "uniform"
    conservative: bool = False


# The one table of objectives: claim 3 compares the free-head ones (CLAIM3), claim 4's design
# trains the objectives its sizes name (`Sizes.harm_objectives`).
OBJECTIVES = {
    "eps": Objective("eps"),
    "score (DSM)": Objective("score", "sigma2"),
    "WGF-FM": Objective("velocity"),
    "conservative": Objective("eps", conservative=True),
}
CLAIM3 = ("eps", "score (DSM)", "WGF-FM")


def train(
    ctx: Context,
    objective: str,
    *,
    seed: int | None = None,
    arch: str | None = None,
    steps: int | None = None,
):
    """The 2D mixture's network trained with ``objective`` (a key of :data:`OBJECTIVES`):
    :meth:`Context.network`, which trains it once per run (``seed``: an independent replicate;
    ``arch``: another width; ``steps``: another length; see there)."""
    if objective not in OBJECTIVES:
        raise ValueError(f"`objective` must be one of {sorted(OBJECTIVES)}, got {objective!r}.")
    o = OBJECTIVES[objective]
    return ctx.network(
        "2d",
        o.predicts,
        conservative=o.conservative,
        weighting=o.weighting,
        seed=seed,
        arch=arch,
        steps=steps,
    )


def field_values(field, x, t, *, checked: bool = True):
    """``field(x, t)`` as a sweep diagnostic (the sweep checks the values on the host)."""
    del checked
    return field(x, t)


def _velocities(field, xs, ts) -> np.ndarray:
    """``field`` at every sample of ``xs`` ``(L, n, D)`` and level ``ts``."""
    res = sweep(field_values, field, xs, ts, checked=False, what="velocities are")
    return np.asarray(res.values)


def l2_rel(a, b, ref) -> np.ndarray:
    """Per level ``||a - b||_{L2(p_t)} / ||ref||_{L2(p_t)}`` over samples (axis 1)."""
    num = np.sqrt(np.mean(np.sum((a - b) ** 2, -1), 1))
    return num / np.sqrt(np.mean(np.sum(ref**2, -1), 1))


def samples_agree(sw2: dict[str, float], floor: float) -> bool:
    """Claim 3's sample verdict: every network's probability-flow samples are within the noise
    floor of the data law, ``SW2(samples, exact samples) <= floor`` for each (the floor: mean +
    3 std of the SW2 between two independent exact sample sets of the same size, so a correct
    sampler exceeds it rarely). Then any two networks' samples are within ``2 floor`` of each
    other (SW2 is a metric), and a network whose samples miss the data law by more than the
    metric's own noise fails, whatever the others do."""
    if not sw2:
        raise ValueError("`sw2` must hold at least one network's SW2.")
    return bool(all(v <= floor for v in sw2.values()))


def run(ctx: Context, report: Report, title: str) -> None:
    sz = ctx.sizes
    ts = times_grid(ctx.process, 20)
    tsj = jnp.asarray(ts, jnp.float32)
    p = ctx.process
    held_out = ctx.mix2d.sample(512, key=ctx.key("obj-held-out"))
    xs = noised_samples(p, held_out, tsj, key=ctx.key("obj-eps"))  # (L, 512, 2)
    oracle_v = _velocities(gmm.velocity_field(ctx.mix2d, p), xs, tsj)
    nets = {name: train(ctx, name) for name in CLAIM3}
    vel = {name: _velocities(n.velocity(), xs, tsj) for name, n in nets.items()}
    err = {name: l2_rel(v, oracle_v, oracle_v) for name, v in vel.items()}
    diff_eps_fm = l2_rel(vel["eps"], vel["WGF-FM"], oracle_v)
    diff_eps_dsm = l2_rel(vel["eps"], vel["score (DSM)"], oracle_v)
    # Compare where relative errors are meaningful: t -> 0 amplifies any eps error by
    # g_t^2 / (2 sigma_t) in the velocity, and for t >~ 0.5 ||v_t|| -> 0 (p_t ~ N(0, I)).
    mid = (ts >= 0.05) & (ts <= 0.5)
    n = sz.num_eval_samples
    fl = floors(ctx, ctx.mix2d, n)
    quality = {
        name: sample_quality(ctx, net.velocity(), ctx.mix2d, n, ctx.key("obj-sample"))
        for name, net in nets.items()
    }
    exact = sample_quality(
        ctx, gmm.velocity_field(ctx.mix2d, p), ctx.mix2d, n, ctx.key("obj-sample")
    )
    report.add(
        title,
        ClaimRow(
            "eps- and WGF-FM-trained networks learn the same velocity field",
            f"median over t in [0.05, 0.5] of ||v_eps - v_FM|| / ||v|| = "
            f"{fmt(np.median(diff_eps_fm[mid]))}",
            f"their errors vs the exact v: eps {fmt(np.median(err['eps'][mid]))}, FM "
            f"{fmt(np.median(err['WGF-FM'][mid]))}",
            bool(np.median(diff_eps_fm[mid]) < 0.15),
            "threshold 15% of ||v||_{L2(p_t)}; all levels in results.json",
        ),
    )
    report.add(
        title,
        ClaimRow(
            "DSM-trained network learns the same velocity field",
            f"median over t in [0.05, 0.5] of ||v_eps - v_DSM|| / ||v|| = "
            f"{fmt(np.median(diff_eps_dsm[mid]))}",
            f"DSM error vs exact v: {fmt(np.median(err['score (DSM)'][mid]))}",
            bool(np.median(diff_eps_dsm[mid]) < 0.15),
            "threshold 15%",
        ),
    )
    sw = {k: q["sw2"] for k, q in quality.items()}
    report.add(
        title,
        ClaimRow(
            "their probability-flow samples agree",
            ", ".join(f"{k}: SW2 {fmt(v)}" for k, v in sw.items()),
            f"noise floor SW2 {fmt(fl['sw2'])}",
            samples_agree(sw, fl["sw2"]),
            "every SW2 against exact samples at most the noise floor",
        ),
    )
    report.add(
        title,
        ClaimRow(
            "the probability-flow ODE with the exact WGF velocity transports N(0, I) onto p_0",
            f"SW2 {fmt(exact['sw2'])}, MMD {fmt(exact['mmd'])} ({fmt(exact['nfe'])} NFE)",
            f"noise floor SW2 {fmt(fl['sw2'])}, MMD {fmt(fl['mmd'])}",
            bool(exact["sw2"] <= fl["sw2"] and exact["mmd"] <= fl["mmd"]),
        ),
    )
    panels = {f"{k} (SW2 {fmt(q['sw2'], 2)})": q["samples"] for k, q in quality.items()}
    panels["exact velocity"] = exact["samples"]
    ref = np.asarray(ctx.mix2d.sample(n, key=ctx.key("obj-ref")))
    report.save_figure(
        title,
        samples_vs_oracle(panels, ref, "Probability-flow samples by objective"),
        "samples_objectives",
    )
    report.numbers[NUMBERS_KEY] = {
        "levels": ts,
        "rel_error_vs_exact": err,
        "rel_diff_eps_fm": diff_eps_fm,
        "rel_diff_eps_dsm": diff_eps_dsm,
        "sw2": sw,
        "exact_velocity": {k: exact[k] for k in ("sw2", "mmd", "nfe")},
        "floor": fl,
        "train_seconds": {k: n.train_seconds for k, n in nets.items()},
    }
