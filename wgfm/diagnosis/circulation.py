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

from ..diagnostics.kernels import FAMILIES, Circulation
from ..processes import AbstractProcess
from ..report import ClaimRow, Measurement, fmt
from ..typing import Field
from .claim import NO_CONTROLS, AbstractClaim, Controls, noised_levels, sweep_fields
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
    x0, tsj, xs = noised_levels(process, x0, ts, key=k_noise)
    pairs = (jnp.broadcast_to(x0, xs.shape), xs)
    kernel = Circulation(
        process, tuple(families), loop_points, bridge_steps, noisy_copies, noisy_points
    )
    per_field = sweep_fields(  # the same loops (same key) for every field; (n, L) arrays
        kernel,
        controls.fields(field),
        pairs,
        tsj,
        progress=f"loops, {label}",
        what="loop circulation values are",
        key=k_loop,
        batch_size=batch_size,
        mesh=mesh,
    )
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
        per_length = {k: np.median(v[2], 0) for k, v in res.items()}
        rows.append(_row(label, family, per_length, controls.control_name))
        if family in figures:
            figs.update(_figure(label, family, np.asarray(ts), res))
    return Measurement(rows, numbers, figs)


def _figure(label: str, family: str, ts: np.ndarray, res: dict) -> dict:
    """``{name: figure}`` of one family's ``|I / L|`` by level, every field's samples ``(n, L)``."""
    from ..figures import lines_by_level

    suffix, caption = CAPTIONS[family]
    fig = lines_by_level(
        ts,
        {k: v[2] for k, v in res.items()},
        "abs(I / L)",
        f"Circulation per length, {caption} ({label})",
    )
    return {f"circulation_{label}_{suffix}": fig}


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
