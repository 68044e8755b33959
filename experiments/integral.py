"""Claim 2 — the integral constraint: trained networks circulate around closed loops.

A gradient has zero circulation around every loop. We integrate the score implied by trained
networks around four loop families at every noise level — a circle in a random plane, the
authors' Brownian bridge from ``x_t`` back to itself (step 0.05), their pair rotation about the
clean point (``||x - alpha_t x0||`` fixed) and their cycle through noisy copies of one clean point
kept on the noise shell — and report raw ``I``, normalised ``I_norm`` and per-length ``I / L``.
Controls: the exact oracle score (zero up to quadrature error, which we show shrinks as the loop
is refined) and an untrained network.

The measurement is the library's :func:`wgfm.diagnosis.measure_circulation`, the one ``wgfm
diagnose`` makes; this module chooses the networks, sizes and controls of each data set, and
adds the oracle's refinement check and the 2D curl figure.
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from experiments.assets import Context
from experiments.measures import measure_claim
from experiments.report import ClaimRow, Report, field_with_curl, fmt
from wgfm.diagnosis import CLAIMS
from wgfm.diagnostics import loops, require_finite, times_grid
from wgfm.diagnostics.jacobian import curl_2d
from wgfm.presets import MIXTURES

CLAIM = CLAIMS["integral"]
TITLE = CLAIM.title
NUMBERS_KEY = CLAIM.key


def run(ctx: Context, report: Report, title: str) -> None:
    sz = ctx.sizes
    numbers: dict = {"levels": times_grid(ctx.process, sz.num_levels)}  # image sets: fewer
    for data in ctx.datasets:
        claim = dataclasses.replace(
            CLAIM, figures=("noisy copies",) if data == "10d" else ("bridge",)
        )
        m = measure_claim(
            ctx,
            claim,
            data,
            keys=(f"int-{data}", f"loop-{data}"),
            control_name="oracle" if data in MIXTURES else "Gaussian-fit score",
        )
        report.add_measurement(title, m)
        numbers[data] = m.numbers
    if "2d" in ctx.datasets:
        _oracle_convergence(ctx, report, title, numbers)
        _curl_figure(ctx, report, title)
    report.numbers[NUMBERS_KEY] = numbers


def _oracle_convergence(ctx: Context, report: Report, title: str, numbers: dict) -> None:
    """The oracle's circulation is quadrature error: refining a Brownian-bridge loop by 1, 2, 4
    ... (same polyline) shrinks it like h^2 (midpoint rule, second order)."""
    t = jnp.float32(0.3)
    field = ctx.oracle_score("2d")
    x = ctx.mix2d.marginal(ctx.process, t).sample(32, key=ctx.key("conv-x"))
    keys = jax.random.split(ctx.key("conv-loop"), 32)
    base = jax.vmap(lambda xi, k: loops.brownian_bridge(xi, 64, 0.05, key=k))(x, keys)

    @eqx.filter_jit
    def circ(field, paths):
        return jax.vmap(lambda pth: jnp.abs(loops.loop_report(field, pth, t, checked=False).I))(
            paths
        )

    factors = [1, 2, 4, 8]
    meds = []
    for f in factors:
        paths = jax.vmap(lambda pth, f=f: loops.refine(pth, f))(base) if f > 1 else base
        out = require_finite(circ(field, paths)[None, :], np.array([t]), "oracle circulation is")
        meds.append(float(np.median(out)))
    order = float(np.polyfit(np.log(factors), np.log(meds), 1)[0])
    numbers["oracle_refinement"] = {"factors": factors, "median_abs_I": meds, "order": order}
    report.add(
        title,
        ClaimRow(
            "oracle circulation is quadrature error: it shrinks with refinement",
            f"median abs(I) {', '.join(fmt(m) for m in meds)} for x{factors}",
            "midpoint rule: second order expected",
            bool(order < -1.5 and meds[-1] < meds[0]),
            f"fitted order {fmt(order)}",
        ),
    )


def _curl_figure(ctx: Context, report: Report, title: str) -> None:
    """The trained 2D score at a low noise level, coloured by its curl, with two loops."""
    t = jnp.float32(times_grid(ctx.process, 100)[5])
    field = ctx.network("2d").score()
    g = np.linspace(-4.5, 4.5, 61, dtype=np.float32)
    gx, gy = np.meshgrid(g, g)
    pts = jnp.asarray(np.stack([gx.ravel(), gy.ravel()], 1))

    @eqx.filter_jit
    def evaluate(field, pts):
        curl = jax.vmap(lambda x: curl_2d(field, x, t, checked=False))(pts)
        return curl, jax.vmap(lambda x: field(x, t))(pts)

    curl, v = require_finite(
        jax.tree.map(lambda a: a[None], evaluate(field, pts)),
        np.array([t]),
        "curl of the trained 2D score is",
    )
    curl, v = curl[0], v[0]
    x0 = jnp.asarray([3.0, 0.0], jnp.float32)
    lp = [
        np.asarray(loops.circle(x0, jnp.array([1.0, 0.0]), jnp.array([0.0, 1.0]), 1.0, 64)),
        np.asarray(loops.brownian_bridge(jnp.array([0.0, 3.0]), 200, 0.1, key=ctx.key("fig"))),
    ]
    fig = field_with_curl(
        gx,
        gy,
        curl.reshape(gx.shape),
        v[:, 0].reshape(gx.shape),
        v[:, 1].reshape(gx.shape),
        lp,
        f"Trained 2D score at t = {float(t):.3f}, coloured by curl",
    )
    report.save_figure(title, fig, "curl_2d")
