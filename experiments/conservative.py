"""Claim 5 (beyond the paper) — conservative versus free networks at equal compute.

The free network predicts eps directly; the conservative one predicts ``grad_x phi`` of a scalar
potential built from the same architecture (``wgfm.models.Model(conservative=True)``), so its
score is a gradient by construction. Both get the same data, initialisation and number of
updates. We compare asymmetry, transport residual, exact-divergence likelihood of held-out data,
sample quality and training cost. If the paper is right that non-conservative errors are largely
harmless, enforcing conservativity should buy little at a higher price per step.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from experiments.assets import Context
from experiments.harm import TRAINED_LEVELS, TRAINED_SAMPLES_FACTOR
from experiments.measures import (
    floors,
    marginal_samples,
    median_lambda,
    relative_residual,
    sample_quality,
)
from experiments.report import ClaimRow, Report, bars, fmt
from wgfm.diagnostics import times_grid
from wgfm.transport import log_likelihood

TITLE = "5. Beyond the paper: conservative versus free"
NUMBERS_KEY = "conservative"


@eqx.filter_jit
def _mean_log_density(mix, x):
    """The exact mean log-likelihood of the points ``x`` ``(n, d)`` under the mixture."""
    return jnp.mean(jax.vmap(mix.log_density)(x))


def run(ctx: Context, report: Report, title: str) -> None:
    sz = ctx.sizes
    # Claim 4's grid and sample count for the same networks: the two claims' numbers compare
    # directly (and the sweeps share their compiled programs).
    ts = times_grid(ctx.process, TRAINED_LEVELS)
    out: dict = {}
    for data, mix in (("2d", ctx.mix2d), ("10d", ctx.mix10d)):
        nets = {"free": ctx.network(data), "conservative": ctx.network(data, conservative=True)}
        n = sz.num_diag_samples * TRAINED_SAMPLES_FACTOR
        xs = marginal_samples(ctx, mix, ts, n, ctx.key(f"cons-x-{data}"))
        held_out = mix.sample(sz.num_likelihood, key=ctx.key(f"cons-ll-{data}"))
        exact_ll = float(_mean_log_density(mix, held_out))
        fl = floors(ctx, mix, sz.num_eval_samples)
        rows = {}
        for name, net in nets.items():
            lam = median_lambda(net.score(), xs, ts)
            res = relative_residual(ctx, net.velocity(), mix, xs, ts)
            ll = log_likelihood(net.velocity(), ctx.process, held_out, rtol=1e-4, atol=1e-4)
            q = sample_quality(ctx, net.velocity(), mix, sz.num_eval_samples, ctx.key("cons-s"))
            rows[name] = {
                "median_lambda": float(np.median(lam)),
                "residual": float(np.mean(res)),
                "nll": float(-np.mean(np.asarray(ll.log_likelihood))),
                "sw2": q["sw2"],
                "train_s_per_step": net.train_seconds / max(net.steps, 1),
            }
        f, c = rows["free"], rows["conservative"]
        out[data] = {"rows": rows, "exact_nll": -exact_ll, "floor": fl}
        report.add(
            title,
            ClaimRow(
                f"{data}: the gradient-of-potential head is exactly conservative",
                f"median lambda {fmt(c['median_lambda'])}",
                f"free network: {fmt(f['median_lambda'])}",
                bool(c["median_lambda"] < 1e-4 < f["median_lambda"]),
            ),
        )
        report.add(
            title,
            ClaimRow(
                f"{data}: conservativity buys no better transport at equal compute",
                f"conservative: residual {fmt(c['residual'])}, NLL {fmt(c['nll'])}, SW2 {fmt(c['sw2'])}",
                f"free: residual {fmt(f['residual'])}, NLL {fmt(f['nll'])}, SW2 {fmt(f['sw2'])}; "
                f"exact NLL {fmt(-exact_ll)}, SW2 floor {fmt(fl['sw2'])}",
                bool(c["sw2"] >= 0.8 * f["sw2"] or max(c["sw2"], f["sw2"]) <= fl["sw2"]),
                f"'no better': SW2 not 20% lower, or both at the floor; conservative training took {fmt(c['train_s_per_step'] / f['train_s_per_step'], 2)}x the free one's time (compile included)",
            ),
        )
    labels = [f"{d}: {m}" for d in out for m in ("residual", "SW2", "NLL - exact")]
    series = {
        name: np.array(
            [
                v
                for d in out
                for v in (
                    out[d]["rows"][name]["residual"],
                    out[d]["rows"][name]["sw2"],
                    out[d]["rows"][name]["nll"] - out[d]["exact_nll"],
                )
            ]
        )
        for name in ("free", "conservative")
    }
    fig = bars(labels, series, "value (lower is better)", "Conservative versus free networks")
    report.save_figure(title, fig, "conservative_vs_free")
    report.numbers[NUMBERS_KEY] = out
