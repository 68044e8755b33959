"""The measurement of claim 4's designed experiment (:mod:`experiments.harm_design`): every field's
lambda, transport residual and quality, and the harmless share of each trained network's error.

Quality: sliced W2 and MMD of probability-flow samples against the data law (with noise floors),
and the NLL of held-out data by the exact-divergence likelihood, in excess of the exact NLL on
the same points. Every field gets its own draws, the replica too, so the metrics' noise enters
the analysis (and the replica measures it).
"""

from __future__ import annotations

import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from experiments.assets import Context
from experiments.harm_design import Base, designed_score, unit_errors, variants
from experiments.measures import (
    floors,
    marginal_samples,
    median_lambda,
    relative_residual,
    sample_quality,
)
from wgfm import gmm, perturbations
from wgfm.diagnostics import times_grid
from wgfm.diagnostics.helmholtz import helmholtz_split_field
from wgfm.fields import wgf_velocity
from wgfm.transport import log_likelihood

LEVELS, SAMPLES_FACTOR = 8, 4  # noise levels and samples (x num_diag_samples) of the sweeps
T_SPLIT = 0.3  # time of the Helmholtz split (the published finding's)


def measure(ctx: Context, bases: list[Base], *, shares: bool = True) -> dict:
    """Every field of the design over ``bases``: per row its base network, run, family, size,
    lambda, residual, SW2, MMD and excess NLL; per final base network its harmless share
    (``shares=False``: none, for "networks" without a learned error, such as the oracle).
    Plain lists (results.json)."""
    sz = ctx.sizes
    mix = ctx.mix2d
    ts = times_grid(ctx.process, LEVELS)
    xs = marginal_samples(
        ctx, mix, ts, sz.num_diag_samples * SAMPLES_FACTOR, ctx.key("harm-design-x")
    )
    units = unit_errors(ctx)
    rows: list[dict] = []
    t0 = time.perf_counter()
    for b_idx, base in enumerate(bases):
        ctx.console.log(f"claim 4: {base.name} ({time.perf_counter() - t0:.0f} s into the design)")
        net_score = base.score()
        for family, size in variants(sz.harm_strengths, base.final):
            score = designed_score(net_score, units, family, size)
            key = ctx.key(f"harm-design-q-{b_idx}-{family}-{size}")
            row = measure_field(ctx, score, xs, ts, key)
            rows.append(
                {"base": b_idx, "run": base.run, "network": base.name, "family": family}
                | {"size": size, **row}
            )
    return {
        "rows": rows,
        "bases": [b.name for b in bases],
        "runs": sorted({b.run for b in bases}),
        "shares": harmless_shares(ctx, [b for b in bases if b.final]) if shares else [],
        "floor": floors(ctx, mix, sz.num_eval_samples),
        "strengths": list(sz.harm_strengths),
    }


def measure_field(ctx: Context, score, xs, ts, key) -> dict:
    """One field's lambda, relative residual (each the median over the levels ``ts``, on the
    samples ``xs`` ``(L, n, 2)``), SW2, MMD and excess NLL, with draws from ``key``."""
    sz, mix = ctx.sizes, ctx.mix2d
    vel = wgf_velocity(ctx.process, score)
    # Levels summarised by their median, as lambda is: the relative residual divides by RMS
    # d_t log p_t, which vanishes as t -> 1, so a mean would be the last level's.
    lam = float(np.median(median_lambda(score, xs, ts)))
    res = float(np.median(relative_residual(ctx, vel, mix, xs, ts)))
    # Fresh prior draws, reference samples and held-out points for every field: with common
    # ones, their draw shifts every field's quality alike, which a bootstrap over networks
    # cannot see (it holds them fixed).
    k_q, k_ll = jax.random.split(key)
    q = sample_quality(ctx, vel, mix, sz.num_eval_samples, k_q)
    held_out = mix.sample(sz.num_likelihood, key=k_ll)
    ll = log_likelihood(vel, ctx.process, held_out, rtol=1e-4, atol=1e-4)
    nll = -float(np.mean(np.asarray(ll.log_likelihood)))
    exact_nll = -float(_mean_log_density(mix, held_out))  # on the same points
    return {
        "lambda": lam,
        "residual": res,
        "sw2": q["sw2"],
        "mmd": q["mmd"],
        "excess_nll": nll - exact_nll,
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
        err = perturbations.perturb(base.velocity(), _Scaled(v_exact, -1.0))
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
            {
                "network": base.name,
                "run": base.run,
                "share": shares[0],
                "discretisation": abs(shares[0] - shares[1]),
            }
        )
    return out


class _Scaled(eqx.Module):
    """``(x, t) -> factor * field(x, t)``."""

    field: object
    factor: float

    def __call__(self, x, t):
        return self.factor * self.field(x, t)  # type: ignore[operator]
