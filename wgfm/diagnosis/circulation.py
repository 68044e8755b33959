"""Claim 2, the integral constraint: do the score's loop integrals vanish?

:func:`measure_circulation` takes any score field, a process and clean samples, noises the
samples at every level and integrates the field around the loop families of
:class:`wgfm.diagnostics.kernels.Circulation` through every noisy sample, beside the optional
controls on the same loops; :class:`LoopCirculation` is the claim in
:data:`wgfm.diagnosis.registry.CLAIMS`, which ``wgfm diagnose`` and the reproduction's claim 2
both measure with.
"""

from __future__ import annotations

from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PRNGKeyArray

from ..diagnostics import noised_samples, sweep
from ..diagnostics.kernels import FAMILIES, Circulation
from ..processes import AbstractProcess
from ..report import ClaimRow, Measurement, fmt, level_bar
from ..typing import Field
from .claim import NO_CONTROLS, AbstractClaim, ClaimInputs, Controls, claim_fields, noised_points
from .sizes import DiagnoseSizes


class LoopCirculation(AbstractClaim):
    """Claim 2: the circulation of the score around loops at every noise level
    (:func:`measure_circulation`). ``figures``: the loop families plotted by level."""

    number: ClassVar[int] = 2
    key: ClassVar[str] = "integral"
    title: ClassVar[str] = "2. Integral constraint: loop circulation"
    figures: tuple[str, ...] = ("bridge",)

    def num_levels(self, sizes: DiagnoseSizes) -> int:
        return sizes.loop_levels

    def num_samples(self, sizes: DiagnoseSizes) -> int:
        return sizes.loop_samples

    def options(self, sizes: DiagnoseSizes) -> dict[str, Any]:
        return dict(
            loop_points=sizes.loop_points,
            bridge_steps=sizes.bridge_steps,
            noisy_copies=sizes.noisy_copies,
            noisy_points=sizes.noisy_points,
            batch_size=sizes.loop_batch_size,
            figures=self.figures,
        )

    def measurement(self, *args, **kwargs) -> Measurement:
        return measure_circulation(*args, **kwargs)

    def level_values(self, inputs: ClaimInputs, plan, levels):
        x = inputs
        xs, ts = noised_points(x.process, x.x0, self.num_levels(x.sizes), x.key)
        opts = self.options(x.sizes)
        del opts["figures"]
        for i in levels:
            yield (
                i,
                circulation_values(
                    claim_fields(x.score, x.controls),
                    x.process,
                    jnp.asarray(x.x0),
                    xs,
                    ts,
                    key=jax.random.split(x.key)[1],
                    families=FAMILIES,
                    mesh=x.mesh,
                    select=[i],
                    **opts,
                ),
            )

    def summarize(self, values, plan, sizes, *, ts, label="model", control_name="", image=True):
        return summarize_circulation(
            values,
            ts,
            label=label,
            control_name=control_name,
            families=FAMILIES,
            figures=self.figures,
        )


# family -> (figure-name suffix, caption) of its circulation-by-level figure.
CAPTIONS = {
    "circle": ("circle", "circles in random planes"),
    "bridge": ("bridge", "Brownian-bridge loops"),
    "pair rotation": ("pair", "pair rotations"),
    "noisy copies": ("noisy", "noisy-copy cycles"),
}


def measure_circulation(
    field: Field,
    process: AbstractProcess,
    x0: Array,
    ts,
    *,
    key: PRNGKeyArray,
    controls: Controls = NO_CONTROLS,
    label: str = "model",
    families: tuple[str, ...] = FAMILIES,
    loop_points: int = 64,
    bridge_steps: int = 1000,
    noisy_copies: int = 10,
    noisy_points: int = 100,
    batch_size: int | None = None,
    figures: tuple[str, ...] = ("bridge",),
    mesh=None,
) -> Measurement:
    """Claim 2 on one score ``field``: its circulation around loops at every level of ``ts``.

    The clean samples are noised once per level; each family's loop passes through (or around)
    every noisy sample, and the controls are integrated around the same loops. Each loop gives
    the circulation ``I``, ``I_norm`` (of the unit field) and ``I / L`` (per length), which
    vanish for a gradient up to quadrature error (docs/design.md §1).

    Args:
        field: the score field ``(x (*shape), t ()) -> (*shape)``.
        process: the forward process that noises ``x0``.
        x0: clean samples, shape ``(n, *shape)`` (vectors or images).
        ts: noise levels, shape ``(L,)``.
        key: noise and loops.
        controls: the fields measured beside ``field`` (:class:`Controls`): a gradient (its
            circulation is quadrature error), the same architecture untrained, and how the
            rows name the first.
        label: the field's name in rows and figure names.
        families: the loop families (:data:`wgfm.diagnostics.kernels.FAMILIES`).
        loop_points: points of the circle and pair-rotation loops.
        bridge_steps: Brownian-bridge steps.
        noisy_copies: copies of the noisy-copy cycle.
        noisy_points: points per segment of that cycle.
        batch_size: samples of a level at a time (None: all; large networks: every loop point
            is a field evaluation).
        figures: the families plotted by level, as ``circulation_<label>_<suffix>``.
        mesh: a ``jax.sharding.Mesh`` splitting the samples over its devices (same numbers).

    Returns:
        A :class:`wgfm.report.Measurement`: a row per family, per family and field the
        per-level medians ``(L,)`` of ``|I|``, ``|I_norm|`` and ``|I / L|``, the figures.

    Raises:
        ValueError: naming the first non-finite level and sample, or an unknown family.
    """
    k_noise, k_loop = jax.random.split(key)
    x0 = jnp.asarray(x0)
    tsj = jnp.asarray(ts, x0.dtype)
    xs = noised_samples(process, x0, tsj, key=k_noise)
    opts = dict(
        loop_points=loop_points,
        bridge_steps=bridge_steps,
        noisy_copies=noisy_copies,
        noisy_points=noisy_points,
    )
    fields = claim_fields(field, controls)
    per_field = circulation_values(
        fields,
        process,
        x0,
        xs,
        tsj,
        key=k_loop,
        families=families,
        batch_size=batch_size,
        mesh=mesh,
        label=label,
        **opts,
    )
    return summarize_circulation(
        per_field,
        np.asarray(ts),
        label=label,
        control_name=controls.control_name,
        families=families,
        figures=figures,
    )


def circulation_values(
    fields: dict[str, Field],
    process: AbstractProcess,
    x0: Array,
    xs: Array,
    ts: Array,
    *,
    key: PRNGKeyArray,
    families: tuple[str, ...],
    loop_points: int,
    bridge_steps: int,
    noisy_copies: int,
    noisy_points: int,
    batch_size: int | None,
    mesh=None,
    select=None,
    label: str = "model",
) -> dict[str, dict[str, tuple[np.ndarray, ...]]]:
    """Claim 2's per-sample values of each field, per family ``(|I|, |I_norm|, |I / L|)``,
    each ``(n, L)`` (``(n, len(select))`` at the levels ``select`` only, as
    :func:`wgfm.diagnostics.sweep` takes it), around the loops through the noised copies
    ``xs`` ``(L, n, ...)`` of the clean ``x0`` ``(n, ...)``. ``key``: the loops, the same for
    every field."""
    pairs = (jnp.broadcast_to(x0, xs.shape), xs)
    diag = Circulation(
        process, tuple(families), loop_points, bridge_steps, noisy_copies, noisy_points
    )
    return {
        k: jax.tree.map(
            lambda v: np.asarray(v).T,
            sweep(
                diag,
                f,
                pairs,
                ts,
                key=key,
                mesh=mesh,
                batch_size=batch_size,
                checked=False,
                what="loop circulation values are",
                progress=None if select is not None else level_bar(f"loops, {label}, {k}", x0),
                select=select,
            ).values,
        )
        for k, f in fields.items()
    }


def summarize_circulation(
    per_field: dict[str, dict[str, tuple[np.ndarray, ...]]],
    ts: np.ndarray,
    *,
    label: str,
    control_name: str,
    families: tuple[str, ...],
    figures: tuple[str, ...],
) -> Measurement:
    """Claim 2's rows, numbers (per family and field the per-level medians) and figures from
    :func:`circulation_values` ``per_field`` at every level of ``ts`` ``(L,)``."""
    from ..figures import lines_by_level

    numbers: dict = {"levels": np.asarray(ts)}
    rows, figs = [], {}
    for family in families:
        res = {k: v[family] for k, v in per_field.items()}
        numbers[family] = {
            k: {
                "median_abs_I": np.median(v[0], 0),
                "median_abs_I_norm": np.median(v[1], 0),
                "median_abs_I_over_L": np.median(v[2], 0),
            }
            for k, v in res.items()
        }
        rows.append(
            _row(label, family, {k: np.median(v[2], 0) for k, v in res.items()}, control_name)
        )
        if family in figures:
            suffix, caption = CAPTIONS[family]
            figs[f"circulation_{label}_{suffix}"] = lines_by_level(
                np.asarray(ts),
                {k: v[2] for k, v in res.items()},
                "abs(I / L)",
                f"Circulation per length, {caption} ({label})",
            )
    return Measurement(rows, numbers, figs)


def _row(label: str, family: str, med: dict, control_name: str) -> ClaimRow:
    """The verdict for one family from the median ``|I/L|`` per level of each field."""
    tr = med["trained"]
    untrained = f"; untrained {fmt(np.median(med['untrained']))}" if "untrained" in med else ""
    claim = f"{label}, {family}: trained circulation is clearly non-zero at every level"
    measured = f"median abs(I/L) {fmt(tr.min())}..{fmt(tr.max())}"
    if "oracle score" not in med:  # no gradient control: a fixed threshold instead
        return ClaimRow(
            claim,
            measured,
            f"no gradient control given{untrained}",
            bool(np.all(tr > 1e-4)),
            "threshold 1e-4 at every level",
        )
    orc = med["oracle score"]
    ratio = tr / np.maximum(orc, 1e-30)
    return ClaimRow(
        claim,
        measured,
        f"{control_name}: max {fmt(orc.max())}{untrained}",
        bool(np.all(ratio > 10)),
        f"trained/control >= {fmt(ratio.min())}",
    )
