"""Claim 2 — the integral constraint: trained networks circulate around closed loops.

A gradient has zero circulation around every loop. We integrate the score implied by trained
networks around four loop families at every noise level — a circle in a random plane, the
authors' Brownian bridge from ``x_t`` back to itself (step 0.05), their pair rotation about the
clean point (``||x - alpha_t x0||`` fixed) and their cycle through noisy copies of one clean point
kept on the noise shell — and report raw ``I``, normalised ``I_norm`` and per-length ``I / L``.
Controls: the exact oracle score (zero up to quadrature error, which we show shrinks as the loop
is refined) and an untrained network.

:func:`measure_circulation` is the measurement on its own: any score field, a process and clean
samples in, rows, numbers and figures out (a pretrained network's field works the same way).
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PRNGKeyArray

from experiments.assets import Context
from experiments.config import MIXTURES, times_grid
from experiments.report import (
    ClaimRow,
    Measurement,
    Report,
    field_with_curl,
    fmt,
    level_bar,
    lines_by_level,
)
from wgfm.diagnostics import loops, noised_samples, require_finite, sweep
from wgfm.diagnostics.jacobian import curl_2d
from wgfm.processes import AbstractProcess

Field = Callable[[Array, Array], Array]
FAMILIES = ("circle", "bridge", "pair rotation", "noisy copies")
# family -> (figure-name suffix, caption) of its circulation-by-level figure.
CAPTIONS = {
    "circle": ("circle", "circles in random planes"),
    "bridge": ("bridge", "Brownian-bridge loops"),
    "pair rotation": ("pair", "pair rotations"),
    "noisy copies": ("noisy", "noisy-copy cycles"),
}


class Circulation(eqx.Module):
    """``{family: (|I|, |I_norm|, |I/L|)}`` of one loop per family through ``(x0, x_t)`` at
    time ``t``: all families' points in one evaluation of the field (one copy of a network in
    the compiled program instead of one per family)."""

    process: AbstractProcess
    families: tuple[str, ...] = eqx.field(static=True)
    num_points: int = eqx.field(static=True)  # circle and pair-rotation loops
    bridge_steps: int = eqx.field(static=True)
    noisy_copies: int = eqx.field(static=True)
    noisy_points: int = eqx.field(static=True)  # per segment of the noisy-copy cycle

    def __call__(self, field, x, t, *, key, checked: bool = True):
        x0, xt = x
        lps = [self.loop(fam, x0, xt, t, jax.random.fold_in(key, i))
               for i, fam in enumerate(self.families)]  # fmt: skip
        reps = loops.loop_reports(field, lps, t, checked=checked)
        return {fam: (jnp.abs(r.I), jnp.abs(r.I_norm), jnp.abs(r.I_over_L))
                for fam, r in zip(self.families, reps, strict=True)}  # fmt: skip

    def loop(self, family: str, x0, xt, t, key):
        p, n = self.process, self.num_points
        if family == "circle":
            q, _ = jnp.linalg.qr(jax.random.normal(key, (xt.size, 2), xt.dtype))
            radius = 0.5 * jnp.maximum(p.sigma(t), 0.1)
            u, v = q[:, 0].reshape(xt.shape), q[:, 1].reshape(xt.shape)
            return loops.circle(xt, u, v, radius, n)
        if family == "bridge":  # the authors' Brownian bridge from x_t back to itself
            return loops.brownian_bridge(xt, self.bridge_steps, 0.05, key=key)
        if family == "pair rotation":  # about the clean point: ||x - alpha_t x0|| fixed
            return loops.pair_rotation(xt, p.alpha(t) * x0, n, key=key)
        if family == "noisy copies":
            return loops.noisy_copy_cycle(p, x0, t, num_copies=self.noisy_copies,
                                          points_per_segment=self.noisy_points, key=key)  # fmt: skip
        raise ValueError(f"`families` must be among {FAMILIES}, got {family!r}.")


def measure_circulation(
    field: Field,
    process: AbstractProcess,
    x0: Array,
    ts,
    *,
    key: PRNGKeyArray,
    gradient: Field | None = None,
    untrained: Field | None = None,
    label: str = "model",
    control_name: str = "gradient control",
    families: tuple[str, ...] = FAMILIES,
    loop_points: int = 64,
    bridge_steps: int = 1000,
    noisy_copies: int = 10,
    noisy_points: int = 100,
    batch_size: int | None = None,
    figures: tuple[str, ...] = ("bridge",),
) -> Measurement:
    """Claim 2 on one score ``field``: its circulation around loops at every level of ``ts``.

    ``x0`` ``(n, *shape)`` are clean samples (vectors or images), noised once per level with
    ``process``; each family's loop passes through (or around) every noisy sample. Optional
    controls on the same loops: ``gradient`` (a field known to be a gradient, named
    ``control_name`` in the rows; its circulation is quadrature error) and ``untrained``.
    ``batch_size`` evaluates that many samples of a level at a time (large networks: every loop
    point is a field evaluation). ``figures`` lists the families plotted by level, as
    ``circulation_<label>_<suffix>``. Raises ``ValueError`` naming the first non-finite level
    and sample."""
    k_noise, k_loop = jax.random.split(key)
    x0 = jnp.asarray(x0)
    tsj = jnp.asarray(ts, x0.dtype)
    xs = noised_samples(process, x0, tsj, key=k_noise)
    pairs = (jnp.broadcast_to(x0, xs.shape), xs)
    diag = Circulation(process, tuple(families), loop_points, bridge_steps, noisy_copies,
                       noisy_points)  # fmt: skip
    fields = {"trained": field, "untrained": untrained, "oracle score": gradient}
    fields = {k: f for k, f in fields.items() if f is not None}
    per_field = {  # the same loops (same key) for every field; (n, L) arrays
        k: jax.tree.map(lambda v: np.asarray(v).T,
                        sweep(diag, f, pairs, tsj, key=k_loop, batch_size=batch_size,
                              checked=False, what="loop circulation values are",
                              progress=level_bar(f"loops, {label}, {k}", x0)).values)
        for k, f in fields.items()
    }  # fmt: skip
    numbers: dict = {"levels": np.asarray(ts)}
    rows, figs = [], {}
    for family in families:
        res = {k: v[family] for k, v in per_field.items()}
        numbers[family] = {
            k: {"median_abs_I": np.median(v[0], 0), "median_abs_I_norm": np.median(v[1], 0),
                "median_abs_I_over_L": np.median(v[2], 0)}
            for k, v in res.items()
        }  # fmt: skip
        rows.append(_row(label, family, {k: np.median(v[2], 0) for k, v in res.items()},
                         control_name))  # fmt: skip
        if family in figures:
            suffix, caption = CAPTIONS[family]
            figs[f"circulation_{label}_{suffix}"] = lines_by_level(
                np.asarray(ts), {k: v[2] for k, v in res.items()}, "abs(I / L)",
                f"Circulation per length, {caption} ({label})",
            )  # fmt: skip
    return Measurement(rows, numbers, figs)


def _row(label: str, family: str, med: dict, control_name: str) -> ClaimRow:
    """The verdict for one family from the median ``|I/L|`` per level of each field."""
    tr = med["trained"]
    untrained = f"; untrained {fmt(np.median(med['untrained']))}" if "untrained" in med else ""
    claim = f"{label}, {family}: trained circulation is clearly non-zero at every level"
    measured = f"median abs(I/L) {fmt(tr.min())}..{fmt(tr.max())}"
    if "oracle score" not in med:  # no gradient control: a fixed threshold instead
        return ClaimRow(claim, measured, f"no gradient control given{untrained}",
                        bool(np.all(tr > 1e-4)), "threshold 1e-4 at every level")  # fmt: skip
    orc = med["oracle score"]
    ratio = tr / np.maximum(orc, 1e-30)
    return ClaimRow(claim, measured, f"{control_name}: max {fmt(orc.max())}{untrained}",
                    bool(np.all(ratio > 10)), f"trained/control >= {fmt(ratio.min())}")  # fmt: skip


def run(ctx: Context, report: Report, title: str) -> None:
    sz = ctx.sizes
    numbers: dict = {"levels": times_grid(ctx.process, sz.num_levels)}  # image sets: fewer
    for data in ctx.datasets:
        image = data not in MIXTURES
        ts = times_grid(ctx.process, (sz.image_loop_levels if image else None) or sz.num_levels)
        n = (sz.image_loop_samples if image else None) or sz.num_diag_samples
        x0 = ctx.clean_samples(data, n, ctx.key(f"int-{data}"))
        m = measure_circulation(
            ctx.network(data).score(),
            ctx.process,
            x0,
            ts,
            key=ctx.key(f"loop-{data}"),
            gradient=ctx.oracle_score(data),
            untrained=ctx.network(data, steps=0).score(),
            label=data,
            control_name="Gaussian-fit score" if image else "oracle",
            loop_points=sz.loop_points[-1],
            bridge_steps=sz.bridge_steps,
            noisy_copies=sz.noisy_copies,
            noisy_points=sz.noisy_points,
            # A U-Net over (samples x ~1000 loop points) at once would need ~20 GB at the full
            # sizes, so image sets go a few samples at a time.
            batch_size=(4 if x0[0].size <= sz.max_exact_dim else 1) if image else None,
            figures=("noisy copies",) if data == "10d" else ("bridge",),
        )
        report.add_measurement(title, m)
        numbers[data] = m.numbers
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
        gx, gy, curl.reshape(gx.shape), v[:, 0].reshape(gx.shape), v[:, 1].reshape(gx.shape), lp,
        f"Trained 2D score at t = {float(t):.3f}, coloured by curl",
    )  # fmt: skip
    report.save_figure(title, fig, "curl_2d")
