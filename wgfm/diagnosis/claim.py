"""What a diagnostic of :func:`wgfm.diagnose` is: an :class:`AbstractClaim`.

A claim has a number (the paper's), a key (its section of results.json), a title (its section
of REPORT.md), the sizes it reads (how many noise levels and clean images), and a measurement
of one score field beside its controls on the same points, whose rows are its verdicts and
whose figures are its own. :data:`wgfm.diagnosis.registry.CLAIMS` lists them; the diagnosis,
the ``wgfm diagnose`` command and the reproduction's claims 1 and 2 iterate that registry, so
a new diagnostic is one module holding its subclass plus one entry there (docs/design.md §2).
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PRNGKeyArray

from ..diagnostics import noised_samples, times_grid
from ..processes import AbstractProcess
from ..report import Measurement
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


NO_CONTROLS = Controls()


@dataclasses.dataclass(frozen=True)
class ClaimInputs:
    """What a claim is measured on, as :meth:`AbstractClaim.measure` takes it: the score field
    ``(x (*shape), t ()) -> (*shape)``, its forward process, the clean samples ``x0``
    ``(num_samples(sizes), *shape)``, the sizes, the claim's key, the controls and a
    ``jax.sharding.Mesh`` splitting the samples over its devices (or None)."""

    score: Field
    process: AbstractProcess
    x0: Array
    sizes: DiagnoseSizes
    key: PRNGKeyArray
    controls: Controls = NO_CONTROLS
    mesh: Any = None


def noised_points(
    process: AbstractProcess, x0: Array, num_levels: int, key: PRNGKeyArray
) -> tuple[Array, Array]:
    """``(xs (L, n, ...), ts (L,))``: the noised copies of ``x0`` that a claim's measurement
    with ``key`` draws (from the first half of ``jax.random.split(key)``) at
    :func:`wgfm.diagnostics.times_grid`'s ``num_levels`` levels of ``process``."""
    x0 = jnp.asarray(x0)
    ts = jnp.asarray(times_grid(process, num_levels), x0.dtype)
    return noised_samples(process, x0, ts, key=jax.random.split(key)[0]), ts


def claim_fields(score: Field, controls: Controls) -> dict[str, Field]:
    """The fields a claim measures on the same points, by their names in its numbers:
    ``"trained"`` (``score``), ``"untrained"`` and ``"oracle score"`` (the gradient control)
    where given."""
    fields = {"trained": score, "untrained": controls.untrained, "oracle score": controls.gradient}
    return {k: f for k, f in fields.items() if f is not None}


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

    def plan(self, inputs: ClaimInputs) -> dict[str, Any]:
        """The choices made once per run before any level is measured, as JSON values (claim 1:
        exact Jacobians or probes, from a timed JVP). A run split over processes makes them once and
        every process reads them back, so all levels are measured alike.

        Args:
            inputs: what the claim is measured on (:class:`ClaimInputs`).

        Returns:
            ``{name: JSON value}`` (default: none).
        """
        return {}

    def level_values(
        self, inputs: ClaimInputs, plan: dict[str, Any], levels: Sequence[int]
    ) -> Iterator[tuple[int, Any]]:
        """The claim's per-sample values one level at a time. The noise, loops and probes of a level
        are those :meth:`measure` draws for it, so :meth:`summarize` of all levels' values is the
        whole claim; ``wgfm diagnose --shard`` measures its levels this way.

        Args:
            inputs: what the claim is measured on (:class:`ClaimInputs`).
            plan: :meth:`plan`'s choices.
            levels: indices into the claim's grid of ``num_levels(sizes)`` levels.

        Returns:
            An iterator of ``(level, values)``, ``values`` a PyTree (dicts and tuples) of arrays
            ``(num_samples(sizes), 1)``.
        """
        raise NotImplementedError(f"claim {self.number} is not measured level by level.")

    def summarize(
        self,
        values: Any,
        plan: dict[str, Any],
        sizes: DiagnoseSizes,
        *,
        ts: np.ndarray,
        label: str = "model",
        control_name: str = "gradient control",
        image: bool = True,
    ) -> Measurement:
        """The claim's measurement from every level's :meth:`level_values`.

        Args:
            values: the levels' values, their arrays joined along the level axis,
                ``(num_samples, L)``.
            plan: :meth:`plan`'s choices.
            sizes: the diagnosis's sizes.
            ts: the levels, shape ``(L,)``.
            label: the field's name in rows and figure names.
            control_name: how the rows name the gradient control.
            image: whether the samples were images.

        Returns:
            The :class:`wgfm.report.Measurement`, as :meth:`measure` returns it.
        """
        raise NotImplementedError(f"claim {self.number} is not measured level by level.")

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
