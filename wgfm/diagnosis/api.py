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
from jaxtyping import Array, PRNGKeyArray

from ..diagnostics.controls import gaussian_fit_score
from ..diagnostics.sweep import times_grid
from ..fields import as_field
from ..pretrained import AbstractPretrainedField, CallableField
from ..processes import VP, AbstractProcess
from ..report import ClaimRow, Measurement, Report, jsonable
from ..typing import Field, Kind
from .claims import measure_asymmetry, measure_circulation

TITLES = {
    1: "1. Differential constraint: Jacobian asymmetry",
    2: "2. Integral constraint: loop circulation",
}
# results.json keys of the claims' numbers (as in `wgfm reproduce`).
NUMBERS = {1: "differential", 2: "integral"}
GAUSSIAN_FIT_MAX = 10_000  # clean images in the Gaussian fit: enough to pin it down


@dataclasses.dataclass(frozen=True)
class DiagnoseSizes:
    """Every size of a diagnosis. :data:`QUICK` runs in minutes on a CPU for the
    ddpm-cifar10-32 U-Net (35.7 M parameters); :data:`FULL` is the authors' protocol."""

    num_levels: int  # noise levels of claim 1 (the authors: 100, t = 1, 11, ..., 991 of 1000)
    num_samples: int  # images per level, claim 1
    sub_jacobian_size: int  # K of the K x K sub-Jacobians (on the probe path)
    num_probes: int  # probes of the full-Jacobian estimate (one JVP and one VJP each; >= 2)
    # Exact Jacobians up to this many coordinates; None: exact when their measured cost fits
    # exact_budget_s (wgfm.diagnosis.budget).
    max_exact_dim: int | None
    batch_size: int  # images at a time in claim 1
    loop_levels: int  # noise levels of claim 2
    loop_samples: int  # images per level, claim 2
    loop_points: int  # points of the circle and pair-rotation loops
    bridge_steps: int  # Brownian-bridge steps (the authors: 1000)
    noisy_copies: int  # noisy-copy cycle: copies (the authors: 10)
    noisy_points: int  # points per segment (the authors: 100)
    num_generated: int  # images the model generates when no data is given
    ddim_steps: int  # DDIM steps of that generation (the authors: 50)
    exact_budget_s: float = 60.0  # seconds of exact Jacobians allowed (max_exact_dim None)

    def __post_init__(self):
        ints = [f.name for f in dataclasses.fields(self) if f.name != "exact_budget_s"]
        bad = [
            n
            for n in ints
            if not (n == "max_exact_dim" and getattr(self, n) is None) and int(getattr(self, n)) < 1
        ]
        if bad:
            raise ValueError(f"DiagnoseSizes: {', '.join(bad)} must be positive integers.")
        if self.num_probes < 2:
            raise ValueError("DiagnoseSizes: num_probes must be at least 2 (for a standard error).")
        if not float(self.exact_budget_s) >= 0:
            raise ValueError(
                f"DiagnoseSizes: exact_budget_s must be >= 0 seconds, got {self.exact_budget_s!r}."
            )


QUICK = DiagnoseSizes(
    num_levels=4,
    num_samples=2,
    sub_jacobian_size=8,
    num_probes=4,
    max_exact_dim=None,
    batch_size=2,
    loop_levels=3,
    loop_samples=1,
    loop_points=16,
    bridge_steps=32,
    noisy_copies=3,
    noisy_points=8,
    num_generated=8,
    ddim_steps=10,
    # A quick run takes minutes: exact Jacobians may add about one more.
    exact_budget_s=60.0,
)
FULL = DiagnoseSizes(
    num_levels=100,
    num_samples=128,
    sub_jacobian_size=64,
    num_probes=32,
    max_exact_dim=None,
    batch_size=16,
    loop_levels=100,
    loop_samples=256,
    loop_points=256,
    bridge_steps=1000,
    noisy_copies=10,
    noisy_points=100,
    num_generated=1024,
    ddim_steps=50,
    # The authors' protocol is already hours on a GPU (claim 2 alone is ~2e8 evaluations of
    # the field: 256 images x 100 levels x ~2,500 loop points x 3 fields); exact Jacobians may
    # take about as long again.
    exact_budget_s=4 * 3600.0,
)


def measured_indices(key: PRNGKeyArray, claim: int, num_images: int, n: int) -> np.ndarray:
    """The (sorted) indices of the ``n`` clean images that :func:`diagnose` with ``key`` measures
    in ``claim`` out of ``num_images``: drawn without replacement, a stream of its own per claim."""
    sub = jax.random.fold_in(key, zlib.crc32(f"x0-{claim}".encode()))
    return np.sort(np.asarray(jax.random.choice(sub, num_images, (n,), replace=False)))


@dataclasses.dataclass(frozen=True)
class Diagnosis:
    """What :func:`diagnose` measured: per claim (keyed by its title) the verdict rows, the
    numbers behind them (per-level medians of the network and of each control) and the
    figures (name -> ``matplotlib.figure.Figure``)."""

    label: str
    measurements: dict[str, Measurement]
    header: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def rows(self) -> dict[str, list[ClaimRow]]:
        return {title: list(m.rows) for title, m in self.measurements.items()}

    @property
    def numbers(self) -> dict[str, dict]:
        """``{"differential" | "integral": numbers}``, as in results.json."""
        keys = {v: NUMBERS[k] for k, v in TITLES.items()}
        return {keys[t]: m.numbers for t, m in self.measurements.items()}

    @property
    def passed(self) -> bool:
        """Whether every verdict row holds."""
        return all(r.verdict for m in self.measurements.values() for r in m.rows)

    def report(self, out: Path | str) -> Report:
        """A :class:`wgfm.report.Report` writing under ``out`` (figures saved there now)."""
        report = Report(Path(out), title=f"wgfm diagnose report: {self.label}")
        for title, m in self.measurements.items():
            report.add_measurement(title, m)
            key = {v: NUMBERS[k] for k, v in TITLES.items()}[title]
            report.numbers.setdefault(key, {})[self.label] = m.numbers
        return report

    def to_markdown(self) -> str:
        """The report as Markdown: header, then per claim its table (figures named)."""
        report = Report(Path("."), title=f"wgfm diagnose report: {self.label}")
        for title, m in self.measurements.items():
            report.rows[title] = list(m.rows)
            report.figures[title] = [f"figures/{name}.png" for name in m.figures]
        return report.markdown(self.header)

    def to_json(self) -> str:
        """Rows and numbers as JSON (arrays as lists, non-finite floats as strings)."""
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
        """Write REPORT.md, results.json and figures/*.png under ``out``."""
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
    claims: tuple[int, ...] = (1, 2),
    label: str = "model",
    exact: bool | None = None,
    devices: int | None = None,
    mesh=None,
) -> Diagnosis:
    """Claims 1 and 2 on ``field`` (any kind; converted to its score) at the noise levels of
    ``sizes``, on clean ``images`` ``(N, *shape)`` noised by ``process``.

    ``kind`` is what ``field`` returns (default: its ``kind`` attribute, as fields from
    :func:`wgfm.interop.load_diffusers` carry). Controls on the same points: the exact score of
    the Gaussian fitted to up to 10,000 of ``images``, and ``untrained`` (a field of the same
    kind; by default ``field`` with freshly drawn parameters when it carries ``model`` and
    ``params``, else no untrained control). Keys derive from ``key`` by name, so one claim run
    alone gives the numbers it gives in a full diagnosis.

    Claim 1 takes exact Jacobians when ``exact`` is True; probe estimates with their standard
    errors when False; when None, as ``sizes`` says (``max_exact_dim``, or the budget
    ``exact_budget_s`` against the field's measured JVP time). ``mesh``
    (:func:`wgfm.distributed.make_mesh`), or ``devices`` (a mesh over that many devices), splits
    the images of every sweep over its devices, with the numbers of one device; a field that
    runs through PyTorch (:func:`wgfm.interop.torch_field`) runs on one device, and the header
    says so."""
    kind = kind or getattr(field, "kind", None)
    if kind is None:
        raise ValueError(
            "`kind` is required: the field has no `kind` attribute saying whether "
            "it predicts eps, x0, the score or the velocity."
        )
    if devices is not None and mesh is not None:
        raise ValueError("`devices` and `mesh` are alternatives: give one of them.")
    if devices is not None:
        from ..distributed import make_mesh

        mesh = make_mesh(devices)
    header = {"devices": device_line(field, mesh)}
    if on_torch(field):
        mesh = None
    bad = [c for c in claims if c not in TITLES]
    if bad or not claims:
        raise ValueError(f"`claims` must be a non-empty tuple among (1, 2), got {claims!r}.")
    x = np.asarray(images)
    if x.ndim < 2 or len(x) < 2:
        raise ValueError(f"`images` must have shape (N, *sample_shape) with N >= 2, got {x.shape}.")
    if not np.isfinite(x).all():
        raise ValueError("`images` holds non-finite values.")

    def sub(name: str):
        return jax.random.fold_in(key, zlib.crc32(name.encode()))

    shape = tuple(x.shape[1:])
    score = as_field(process, field, kind=kind, to="score")
    fit = x[:GAUSSIAN_FIT_MAX]
    gradient = gaussian_fit_score(fit, process)
    if untrained is None:
        pretrained = (
            field
            if isinstance(field, AbstractPretrainedField)
            else CallableField(field, kind, process)
        )
        untrained = pretrained.untrained(key=sub("untrained"), sample_shape=shape)
    untrained_score = (
        None if untrained is None else as_field(process, untrained, kind=kind, to="score")
    )
    common = dict(
        gradient=gradient,
        untrained=untrained_score,
        label=label,
        control_name=f"exact score of the Gaussian fitted to {len(fit)} clean images",
    )
    measurements = {}
    for claim in claims:
        n = sizes.num_samples if claim == 1 else sizes.loop_samples
        if n > len(x):
            raise ValueError(f"claim {claim} needs {n} clean images, `images` holds {len(x)}.")
        x0 = jnp.asarray(x[measured_indices(key, claim, len(x), n)])
        k = sub(f"claim-{claim}")
        if claim == 1:
            m = _claim1(score, process, x0, sizes, key=k, exact=exact, mesh=mesh, **common)
            header["claim 1 Jacobians"] = m.numbers["jacobian"]["description"]
        else:
            m = _claim2(score, process, x0, sizes, key=k, mesh=mesh, **common)
        measurements[TITLES[claim]] = m
    return Diagnosis(label, measurements, header)


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


def _claim1(score, process, x0: Array, sz: DiagnoseSizes, **kwargs) -> Measurement:
    ts = times_grid(process, sz.num_levels)
    return measure_asymmetry(
        score,
        process,
        x0,
        ts,
        max_exact_dim=sz.max_exact_dim,
        budget_s=None if sz.max_exact_dim is not None else sz.exact_budget_s,
        sub_jacobian_size=sz.sub_jacobian_size,
        num_probes=sz.num_probes,
        batch_size=sz.batch_size,
        **kwargs,
    )


def _claim2(score, process, x0: Array, sz: DiagnoseSizes, **kwargs) -> Measurement:
    ts = times_grid(process, sz.loop_levels)
    # One image at a time: every loop point is a network evaluation.
    return measure_circulation(
        score,
        process,
        x0,
        ts,
        loop_points=sz.loop_points,
        bridge_steps=sz.bridge_steps,
        noisy_copies=sz.noisy_copies,
        noisy_points=sz.noisy_points,
        batch_size=1,
        **kwargs,
    )
