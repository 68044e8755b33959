"""``wgfm.diagnose``: the paper's two tests on any field, beside both controls, as one object.

``diagnose(field, process, images, key=...)`` measures claim 1 (Jacobian asymmetry at every
noise level) and claim 2 (circulation around the loop families) of the score implied by
``field`` on noised copies of the clean ``images``, beside the exact score of a Gaussian fitted
to the images (a true gradient on the data's scale) and the same architecture untrained. The
:class:`Diagnosis` it returns holds the verdict rows, the per-level numbers and the figures,
and renders them (:meth:`Diagnosis.to_markdown`, :meth:`Diagnosis.to_json`,
:meth:`Diagnosis.save`).
"""

from __future__ import annotations

import dataclasses
import json
import zlib
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PRNGKeyArray

from ..diagnostics.controls import gaussian_fit_score
from ..diagnostics.gaussian_fit import subsample_for_fit
from ..fields import as_field
from ..pretrained import AbstractPretrainedField, CallableField
from ..processes import VP, AbstractProcess
from ..report import ClaimRow, Measurement, Report, jsonable, resources, usage_now
from ..typing import Field, Kind
from .claim import AbstractClaim, Controls
from .registry import CLAIMS, claim_of_title
from .sizes import QUICK, DiagnoseSizes


def measured_indices(
    key: PRNGKeyArray, claim: AbstractClaim, num_images: int, n: int
) -> np.ndarray:
    """The indices of the clean images :func:`diagnose` with ``key`` measures in ``claim``.

    Args:
        key: the diagnosis's key.
        claim: a registered claim (its stream is named by its number).
        num_images: clean images given.
        n: images the claim measures, at most ``num_images``.

    Returns:
        Sorted indices, shape ``(n,)``, drawn without replacement from a stream of the claim's.
    """
    sub = jax.random.fold_in(key, zlib.crc32(f"x0-{claim.number}".encode()))
    return np.sort(np.asarray(jax.random.choice(sub, num_images, (n,), replace=False)))


@dataclasses.dataclass(frozen=True)
class Diagnosis:
    """What :func:`diagnose` measured, ready to render.

    Attributes:
        label: the field's name in rows and figures.
        measurements: per claim title its :class:`wgfm.report.Measurement`: the verdict rows,
            the numbers behind them (per-level medians of the network and of each control) and
            the figures (name -> ``matplotlib.figure.Figure``, or the path under the output
            directory of one already written there).
        header: the report's header lines.
        notes: per claim title an optional note under its table.
        timings: per claim title its run time in seconds.
        resources: what the run used (:func:`wgfm.report.resources`): wall and CPU seconds,
            peak memory; results.json records it.
    """

    label: str
    measurements: dict[str, Measurement]
    header: dict[str, Any] = dataclasses.field(default_factory=dict)
    notes: dict[str, str] = dataclasses.field(default_factory=dict)
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    resources: dict[str, Any] | None = None

    @property
    def rows(self) -> dict[str, list[ClaimRow]]:
        return {title: list(m.rows) for title, m in self.measurements.items()}

    @property
    def numbers(self) -> dict[str, dict]:
        """``{claim key: numbers}`` (``"differential"``, ``"integral"``), as in results.json."""
        return {claim_of_title(t).key: m.numbers for t, m in self.measurements.items()}

    @property
    def passed(self) -> bool:
        """Whether every verdict row holds."""
        return all(r.verdict for m in self.measurements.values() for r in m.rows)

    def report(self, out: Path | str) -> Report:
        """A :class:`wgfm.report.Report` writing under ``out``, its figures saved there now.

        Args:
            out: the output directory.

        Returns:
            The report (:meth:`wgfm.report.Report.write` writes REPORT.md and results.json).
        """
        report = Report(Path(out), title=f"wgfm diagnose report: {self.label}", used=self.resources)
        for title, m in self.measurements.items():
            written = {k: f for k, f in m.figures.items() if isinstance(f, str)}
            report.add_measurement(title, dataclasses.replace(m, figures={}))
            for name, fig in m.figures.items():
                if name in written:
                    report.figures.setdefault(title, []).append(fig)
                else:
                    report.save_figure(title, fig, name)
            report.numbers.setdefault(claim_of_title(title).key, {})[self.label] = m.numbers
            if title in self.notes:
                report.notes[title] = self.notes[title]
            if title in self.timings:
                report.timings[title] = self.timings[title]
        return report

    def to_markdown(self) -> str:
        """The report as Markdown: the header, then per claim its table (figures named).

        Returns:
            The Markdown text.
        """
        report = Report(Path("."), title=f"wgfm diagnose report: {self.label}")
        for title, m in self.measurements.items():
            report.rows[title] = list(m.rows)
            report.figures[title] = [
                f if isinstance(f, str) else f"figures/{name}.png" for name, f in m.figures.items()
            ]
        return report.markdown(self.header)

    def to_json(self) -> str:
        """Rows and numbers as JSON (arrays as lists, non-finite floats as strings).

        Returns:
            The JSON text: label, header, claims (rows), numbers and whether every verdict holds.
        """
        return json.dumps(
            jsonable(
                {
                    "label": self.label,
                    "header": self.header,
                    "claims": {
                        t: [dataclasses.asdict(r) for r in rs] for t, rs in self.rows.items()
                    },
                    "numbers": self.numbers,
                    "all_verdicts_pass": self.passed,
                }
            ),
            indent=1,
        )

    def save(self, out: Path | str) -> tuple[Path, Path]:
        """Write REPORT.md, results.json and figures/*.png under ``out``.

        Args:
            out: the output directory (created if needed).

        Returns:
            The paths of REPORT.md and results.json.
        """
        return self.report(out).write(self.header)


def diagnose(
    field: Field,
    process: AbstractProcess,
    images,
    *,
    key: PRNGKeyArray,
    kind: Kind | None = None,
    sizes: DiagnoseSizes = QUICK,
    untrained: Field | None = None,
    claims: tuple[str, ...] = tuple(CLAIMS),
    label: str = "model",
    devices: int | None = None,
    mesh=None,
) -> Diagnosis:
    """The registered claims (:data:`wgfm.diagnosis.registry.CLAIMS`) on ``field``, beside the
    Gaussian-fit and untrained controls.

    The field (any kind) is converted to its score and measured at the noise levels of
    ``sizes`` on noised copies of the clean ``images``. Controls on the same points: the exact
    score of the Gaussian fitted to ``images`` (a random subset of at most 10,000 and 512 MiB
    of them: :func:`wgfm.diagnostics.gaussian_fit.fit_sample_cap`), and the same architecture
    untrained. Keys derive from ``key`` by name, so one claim run alone gives the numbers it
    gives in a full diagnosis. Claim 1's exact-or-probes choice is ``sizes``' (``jacobians``,
    ``max_exact_dim``, ``exact_budget_s``). A field that runs through PyTorch
    (:func:`wgfm.interop.torch_field`) runs on one device, and the header says so.

    Args:
        field: ``(x (*shape), t ()) -> (*shape)``, returning ``kind``.
        process: the forward process (the field's).
        images: clean images, shape ``(N, *shape)``, ``N >= 2`` and at least as many as each
            claim measures.
        key: the diagnosis's key.
        kind: what ``field`` returns (``"score"``, ``"eps"``, ``"x0"``, ``"velocity"``);
            default its ``kind`` attribute, as fields of :func:`wgfm.interop.load_diffusers`
            carry.
        sizes: the sizes (:data:`QUICK`, :data:`FULL` or a :class:`DiagnoseSizes`).
        untrained: the untrained control, a field of the same kind; default
            ``field.untrained(...)`` (:class:`wgfm.pretrained.AbstractPretrainedField`), for a
            plain callable that of :class:`wgfm.pretrained.CallableField` (none unless it is a
            ``ModelField``).
        claims: keys of the claims to measure, in :data:`CLAIMS` (default: all).
        label: the field's name in rows and figures.
        devices: split the images of every sweep over this many devices (a mesh of
            :func:`wgfm.distributed.make_mesh`); the numbers are those of one device.
        mesh: that mesh itself, instead of ``devices``.

    Returns:
        A :class:`Diagnosis`: per claim title its :class:`wgfm.report.Measurement`; the
        header says where the sweeps ran and each claim's header lines.

    Raises:
        ValueError: no ``kind``, both ``devices`` and ``mesh``, an unknown claim, fewer than 2
            images or fewer than a claim measures, non-finite images, or a non-finite value of
            a measurement (naming the level and sample).
    """
    started = usage_now()
    if devices is not None and mesh is not None:
        raise ValueError("`devices` and `mesh` are alternatives: give one of them.")
    if devices is not None:
        from ..distributed import make_mesh

        mesh = make_mesh(devices)
    header = {"devices": device_line(field, mesh)}
    if on_torch(field):
        mesh = None
    bad = [c for c in claims if c not in CLAIMS]
    if bad or not claims:
        raise ValueError(
            f"`claims` must be a non-empty tuple among {tuple(CLAIMS)}, got {claims!r}."
        )
    score, controls, x = prepare(field, process, images, key=key, kind=kind, untrained=untrained)
    measurements = {}
    for claim in (CLAIMS[c] for c in claims):
        x0, claim_key = claim_points(key, claim, x, sizes)
        m = claim.measure(
            score,
            process,
            x0,
            sizes,
            key=claim_key,
            controls=controls,
            label=label,
            mesh=mesh,
        )
        header.update(claim.header(m.numbers))
        measurements[claim.title] = m
    return Diagnosis(label, measurements, header, resources=resources(started))


def prepare(
    field: Field,
    process: AbstractProcess,
    images,
    *,
    key: PRNGKeyArray,
    kind: Kind | None = None,
    untrained: Field | None = None,
) -> tuple[Field, Controls, np.ndarray]:
    """What every claim of :func:`diagnose` measures: ``(score, controls, images)``, the
    field's score, the :class:`wgfm.diagnosis.claim.Controls` beside it and the clean images
    as a NumPy array (checked). Arguments as :func:`diagnose`'s."""
    kind = kind or getattr(field, "kind", None)
    if kind is None:
        raise ValueError(
            "`kind` is required: the field has no `kind` attribute saying whether "
            "it predicts eps, x0, the score or the velocity."
        )
    x = np.asarray(images)
    if x.ndim < 2 or len(x) < 2:
        raise ValueError(f"`images` must have shape (N, *sample_shape) with N >= 2, got {x.shape}.")
    if not np.isfinite(x).all():
        raise ValueError("`images` holds non-finite values.")
    score = as_field(process, field, kind=kind, to="score")
    # at most 10,000 images and 512 MiB of them (wgfm.diagnostics.gaussian_fit.fit_sample_cap)
    fit = subsample_for_fit(x, key=derived_key(key, "gaussian-fit"))
    if untrained is None:
        pretrained = (
            field
            if isinstance(field, AbstractPretrainedField)
            else CallableField(field, kind, process)
        )
        untrained = pretrained.untrained(
            key=derived_key(key, "untrained"), sample_shape=tuple(x.shape[1:])
        )
    controls = Controls(
        gradient=gaussian_fit_score(fit, process),
        untrained=None
        if untrained is None
        else as_field(process, untrained, kind=kind, to="score"),
        control_name=f"exact score of the Gaussian fitted to {len(fit)} clean images"
        + (f" (a random subset of the {len(x)})" if len(fit) < len(x) else ""),
    )
    return score, controls, x


def claim_points(
    key: PRNGKeyArray, claim: AbstractClaim, images: np.ndarray, sizes: DiagnoseSizes
) -> tuple[jax.Array, PRNGKeyArray]:
    """``(x0, claim key)``: the clean images :func:`diagnose` with ``key`` measures in
    ``claim`` at ``sizes`` (:func:`measured_indices`), and the key of its measurement."""
    n = claim.num_samples(sizes)
    if n > len(images):
        raise ValueError(
            f"claim {claim.number} needs {n} clean images, `images` holds {len(images)}."
        )
    x0 = jnp.asarray(images[measured_indices(key, claim, len(images), n)])
    return x0, derived_key(key, f"claim-{claim.number}")


def derived_key(key: PRNGKeyArray, name: str) -> PRNGKeyArray:
    """The key :func:`diagnose` derives from ``key`` by ``name``."""
    return jax.random.fold_in(key, zlib.crc32(name.encode()))


def on_torch(field) -> bool:
    """Whether ``field`` runs through a host callback (PyTorch), which ``jax.shard_map`` cannot
    split over devices: its declared ``host_callback``; a plain callable is looked into."""
    if not isinstance(field, AbstractPretrainedField):
        field = CallableField(field, "score", VP())  # kind and process do not matter here
    return field.host_callback


def device_line(field, mesh) -> str:
    """The report header's line on where the sweeps ran."""
    dev = jax.devices()[0]
    where = f"{dev.platform}, {dev.device_kind}"
    if mesh is None or mesh.devices.size == 1:
        return f"1 device ({where})"
    n = int(mesh.devices.size)
    if on_torch(field):
        return (
            f"1 device ({where}), not the {n} asked for: the field runs through PyTorch, "
            "whose callbacks JAX does not split over devices"
        )
    return f"{n} devices ({where}), the images of every sweep split over them"
