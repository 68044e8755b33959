"""The paper's two tests on one score field, as rows, numbers and figures.

:func:`measure_asymmetry` (the differential constraint: is the Jacobian symmetric?) and
:func:`measure_circulation` (the integral constraint: do loop integrals vanish?) take any score
field, a process and clean samples, noise the samples at every level and compare the field with
the optional controls of :mod:`wgfm.diagnostics.controls` on the same points. ``wgfm diagnose``
and the reproduction's claims 1 and 2 both measure with them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PRNGKeyArray

from ..diagnostics import noised_samples, sweep
from ..diagnostics.kernels import FAMILIES, Circulation, ExactAsymmetry, SubAndProbe
from ..processes import AbstractProcess
from ..report import ClaimRow, Measurement, fmt, level_bar
from ..typing import Field


def measure_asymmetry(
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
    max_exact_dim: int = 64,
    sub_jacobian_size: int = 16,
    num_probes: int = 32,
    batch_size: int = 16,
    estimator_check: bool = False,
    exact_samples: int = 0,
) -> Measurement:
    """Claim 1 on one score ``field``: its Jacobian asymmetry at every level of ``ts``.

    ``x0`` ``(n, *shape)`` are clean samples (vectors or images), noised once per level with
    ``process`` (the same ``x0`` at every level). Optional controls on the same points:
    ``gradient``, a field known to be a gradient on the data's scale (the exact score, or
    :func:`wgfm.diagnostics.controls.gaussian_fit_score`; ``control_name`` names it in the rows), and
    ``untrained``. Exact Jacobians up to ``max_exact_dim`` coordinates; beyond, ``K x K``
    sub-Jacobians (``K = sub_jacobian_size``) and ``num_probes``-probe estimates,
    ``batch_size`` samples at a time. ``estimator_check`` (exact path only) also runs the
    large-D estimators on up to 8 samples and reports their agreement with the exact ratios;
    beyond ``max_exact_dim``, ``exact_samples > 0`` takes exact Jacobians of ``field`` on that
    many samples per level and checks the estimators against them.
    Figures are named ``lambda_<label>``; raises ``ValueError`` naming the first non-finite
    level and sample."""
    k_noise, k_sub = jax.random.split(key)
    x0 = jnp.asarray(x0)
    tsj = jnp.asarray(ts, x0.dtype)
    xs = noised_samples(process, x0, tsj, key=k_noise)
    fields = {"trained": field, "untrained": untrained, "oracle score": gradient}
    fields = {k: f for k, f in fields.items() if f is not None}
    dim = int(np.prod(x0.shape[1:]))
    exact = dim <= max_exact_dim
    if exact:
        res = {
            k: _values(
                sweep(
                    ExactAsymmetry(),
                    f,
                    xs,
                    tsj,
                    checked=False,
                    what="Jacobian asymmetry values are",
                    progress=level_bar(f"Jacobians, {label}, {k}", x0),
                )
            )
            for k, f in fields.items()
        }
        what = "lambda"
    else:
        diag = SubAndProbe(sub_jacobian_size, num_probes)  # the same coordinates for every field
        res = {
            k: _values(
                sweep(
                    diag,
                    f,
                    xs,
                    tsj,
                    key=k_sub,
                    batch_size=batch_size,
                    checked=False,
                    what="sub-Jacobian or probe asymmetry values are",
                    progress=level_bar(f"sub-Jacobians, {label}, {k}", x0),
                )
            )
            for k, f in fields.items()
        }
        what = f"{sub_jacobian_size}x{sub_jacobian_size} sub-Jacobian lambda"
    lam = {k: v[0] for k, v in res.items()}  # (n, L) each
    med = {k: np.median(v, axis=0) for k, v in lam.items()}
    k = sub_jacobian_size
    ylabel = "asymmetry ratio ||J-J^T||/||J||" if exact else f"{k}x{k} sub-Jacobian asymmetry ratio"
    from ..figures import boxplot_by_level

    fig = boxplot_by_level(np.asarray(ts), lam, ylabel, f"Differential constraint ({label})")
    headline = None
    if not exact:  # the probe estimate is the full-dimension number; sub-Jacobians certify
        headline = {k: np.median(v[1], axis=0) for k, v in res.items()}
        headline_what = f"full-dimension lambda ({num_probes}-probe estimate)"
    rows = _rows(
        label,
        med,
        what,
        control_name,
        image=x0.ndim > 2,
        headline=None if headline is None else (headline_what, headline),
    )
    if exact:
        numbers = {
            "levels": np.asarray(ts),
            "median_ratio": med,
            "median_nasym": {k: np.median(v[1], axis=0) for k, v in res.items()},
        }
        if estimator_check:
            k = min(sub_jacobian_size, dim)
            rows.append(
                _estimators_agree(
                    label, field, xs, tsj, lam["trained"], k_sub, numbers, k, num_probes
                )
            )
    else:
        numbers = {
            "levels": np.asarray(ts),
            "sub_jacobian_size": sub_jacobian_size,
            "median_sub_ratio": med,
            "median_probe_ratio": {k: np.median(v[1], axis=0) for k, v in res.items()},
        }
        if exact_samples > 0:
            rows.append(
                _exact_subset(label, field, xs[:, :exact_samples], tsj, res["trained"], numbers)
            )
    return Measurement(rows, numbers, {f"lambda_{label}": fig})


def _exact_subset(label, field, xs, ts, estimates, numbers: dict) -> ClaimRow:
    """Exact ``D x D`` Jacobians of ``field`` on the samples ``xs`` ``(L, m, ...)`` (the first
    ``m`` of each level), and the sub-Jacobian and probe ratios ``estimates`` of the same
    samples against them."""
    m = xs.shape[1]
    out = sweep(
        ExactAsymmetry(chunk_size=64),
        field,
        xs,
        ts,
        batch_size=1,
        checked=False,
        what="exact Jacobian asymmetry values are",
        progress=f"exact Jacobians, {label}",
    )
    exact = _values(out)[0]  # (m, L)
    sub, probe = (e[:m] for e in estimates)
    numbers["median_exact_ratio"] = np.median(exact, axis=0)
    numbers["exact_samples"] = m
    return _agreement(
        label, sub, probe, exact, numbers, int(numbers["sub_jacobian_size"]), f"{m} per level"
    )


def _values(result) -> tuple[np.ndarray, ...]:
    """A sweep's two value arrays as ``(n, L)`` (samples first, as the box plots take them)."""
    return tuple(np.asarray(v).T for v in result.values)


def _rows(
    label: str,
    med: dict,
    what: str,
    control_name: str,
    *,
    image: bool,
    headline: tuple[str, dict] | None = None,
) -> list[ClaimRow]:
    """The verdict on the certificate ``med`` (exact lambda, or sub-Jacobian lambda beyond the
    exact dimension) and the trend; with ``headline`` (its name and the per-level medians of
    a full-dimension estimate), the numbers reported first are the headline's and the
    sub-Jacobian is labelled a certificate: an asymmetric block proves a field is not a
    gradient, but a random K x K block of an image is nearly diagonal and its ratio is not
    the size of the full one."""
    tr = med["trained"]
    if headline is None:
        measured = f"median {what} {fmt(tr.min())}..{fmt(tr.max())}"
        size_what, size = what, med
    else:
        size_what, size = headline
        h = size["trained"]
        measured = (
            f"median {size_what} {fmt(h.min())}..{fmt(h.max())}; certificate: median {what} "
            f"{fmt(tr.min())}..{fmt(tr.max())}"
        )
    if "oracle score" in med:
        ctl = med["oracle score"]
        ratio = tr / np.maximum(ctl, 1e-30)
        ctl_text = f"{control_name}: max median {fmt(ctl.max())}"
        if headline is not None:
            ctl_text = (
                f"{control_name}: max median {size_what} {fmt(size['oracle score'].max())}, "
                f"{what} {fmt(ctl.max())}"
            )
        gradient_row = ClaimRow(
            f"{label}: trained score is not a gradient at every noise level",
            measured,
            ctl_text,
            bool(np.all(ratio > 100) and np.max(ctl) < 1e-4),
            f"trained/control >= {fmt(ratio.min())} at every level"
            if np.max(ctl) > 0
            else "the control's Jacobian is symmetric to the last bit (lambda exactly 0)",
        )
    else:  # no gradient control: float32 rounding of a gradient field stays orders below this
        gradient_row = ClaimRow(
            f"{label}: score is not a gradient at every noise level",
            measured,
            "no gradient control given",
            bool(np.all(tr > 1e-3)),
            "threshold 1e-3 at every level",
        )
    # The trend in the reported size: the full-dimension estimate where there is one.
    series = size["trained"]
    fifth = max(1, len(series) // 5)
    low, high = series[:fifth], series[-fifth:]
    untrained = (
        f"untrained: {fmt(size['untrained'].mean())} on average"
        + (" (output layer drawn at random, not zero)" if image else "")
        if "untrained" in med
        else "no untrained control given"
    )
    trend_row = ClaimRow(
        f"{label}: asymmetry grows towards low noise (paper's trend)",
        f"median {size_what}, lowest-noise fifth {fmt(low.mean())} vs highest {fmt(high.mean())}",
        untrained,
        bool(low.mean() > high.mean()),
        "observation",
    )
    return [gradient_row, trend_row]


def _estimators_agree(
    label, field, xs, ts, exact, key, numbers: dict, k: int, num_probes: int
) -> ClaimRow:
    """The large-D estimators against the exact ratios ``exact`` ``(n, L)`` of ``xs``, on the
    first 8 samples: ``k x k`` sub-Jacobians and ``num_probes``-probe estimates."""
    n = min(8, xs.shape[1])
    out = sweep(
        SubAndProbe(k, num_probes),
        field,
        xs[:, :n],
        ts,
        key=key,
        batch_size=16,
        checked=False,
        what="sub-Jacobian or probe asymmetry values are",
    )
    sub, probe = _values(out)
    return _agreement(label, sub, probe, exact[:n], numbers, k, f"{n} per level")


def _agreement(label, sub, probe, exact, numbers: dict, k: int, which: str) -> ClaimRow:
    """The row for sub-Jacobian and probe ratios ``(n, L)`` against the exact ones."""
    rel = float(np.median(np.abs(probe - exact) / exact))
    numbers["probe_vs_exact_median_rel_err"] = rel
    numbers["sub_vs_exact_median_ratio"] = float(np.median(sub / exact))
    numbers[f"sub{k}_median_ratio"] = np.median(sub, axis=0)
    return ClaimRow(
        f"{label}: {k}x{k} sub-Jacobians and probe estimates certify asymmetry without full J",
        f"median sub-Jacobian lambda {fmt(np.median(sub))}, probe {fmt(np.median(probe))}",
        f"exact lambda ({which}) {fmt(np.median(exact))}; probe median relative error "
        f"{fmt(rel)}; sub/exact median {fmt(numbers['sub_vs_exact_median_ratio'])}",
        bool(np.median(sub) > 1e-2 and rel < 0.5),
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
    diag = Circulation(
        process, tuple(families), loop_points, bridge_steps, noisy_copies, noisy_points
    )
    fields = {"trained": field, "untrained": untrained, "oracle score": gradient}
    fields = {k: f for k, f in fields.items() if f is not None}
    per_field = {  # the same loops (same key) for every field; (n, L) arrays
        k: jax.tree.map(
            lambda v: np.asarray(v).T,
            sweep(
                diag,
                f,
                pairs,
                tsj,
                key=k_loop,
                batch_size=batch_size,
                checked=False,
                what="loop circulation values are",
                progress=level_bar(f"loops, {label}, {k}", x0),
            ).values,
        )
        for k, f in fields.items()
    }
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
