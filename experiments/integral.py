"""Claim 2 — the integral constraint: trained networks circulate around closed loops.

A gradient has zero circulation around every loop. We integrate the score implied by trained
networks around four loop families at every noise level — a circle in a random plane, the
authors' Brownian bridge from ``x_t`` back to itself (step 0.05), their pair rotation about the
clean point (``||x - alpha_t x0||`` fixed) and their cycle through noisy copies of one clean point
kept on the noise shell — and report raw ``I``, normalised ``I_norm`` and per-length ``I / L``.
Controls: the exact oracle score (zero up to quadrature error, which we show shrinks as the loop
is refined) and an untrained network.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from experiments.common import (
    BY_SAMPLE,
    Context,
    clean_and_noised,
    over_levels,
    over_samples,
    require_finite,
    times_grid,
)
from experiments.config import MIXTURES
from experiments.report import ClaimRow, Report, field_with_curl, fmt, lines_by_level
from wgfm.diagnostics import loops
from wgfm.diagnostics.jacobian import curl_2d

FAMILIES = ("circle", "bridge", "pair rotation", "noisy copies")
# (data kind, family) -> (figure suffix, caption) of the circulation-by-level figures.
FIGURES = {
    ("2d", "bridge"): ("bridge", "Brownian-bridge loops"),
    ("10d", "noisy copies"): ("noisy", "noisy-copy cycles"),
    ("image", "bridge"): ("bridge", "Brownian-bridge loops"),
}


def _loop(family: str, ctx: Context, x0, xt, t, key):
    sz, p = ctx.sizes, ctx.process
    n = sz.loop_points[-1]
    if family == "circle":
        q, _ = jnp.linalg.qr(jax.random.normal(key, (xt.size, 2), xt.dtype))
        radius = 0.5 * jnp.maximum(p.sigma(t), 0.1)
        u, v = q[:, 0].reshape(xt.shape), q[:, 1].reshape(xt.shape)
        return loops.circle(xt, u, v, radius, n)
    if family == "bridge":
        return loops.brownian_bridge(xt, sz.bridge_steps, 0.05, key=key)
    if family == "pair rotation":
        return loops.pair_rotation(xt, p.alpha(t) * x0, n, key=key)
    return loops.noisy_copy_cycle(
        p, x0, t, num_copies=sz.noisy_copies, points_per_segment=sz.noisy_points, key=key
    )


def circulation_sweep(ctx: Context, families: tuple[str, ...] = FAMILIES, batch: int | None = None):
    """``(field, x0s, xts, ts, key) -> {family: (|I|, |I_norm|, |I/L|)}``, each ``(n, L)``
    (NumPy; raises on a non-finite value), from the program of :func:`circulation_program`."""
    program = circulation_program(ctx, families, batch)

    def sweep(field, x0s, xts, ts, key):
        out = program(field, x0s, xts, ts, key)
        return require_finite(out, "loop circulation", BY_SAMPLE)

    return sweep


def circulation_program(
    ctx: Context, families: tuple[str, ...] = FAMILIES, batch: int | None = None
):
    """The compiled sweep behind :func:`circulation_sweep`, with no host check (so that JAX's
    persistent cache keeps it): all families in one compilation per field structure. Samples
    are vmapped, or taken ``batch`` at a time (large images: every loop point is a network
    evaluation)."""

    @eqx.filter_jit
    def sweep(field, x0s, xts, ts, key):
        def one(x0, xt, t, k):
            # All families' points in one field evaluation: one copy of the network in the
            # compiled program instead of one per family (for the small fields here the loop
            # constructions, not the field, dominate compile time: 31.5 -> 29.7 s over 6).
            lps = [_loop(fam, ctx, x0, xt, t, jax.random.fold_in(k, i))
                   for i, fam in enumerate(families)]  # fmt: skip
            reps = loops.loop_reports(field, lps, t, checked=False)  # checked on the host
            return {fam: (jnp.abs(r.I), jnp.abs(r.I_norm), jnp.abs(r.I_over_L))
                    for fam, r in zip(families, reps, strict=True)}  # fmt: skip

        keys = jax.random.split(key, xts.shape[:2])

        def level(a, b, t, k):
            if batch is None:
                return jax.vmap(lambda x, y, kk: one(x, y, t, kk))(a, b, k)
            return over_samples(lambda x, y, kk: one(x, y, t, kk), batch, a, b, k)

        out = over_levels(level, x0s, xts, ts, keys)
        return jax.tree.map(lambda o: o.T, out)

    return sweep


def run(ctx: Context, report: Report, title: str) -> None:
    sz = ctx.sizes
    numbers: dict = {"levels": times_grid(ctx.process, sz.num_levels)}  # image sets: fewer
    for data in ctx.datasets:
        image = data not in MIXTURES
        ts = times_grid(ctx.process, (sz.image_loop_levels if image else None) or sz.num_levels)
        tsj = jnp.asarray(ts, jnp.float32)
        n = (sz.image_loop_samples if image else None) or sz.num_diag_samples
        x0, xt = clean_and_noised(ctx, data, ts, n, ctx.key(f"int-{data}"))
        # Every loop point is a network evaluation: a U-Net over (samples x ~1000 points) at
        # once would need ~20 GB at the full sizes, so image sets go a few samples at a time.
        batch = (4 if x0[0, 0].size <= sz.max_exact_dim else 1) if image else None
        fields = {
            "trained": ctx.network(data).score(),
            "untrained": ctx.network(data, steps=0).score(),
            "oracle score": ctx.oracle_score(data),
        }
        numbers[data] = {"levels": ts}
        sweep = circulation_sweep(ctx, batch=batch)
        key = ctx.key(f"loop-{data}")  # the same loops for every field
        per_field = {k: sweep(f, x0, xt, tsj, key) for k, f in fields.items()}
        for family in FAMILIES:
            res = {k: list(v[family]) for k, v in per_field.items()}
            numbers[data][family] = {
                k: {"median_abs_I": np.median(v[0], 0), "median_abs_I_norm": np.median(v[1], 0),
                    "median_abs_I_over_L": np.median(v[2], 0)}
                for k, v in res.items()
            }  # fmt: skip
            tr, orc = np.median(res["trained"][2], 0), np.median(res["oracle score"][2], 0)
            ratio = tr / np.maximum(orc, 1e-30)
            control = "Gaussian-fit score" if image else "oracle"
            report.add(
                title,
                ClaimRow(
                    f"{data}, {family}: trained circulation is clearly non-zero at every level",
                    f"median abs(I/L) {fmt(tr.min())}..{fmt(tr.max())}",
                    f"{control}: max {fmt(orc.max())}; untrained "
                    f"{fmt(np.median(res['untrained'][2]))}",
                    bool(np.all(ratio > 10)),
                    f"trained/control >= {fmt(ratio.min())}",
                ),
            )
            fig_name = FIGURES.get(("image" if image else data, family))
            if fig_name is not None:
                fig = lines_by_level(
                    ts, {k: v[2] for k, v in res.items()}, "abs(I / L)",
                    f"Circulation per length, {fig_name[1]} ({data})",
                )  # fmt: skip
                report.save_figure(title, fig, f"circulation_{data}_{fig_name[0]}")
    if "2d" in ctx.datasets:
        _oracle_convergence(ctx, report, title, numbers)
        _curl_figure(ctx, report, title)
    report.numbers["integral"] = numbers


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
        paths = jax.vmap(lambda pth: loops.refine(pth, f))(base) if f > 1 else base
        meds.append(float(np.median(require_finite(circ(field, paths), "oracle circulation"))))
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

    curl, v = require_finite(evaluate(field, pts), "curl of the trained 2D score", ("point",))
    x0 = jnp.asarray([3.0, 0.0], jnp.float32)
    lp = [
        np.asarray(loops.circle(x0, jnp.array([1.0, 0.0]), jnp.array([0.0, 1.0]), 1.0, 64)),
        np.asarray(loops.brownian_bridge(jnp.array([0.0, 3.0]), 200, 0.1, key=ctx.key("fig"))),
    ]
    fig = field_with_curl(
        gx, gy, curl.reshape(gx.shape), v[:, 0].reshape(gx.shape), v[:, 1].reshape(gx.shape), lp,
        f"Trained 2D score at t = {float(t):.3f}, coloured by curl",
    )  # fmt: skip
    report.save_figure(title, fig, "curl_2d")
