"""Plan a run before paying for it: the time and memory of a diagnosis at each preset's sizes.

A diagnosis is network passes, counted from its sizes alone (:func:`count_passes`):

- claim 1, per image, level and field: exact Jacobians are ``D`` JVPs; the probe path is a
  ``K x K`` sub-Jacobian (``K`` JVPs) and per probe a JVP and a VJP (two JVPs where the field
  has no reverse mode), all of one linearisation (timed with its share of it);
- claim 2, per image, level and field: one forward pass per loop segment (midpoint rule):
  ``2 loop_points`` (circle, pair rotation) ``+ bridge_steps + noisy_copies x noisy_points``;
- the model's own DDIM samples when no images are given: ``num_generated x ddim_steps``.

The fields are the model, its untrained copy (the same architecture: the same price) and the
Gaussian-fit control (timed on its own: two ``D x r`` products). :func:`time_passes` measures
each pass per point at a batch, and XLA's working memory per point; :func:`plan_run` prices the
counts and models the peak memory as the resident arrays (clean images, the fit's basis, the
noised samples of a claim) plus the largest phase's working set (the fit's SVD, a batch of
claim 1's probes or Jacobians, one image's loop points). ``wgfm diagnose`` writes the plan of
every preset for the model given into its report (:func:`plan_header`);
``benchmarks/plan_check.py`` checks it against a measured run.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from ..diagnostics.gaussian_fit import LowRankGaussian, LowRankScore, fit_sample_cap
from ..diagnostics.jacobian import JACOBIAN_CHUNK
from ..processes import AbstractProcess
from ..typing import Field, Scalar
from .sizes import PRESETS, DiagnoseSizes

FLOAT = 4  # bytes per number: the diagnosis runs in float32


@dataclasses.dataclass(frozen=True)
class PassTimes:
    """Seconds per point of each pass of one field, the forward pass measured at a batch of
    ``batch`` points and the JVP and VJP at ``tangent_batch`` (``vjp_s`` None: the field has no
    reverse mode), and ``temp_bytes``, XLA's working memory per point of the largest of the
    passes (None where XLA does not report it)."""

    forward_s: float
    jvp_s: float
    vjp_s: float | None
    batch: int = 1
    tangent_batch: int = 1
    temp_bytes: int | None = None


@dataclasses.dataclass(frozen=True)
class Passes:
    """Network passes of one field per point (image x level) of a phase."""

    forward: float = 0.0
    jvp: float = 0.0
    vjp: float = 0.0

    def seconds(self, times: PassTimes) -> float:
        """Their price at ``times`` (a missing VJP is two JVPs' worth: the forward
        estimator's second JVP)."""
        vjp = times.vjp_s if times.vjp_s is not None else times.jvp_s
        return self.forward * times.forward_s + self.jvp * times.jvp_s + self.vjp * vjp


def loop_evaluations(sizes: DiagnoseSizes) -> int:
    """Field evaluations of one image's loops at one level (claim 2, midpoint rule)."""
    return 2 * sizes.loop_points + sizes.bridge_steps + sizes.noisy_copies * sizes.noisy_points


def run_batch(sizes: DiagnoseSizes) -> int:
    """Points claim 2 evaluates at once: every loop point of ``loop_batch_size`` images."""
    return loop_evaluations(sizes) * (sizes.loop_batch_size or sizes.loop_samples)


def count_passes(
    sizes: DiagnoseSizes, dim: int, *, exact: bool, probes: float, reverse: bool = True
) -> dict[str, Passes]:
    """Passes of one field per point of each phase: ``"claim 1"`` (exact Jacobians, or
    ``probes`` probes per point on the probe path), ``"claim 2"`` and ``"generation"`` (per
    generated image).

    Args:
        sizes: the sizes.
        dim: ``D``.
        exact: exact ``D x D`` Jacobians in claim 1, else the probe path.
        probes: probes per point on the probe path.
        reverse: the field has a VJP (else each probe is two JVPs).

    Returns:
        ``{phase: Passes}``."""
    # every tangent is applied to a linearisation of the field (one per point), whose cost
    # time_passes spreads over the tangents it times
    if exact:
        claim1 = Passes(jvp=float(dim))
    elif reverse:
        claim1 = Passes(jvp=sizes.sub_jacobian_size + probes, vjp=probes)
    else:
        claim1 = Passes(jvp=sizes.sub_jacobian_size + 2 * probes)
    return {
        "claim 1": claim1,
        "claim 2": Passes(forward=float(loop_evaluations(sizes))),
        "generation": Passes(forward=float(sizes.ddim_steps)),
    }


def exact_choice(sizes: DiagnoseSizes, dim: int, jvp_s: float, fields: int) -> bool:
    """Claim 1's exact-or-probes choice at ``sizes`` (:class:`wgfm.diagnosis.budget.
    JacobianPolicy`'s rule, one device): forced, ``D <= max_exact_dim``, or ``D`` JVPs per
    Jacobian at ``jvp_s`` within ``exact_budget_s``."""
    if sizes.jacobians != "auto":
        return sizes.jacobians == "exact"
    if sizes.max_exact_dim is not None:
        return dim <= sizes.max_exact_dim
    count = sizes.num_samples * sizes.num_levels * fields
    return jvp_s * dim * count <= sizes.exact_budget_s


@dataclasses.dataclass(frozen=True)
class Plan:
    """The predicted cost of a diagnosis at one preset's sizes, on one process."""

    preset: str
    exact: bool
    probes: float  # per point on claim 1's probe path
    seconds: dict[str, float]  # per phase: claim 1, claim 2, generation
    seconds_max_probes: float  # the total if every probe point spent max_probes
    peak_bytes: dict[str, int]  # resident and per-phase working sets, and "peak"

    @property
    def total_s(self) -> float:
        return float(sum(self.seconds.values()))

    def numbers(self) -> dict[str, Any]:
        """For results.json (and the report header, as a nested list)."""
        return {
            "wall time (s)": _round(self.total_s),
            **{f"{k} (s)": _round(v) for k, v in self.seconds.items()},
            "wall time if every point spent max_probes (s)": _round(self.seconds_max_probes),
            "claim 1 Jacobians": "exact" if self.exact else f"probes, {self.probes:.3g} per point",
            "peak memory beyond the model's weights (GB)": _round(self.peak_bytes["peak"] / 1e9),
        }


def _round(v: float) -> float:
    return float(f"{v:.3g}")


def plan_run(
    sizes: DiagnoseSizes,
    network: PassTimes,
    gaussian: PassTimes | None,
    *,
    dim: int,
    num_images: int,
    generated: bool,
    untrained: bool = True,
    probes: float | None = None,
    preset: str = "custom",
) -> Plan:
    """The time and peak memory of :func:`wgfm.diagnose` (and the model's own samples) at
    ``sizes`` on one process.

    Args:
        sizes: the sizes.
        network: the model's pass times (its untrained copy costs the same).
        gaussian: the Gaussian-fit control's, or None (no such control).
        dim: ``D``, numbers per sample.
        num_images: clean images held (given, or ``num_generated``).
        generated: the model generates them (``num_generated x ddim_steps`` passes).
        untrained: an untrained control is measured.
        probes: probes per point on claim 1's probe path (measured by a run's adaptive
            stopping); default one round, ``num_probes``.
        preset: the sizes' name.

    Returns:
        A :class:`Plan`: seconds per phase (excluding compilation) and bytes of the resident
        arrays, of each phase's working set and their ``"peak"``."""
    nets = 2 if untrained else 1
    fields = nets + (gaussian is not None)
    exact = exact_choice(sizes, dim, network.jvp_s, fields)
    p = float(sizes.num_probes if probes is None else probes)
    p_max = float(sizes.max_probes if sizes.rel_se is not None else sizes.num_probes)
    reverse = network.vjp_s is not None

    def seconds(p: float) -> dict[str, float]:
        per = count_passes(sizes, dim, exact=exact, probes=p, reverse=reverse)
        units = {
            "claim 1": sizes.num_levels * sizes.num_samples,
            "claim 2": sizes.loop_levels * sizes.loop_samples,
        }
        out = {}
        for phase, n in units.items():
            cost = nets * per[phase].seconds(network)
            if gaussian is not None:
                cost += per[phase].seconds(gaussian)
            out[phase] = n * cost
        gen = sizes.num_generated * per["generation"].seconds(network) if generated else 0.0
        return {**out, "generation": gen}

    worst = sum(seconds(p_max).values())
    memory = peak_memory(sizes, network, dim=dim, num_images=num_images, exact=exact)
    return Plan(preset, exact, p, seconds(p), worst, memory)


def peak_memory(
    sizes: DiagnoseSizes, network: PassTimes, *, dim: int, num_images: int, exact: bool
) -> dict[str, int]:
    """Bytes beyond the model's weights: resident arrays (clean images, the Gaussian fit's
    basis), each phase's working set on top of them, and the ``"peak"``. A phase's working set
    is its arrays of ``D`` numbers plus XLA's working memory per point (``network.temp_bytes``,
    0 if unknown) times the points evaluated at once."""
    d = dim * FLOAT
    temp = network.temp_bytes or 0
    n_fit = min(num_images, fit_sample_cap(dim))
    resident = num_images * d + min(n_fit, dim) * d
    batch = sizes.batch_size
    if exact:  # a batch of D x D Jacobians, JACOBIAN_CHUNK tangents at a time
        claim1_work = batch * (dim * d + JACOBIAN_CHUNK * (temp + 2 * d))
    else:  # a linearisation per sample and a round of probes (probe, J v, J^T v) at once
        claim1_work = batch * ((1 + sizes.num_probes) * temp + 3 * sizes.num_probes * d)
    loop_batch = sizes.loop_batch_size or sizes.loop_samples
    # the loop points, their midpoints, the field's values and the segments: 4 arrays
    claim2_work = loop_batch * loop_evaluations(sizes) * (temp + 4 * d)
    phases = {
        # the centred samples, their right singular vectors and LAPACK's workspace
        "gaussian fit": 3 * n_fit * d,
        "claim 1": sizes.num_levels * sizes.num_samples * d + claim1_work,
        # claim 2 sweeps (clean, noisy) pairs
        "claim 2": 2 * sizes.loop_levels * sizes.loop_samples * d + claim2_work,
    }
    out = {"resident": resident, **phases}
    out["peak"] = resident + max(phases.values())
    return out


def time_passes(
    field: Field, x: Array, t: Scalar, sizes: DiagnoseSizes, *, repeats: int = 3, clock=None
) -> PassTimes:
    """Seconds per point of a forward pass of ``field`` at the batch claim 2 evaluates at once
    at ``sizes`` (:func:`run_batch` copies of ``x``), and of a JVP and a VJP as claim 1 takes
    them: ``batch_size`` copies, each linearised once (``jax.linearize``, its transpose for
    the VJP) and applied to ``num_probes`` tangents (vmapped, each compiled first and then
    timed: the median of ``repeats`` calls; per tangent, the linearisation included), and
    XLA's working memory per point of the largest of them. Per-point costs depend on the batch
    (they fall with it on an accelerator, and can rise on a CPU once a batch's activations
    leave the caches), hence the diagnosis's own batches.

    Args:
        field: ``(x (*shape), t ()) -> (*shape)``.
        x: one point, shape ``(*shape)``.
        t: its time.
        sizes: the sizes whose batches are timed.
        repeats: timed calls per pass.
        clock: seconds now (default ``time.perf_counter``; ``time.process_time``: the
            process's CPU seconds, which other jobs on a shared host do not inflate).

    Returns:
        :class:`PassTimes` (``vjp_s`` None if the field has no reverse mode)."""
    x, clock = jnp.asarray(x), clock or time.perf_counter
    batch, samples, tangents = run_batch(sizes), sizes.batch_size, sizes.num_probes
    f = lambda y: field(y, t)  # noqa: E731

    def jvps(y, vs):
        return jax.vmap(jax.linearize(f, y)[1])(vs)

    def vjps(y, vs):
        lin = jax.linearize(f, y)[1]
        return jax.vmap(lambda v: jax.linear_transpose(lin, y)(v)[0])(vs)

    xs = jnp.broadcast_to(x, (int(batch), *x.shape))
    ys = jnp.broadcast_to(x, (int(samples), *x.shape))
    vs = jnp.ones((int(samples), int(tangents), *x.shape), x.dtype)
    points = {"forward": int(batch), "jvp": int(samples) * int(tangents)}
    points["vjp"] = points["jvp"]
    calls = {
        "forward": (jax.vmap(f), (xs,)),
        "jvp": (jax.vmap(jvps), (ys, vs)),
        "vjp": (jax.vmap(vjps), (ys, vs)),
    }
    seconds: dict[str, float | None] = {}
    temps = []
    for name, (fn, args) in calls.items():
        try:
            compiled = jax.jit(fn).lower(*args).compile()
        except (NotImplementedError, TypeError, ValueError):
            if name != "vjp":
                raise
            seconds[name] = None  # no transpose rule: the forward estimator
            continue
        mem = compiled.memory_analysis()
        if mem is not None:
            temps.append(int(mem.temp_size_in_bytes) // points[name])
        jax.block_until_ready(compiled(*args))
        runs = []
        for _ in range(max(1, int(repeats))):
            t0 = clock()
            jax.block_until_ready(compiled(*args))
            runs.append(clock() - t0)
        seconds[name] = float(np.median(runs)) / points[name]
    return PassTimes(
        forward_s=float(seconds["forward"] or 0.0),
        jvp_s=float(seconds["jvp"] or 0.0),
        vjp_s=seconds["vjp"],
        batch=points["forward"],
        tangent_batch=points["jvp"],
        temp_bytes=max(temps) if temps else None,
    )


def gaussian_stand_in(dim: int, num_images: int, process: AbstractProcess) -> LowRankScore:
    """A Gaussian-fit control of the shapes a diagnosis fits (rank ``min(N, N_max, D)``):
    its passes cost what the real one's do, whatever the numbers."""
    r = min(num_images, fit_sample_cap(dim), dim)
    fit = LowRankGaussian(
        jnp.zeros(dim), jnp.eye(dim, r), jnp.ones(r), jnp.asarray(1e-3, jnp.float32)
    )
    return LowRankScore(fit, process)


def measured_probes(numbers: dict) -> float | None:
    """Probes per point that claim 1's adaptive stopping spent on the model in a run (the mean
    over levels of the per-level medians; passes are ``2 probes + 1``), from the run's
    ``numbers`` (``Diagnosis.numbers``); None where claim 1 took no adaptive probes."""
    adaptive = numbers.get("differential", {}).get("adaptive")
    if adaptive is None:
        return None
    return float((np.mean(np.asarray(adaptive["median_passes"]["trained"], float)) - 1) / 2)


def time_model(
    field: Field,
    process: AbstractProcess,
    images,
    sizes: DiagnoseSizes,
    *,
    generated: bool,
    untrained: bool = True,
    host_callback: bool = False,
) -> dict[str, Any]:
    """What the plan needs of a model, measured now: its passes and the Gaussian-fit
    control's (:func:`time_passes` at this run's batches, at the middle noise level), as JSON
    (``wgfm diagnose`` keeps it in its output directory; :func:`plan_lines` reads it).

    Args:
        field: the model's field ``(x (*shape), t ()) -> (*shape)``.
        process: its process.
        images: the clean images ``(N, *shape)``.
        sizes: this run's sizes (the batches timed).
        generated: the images were generated by the model.
        untrained: an untrained control is measured.
        host_callback: the field runs in PyTorch (whose own working memory XLA does not see).

    Returns:
        ``{"network", "gaussian"}`` (:class:`PassTimes` as dicts), ``dim``, ``num_images`` and
        the three flags."""
    x = jnp.asarray(images[0])
    t = jnp.asarray(0.5 * (process.t_min + process.t_max), x.dtype)
    dim, n = int(x.size), len(images)
    network, gaussian = (
        time_passes(f, x, t, sizes, repeats=2) for f in (field, gaussian_stand_in(dim, n, process))
    )
    return {
        "network": dataclasses.asdict(network),
        "gaussian": dataclasses.asdict(gaussian),
        "dim": dim,
        "num_images": n,
        "generated": bool(generated),
        "untrained": bool(untrained),
        "host_callback": bool(host_callback),
    }


def plan_lines(timed: dict[str, Any] | None, sizes: DiagnoseSizes, numbers: dict) -> dict:
    """The report header's plan: ``{title: {"pass times": ..., preset: Plan.numbers()}}`` for
    every preset of :data:`wgfm.diagnosis.sizes.PRESETS`, from a model's :func:`time_model`
    and the probes per point the run spent (``numbers``); ``{}`` without ``timed``.

    Args:
        timed: :func:`time_model`'s record, or None.
        sizes: the run's sizes (their exact-or-probes mode and ``rel_se`` apply to every
            preset).
        numbers: the run's ``Diagnosis.numbers``.

    Returns:
        One header entry (a nested dict: REPORT.md shows it as a nested list), or none."""
    if timed is None:
        return {}
    network, gaussian = PassTimes(**timed["network"]), PassTimes(**timed["gaussian"])
    probes = measured_probes(numbers)
    ms = lambda s: "none" if s is None else f"{1e3 * s:.3g}"  # noqa: E731
    temp = "unknown" if network.temp_bytes is None else f"{network.temp_bytes / 1e6:.3g}"
    out: dict[str, Any] = {
        "pass times": f"per point: forward {ms(network.forward_s)} ms at a batch of "
        f"{network.batch}, JVP {ms(network.jvp_s)} ms and VJP {ms(network.vjp_s)} ms at "
        f"{network.tangent_batch} (Gaussian-fit control {ms(gaussian.forward_s)}, "
        f"{ms(gaussian.jvp_s)}, {ms(gaussian.vjp_s)} ms); XLA's working memory {temp} MB per "
        "point" + (" (a PyTorch model's own is not included)" if timed["host_callback"] else ""),
        "probes per point": "one round of each preset's num_probes (claim 1 took no probes)"
        if probes is None
        else f"{probes:.3g}, as claim 1 spent in this run",
    }
    for name, preset in PRESETS.items():
        preset = dataclasses.replace(preset, jacobians=sizes.jacobians, rel_se=sizes.rel_se)
        if sizes.rel_se is None:  # a fixed probe count: the preset's own
            preset = dataclasses.replace(preset, max_probes=preset.num_probes)
        generated = timed["generated"]
        plan = plan_run(
            preset,
            network,
            gaussian,
            dim=timed["dim"],
            num_images=preset.num_generated if generated else timed["num_images"],
            generated=generated,
            untrained=timed["untrained"],
            probes=probes if probes is not None and sizes.rel_se is not None else None,
            preset=name,
        )
        out[name] = plan.numbers()
    title = "plan of each preset on one process (excluding compilation; wgfm.diagnosis.plan)"
    return {title: out}


def plan_header(
    field: Field,
    process: AbstractProcess,
    images,
    sizes: DiagnoseSizes,
    *,
    numbers: dict,
    generated: bool,
    untrained: bool = True,
    host_callback: bool = False,
) -> dict[str, Any]:
    """:func:`plan_lines` of :func:`time_model` (one process, no output directory between).

    Args:
        field, process, images, sizes, generated, untrained, host_callback: as in
            :func:`time_model`.
        numbers: the run's ``Diagnosis.numbers``.

    Returns:
        One header entry, as :func:`plan_lines`."""
    timed = time_model(
        field,
        process,
        images,
        sizes,
        generated=generated,
        untrained=untrained,
        host_callback=host_callback,
    )
    return plan_lines(timed, sizes, numbers)
