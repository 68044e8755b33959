"""What a diagnostic of :func:`wgfm.diagnose` is: an :class:`AbstractClaim`.

A claim has a number (the paper's), a key (its section of results.json), a title (its section
of REPORT.md), the sizes it reads (how many noise levels and clean images), and a measurement
of one score field beside its controls on the same points, whose rows are its verdicts and
whose figures are its own. :data:`wgfm.diagnosis.registry.CLAIMS` lists them; the diagnosis,
the ``wgfm diagnose`` command and the reproduction's claims 1 and 2 iterate that registry, so
a new diagnostic is one module holding its subclass plus one entry there (docs/design.md §2).
A measurement takes its points from :func:`noised_levels` and runs its kernel on the field and
each of its :class:`Controls` with :func:`sweep_fields`, the same points and keys for all.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PRNGKeyArray

from ..diagnostics import noised_samples, sweep, times_grid
from ..processes import AbstractProcess
from ..report import Measurement, level_bar
from ..typing import Field
from .sizes import DiagnoseSizes


@dataclasses.dataclass(frozen=True)
class Controls:
    """The score fields a claim measures beside the diagnosed one, on the same points; either may
    be None.

    Attributes:
        gradient: a field known to be a gradient on the data's scale (the exact score, or
            :func:`wgfm.diagnostics.controls.gaussian_fit_score`).
        untrained: the same architecture untrained.
        control_name: how the rows name ``gradient``.
    """

    gradient: Field | None = None
    untrained: Field | None = None
    control_name: str = "gradient control"

    def fields(self, score: Field) -> dict[str, Field]:
        """``score`` and the controls given, under their names in the numbers.

        Args:
            score: the diagnosed score field.

        Returns:
            ``{"trained": score, "untrained": ..., "oracle score": gradient}``, without the
            controls that are None.
        """
        fields = {"trained": score, "untrained": self.untrained, "oracle score": self.gradient}
        return {k: f for k, f in fields.items() if f is not None}


NO_CONTROLS = Controls()


def noised_levels(
    process: AbstractProcess, x0: Array, ts, *, key: PRNGKeyArray
) -> tuple[Array, Array, Array]:
    """The points a claim measures: the clean samples noised once per level.

    Args:
        process: the forward process.
        x0: clean samples, shape ``(n, *shape)``.
        ts: noise levels, shape ``(L,)``.
        key: the noise.

    Returns:
        ``(x0, ts, xs)``: ``x0`` as a JAX array, ``ts`` in its dtype and the noisy samples
        ``xs``, shape ``(L, n, *shape)`` (the same ``x0`` at every level).
    """
    x0 = jnp.asarray(x0)
    ts = jnp.asarray(ts, x0.dtype)
    return x0, ts, noised_samples(process, x0, ts, key=key)


def sweep_fields(
    kernel, fields: dict[str, Field], points, ts: Array, *, progress: str, what: str, **kwargs
) -> dict[str, Any]:
    """One unchecked :func:`wgfm.diagnostics.sweep` of ``kernel`` per field, on the same points
    with the same ``key`` (the same coordinates, probes and loops for every field).

    Args:
        kernel: the per-sample measurement (:mod:`wgfm.diagnostics.kernels`).
        fields: the fields by name (:meth:`Controls.fields`).
        points: the samples, shape ``(L, n, *shape)``, or a tuple of such arrays.
        ts: noise levels, shape ``(L,)``.
        progress: what the progress bar of an image sweep says, before the field's name.
        what: the values' name in the error naming a non-finite one.
        **kwargs: :func:`wgfm.diagnostics.sweep`'s ``key``, ``batch_size`` and ``mesh``.

    Returns:
        Per field the kernel's values (a PyTree), each array samples first, ``(n, L)``.
    """
    x = jax.tree.leaves(points)[0]
    return {
        k: jax.tree.map(
            lambda v: np.asarray(v).T,
            sweep(
                kernel,
                f,
                points,
                ts,
                checked=False,
                what=what,
                progress=level_bar(f"{progress}, {k}", x[0]),  # x[0]: shaped like x0
                **kwargs,
            ).values,
        )
        for k, f in fields.items()
    }


class AbstractClaim(eqx.Module):
    """One diagnostic: its identity, the sizes it reads and its measurement.

    Fields of a subclass are options of its measurement that are not sizes (which figures,
    which extra checks); the registry holds each claim with its defaults."""

    number: eqx.AbstractClassVar[int]  # the paper's claim; also names the claim's key streams
    key: eqx.AbstractClassVar[str]  # results.json: numbers[key][label]
    title: eqx.AbstractClassVar[str]  # REPORT.md section

    @abc.abstractmethod
    def num_levels(self, sizes: DiagnoseSizes) -> int:
        """Noise levels this claim measures.

        Args:
            sizes: the diagnosis's sizes.

        Returns:
            ``L``, the number of levels (:func:`wgfm.diagnostics.times_grid`'s).
        """

    @abc.abstractmethod
    def num_samples(self, sizes: DiagnoseSizes) -> int:
        """Clean images per level this claim measures.

        Args:
            sizes: the diagnosis's sizes.

        Returns:
            ``n``, the number of clean images.
        """

    @abc.abstractmethod
    def options(self, sizes: DiagnoseSizes) -> dict[str, Any]:
        """The measurement's keyword arguments that ``sizes`` (and this claim's fields) set.

        Args:
            sizes: the diagnosis's sizes.

        Returns:
            ``{argument: value}`` for :meth:`measurement`, beyond the shared ones.
        """

    @abc.abstractmethod
    def measurement(self, *args, **kwargs) -> Measurement:
        """The claim's measurement function, ``measure_<name>(field, process, x0, ts, *, key,
        controls, label, mesh, **options)`` (:func:`wgfm.diagnosis.measure_asymmetry`).

        Args:
            *args: ``(field, process, x0, ts)``.
            **kwargs: ``key``, ``controls``, ``label``, ``mesh`` and :meth:`options`.

        Returns:
            Its :class:`wgfm.report.Measurement`.
        """

    def measure(
        self,
        score: Field,
        process: AbstractProcess,
        x0: Array,
        sizes: DiagnoseSizes,
        *,
        key: PRNGKeyArray,
        controls: Controls = NO_CONTROLS,
        label: str = "model",
        mesh=None,
    ) -> Measurement:
        """The claim on ``score`` at :func:`wgfm.diagnostics.times_grid`'s ``num_levels(sizes)``
        levels of ``process``.

        Args:
            score: the score field ``(x (*shape), t ()) -> (*shape)`` diagnosed.
            process: the forward process that noises ``x0``.
            x0: clean samples, shape ``(num_samples(sizes), *shape)``.
            sizes: the diagnosis's sizes.
            key: the claim's key (noise, loops, probes).
            controls: the score fields measured beside ``score`` on the same points.
            label: the field's name in rows and figure names.
            mesh: a ``jax.sharding.Mesh`` splitting the samples over its devices, or None.

        Returns:
            A :class:`wgfm.report.Measurement`: verdict rows, numbers (per-level medians of the
            field and of each control) and figures (name -> matplotlib figure).
        """
        return self.measurement(
            score,
            process,
            x0,
            times_grid(process, self.num_levels(sizes)),
            key=key,
            controls=controls,
            label=label,
            mesh=mesh,
            **self.options(sizes),
        )

    def header(self, numbers: dict[str, Any]) -> dict[str, str]:
        """Report-header lines from this claim's numbers (default: none).

        Args:
            numbers: the ``numbers`` of this claim's measurement.

        Returns:
            ``{header name: line}``.
        """
        return {}

    def units(self, sizes: DiagnoseSizes) -> int:
        """Images x levels this claim measures (each for the field and its controls): what its run
        time scales with.

        Args:
            sizes: the diagnosis's sizes.

        Returns:
            ``num_levels(sizes) * num_samples(sizes)``.
        """
        return self.num_levels(sizes) * self.num_samples(sizes)
