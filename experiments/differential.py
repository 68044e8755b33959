"""Claim 1 — the differential constraint: trained networks have asymmetric Jacobians.

A score is a gradient, so its Jacobian (the Hessian of ``log p_t``) is symmetric. We measure the
asymmetry ratio ``lambda = ||J - J^T||_F / ||J||_F`` (and QCSBM's NAsym) of the score implied by
trained networks at every noise level, with exact forward-mode Jacobians (D <= 64), against two
controls: the exact oracle score (lambda ~ 0, float32 rounding; for images, the exact score of
the Gaussian fitted to the data) and an untrained network. Beyond ``max_exact_dim`` (MNIST,
CIFAR-10) we take the authors' path: K x K principal sub-Jacobians on random coordinates (any
asymmetric block certifies non-conservativity) with probe estimates of the full ratio; on the
digits U-Net we show that both estimators agree with the exact numbers.

:func:`measure_asymmetry` is the measurement on its own: any score field, a process and clean
samples in, rows, numbers and figures out (a pretrained network's field works the same way).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

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
    boxplot_by_level,
    fmt,
    image_grid,
    level_bar,
)
from wgfm.diagnostics import noised_samples, sweep
from wgfm.diagnostics.jacobian import (
    asymmetry,
    jacobian,
    probe_asymmetry,
    random_indices,
    sub_jacobian,
)
from wgfm.processes import AbstractProcess

Field = Callable[[Array, Array], Array]


def exact_asymmetry(field, x, t, *, checked: bool = True):
    """``(lambda, NAsym)`` of the exact Jacobian of ``field`` at ``(x, t)``."""
    a = asymmetry(jacobian(field, x, t, checked=checked))
    return a.ratio, a.nasym


class ExactAsymmetry(eqx.Module):
    """``(lambda, NAsym)`` of the exact ``D x D`` Jacobian, ``chunk_size`` columns at a time
    (a U-Net's 784 tangents at once would hold 784 copies of its activations)."""

    chunk_size: int = eqx.field(static=True)

    def __call__(self, field, x, t, *, checked: bool = True):
        a = asymmetry(jacobian(field, x, t, chunk_size=self.chunk_size, checked=checked))
        return a.ratio, a.nasym


class SubAndProbe(eqx.Module):
    """``(sub-Jacobian lambda, probe estimate of lambda)`` at ``(x, t)``: the ``k x k`` principal
    block on random coordinates and ``num_probes`` Rademacher probes (one key per sample)."""

    k: int = eqx.field(static=True)
    num_probes: int = eqx.field(static=True)

    def __call__(self, field, x, t, *, key, checked: bool = True):
        k1, k2 = jax.random.split(key)
        idx = random_indices(k1, x.size, self.k)
        sub = asymmetry(sub_jacobian(field, x, t, idx, checked=checked)).ratio
        probe = probe_asymmetry(field, x, t, key=k2, num_probes=self.num_probes, checked=checked)
        return sub, probe.stats.ratio


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
    :func:`experiments.assets.gaussian_fit_score`; ``control_name`` names it in the rows), and
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
        res = {k: _values(sweep(exact_asymmetry, f, xs, tsj, checked=False,
                                what="Jacobian asymmetry values are",
                                progress=level_bar(f"Jacobians, {label}, {k}", x0)))
               for k, f in fields.items()}  # fmt: skip
        what = "lambda"
    else:
        diag = SubAndProbe(sub_jacobian_size, num_probes)  # the same coordinates for every field
        res = {k: _values(sweep(diag, f, xs, tsj, key=k_sub, batch_size=batch_size,
                                checked=False, what="sub-Jacobian or probe asymmetry values are",
                                progress=level_bar(f"sub-Jacobians, {label}, {k}", x0)))
               for k, f in fields.items()}  # fmt: skip
        what = f"{sub_jacobian_size}x{sub_jacobian_size} sub-Jacobian lambda"
    lam = {k: v[0] for k, v in res.items()}  # (n, L) each
    med = {k: np.median(v, axis=0) for k, v in lam.items()}
    k = sub_jacobian_size
    ylabel = "asymmetry ratio ||J-J^T||/||J||" if exact else f"{k}x{k} sub-Jacobian asymmetry ratio"
    fig = boxplot_by_level(np.asarray(ts), lam, ylabel, f"Differential constraint ({label})")
    rows = _rows(label, med, what, control_name, image=x0.ndim > 2)
    if exact:
        numbers = {"levels": np.asarray(ts), "median_ratio": med,
                   "median_nasym": {k: np.median(v[1], axis=0) for k, v in res.items()}}  # fmt: skip
        if estimator_check:
            k = min(sub_jacobian_size, dim)
            rows.append(_estimators_agree(label, field, xs, tsj, lam["trained"], k_sub, numbers,
                                          k, num_probes))  # fmt: skip
    else:
        numbers = {"levels": np.asarray(ts), "sub_jacobian_size": sub_jacobian_size,
                   "median_sub_ratio": med,
                   "median_probe_ratio": {k: np.median(v[1], axis=0) for k, v in res.items()}}  # fmt: skip
        if exact_samples > 0:
            rows.append(_exact_subset(label, field, xs[:, :exact_samples], tsj, res["trained"],
                                      numbers))  # fmt: skip
    return Measurement(rows, numbers, {f"lambda_{label}": fig})


def _exact_subset(label, field, xs, ts, estimates, numbers: dict) -> ClaimRow:
    """Exact ``D x D`` Jacobians of ``field`` on the samples ``xs`` ``(L, m, ...)`` (the first
    ``m`` of each level), and the sub-Jacobian and probe ratios ``estimates`` of the same
    samples against them."""
    m = xs.shape[1]
    out = sweep(ExactAsymmetry(64), field, xs, ts, batch_size=1, checked=False,
                what="exact Jacobian asymmetry values are",
                progress=f"exact Jacobians, {label}")  # fmt: skip
    exact = _values(out)[0]  # (m, L)
    sub, probe = (e[:m] for e in estimates)
    numbers["median_exact_ratio"] = np.median(exact, axis=0)
    numbers["exact_samples"] = m
    return _agreement(label, sub, probe, exact, numbers, int(numbers["sub_jacobian_size"]),
                      f"{m} per level")  # fmt: skip


def _values(result) -> tuple[np.ndarray, ...]:
    """A sweep's two value arrays as ``(n, L)`` (samples first, as the box plots take them)."""
    return tuple(np.asarray(v).T for v in result.values)


def _rows(label: str, med: dict, what: str, control_name: str, *, image: bool) -> list[ClaimRow]:
    tr = med["trained"]
    if "oracle score" in med:
        ctl = med["oracle score"]
        ratio = tr / np.maximum(ctl, 1e-30)
        gradient_row = ClaimRow(
            f"{label}: trained score is not a gradient at every noise level",
            f"median {what} {fmt(tr.min())}..{fmt(tr.max())}",
            f"{control_name}: max median {fmt(ctl.max())}",
            bool(np.all(ratio > 100) and np.max(ctl) < 1e-4),
            f"trained/control >= {fmt(ratio.min())} at every level"
            if np.max(ctl) > 0
            else "the control's Jacobian is symmetric to the last bit (lambda exactly 0)",
        )
    else:  # no gradient control: float32 rounding of a gradient field stays orders below this
        gradient_row = ClaimRow(
            f"{label}: score is not a gradient at every noise level",
            f"median {what} {fmt(tr.min())}..{fmt(tr.max())}",
            "no gradient control given",
            bool(np.all(tr > 1e-3)),
            "threshold 1e-3 at every level",
        )
    fifth = max(1, len(tr) // 5)
    low, high = tr[:fifth], tr[-fifth:]
    untrained = (
        f"untrained: {fmt(med['untrained'].mean())} on average"
        + (" (output layer drawn at random, not zero)" if image else "")
        if "untrained" in med
        else "no untrained control given"
    )
    trend_row = ClaimRow(
        f"{label}: asymmetry grows towards low noise (paper's trend)",
        f"median {what}, lowest-noise fifth {fmt(low.mean())} vs highest {fmt(high.mean())}",
        untrained,
        bool(low.mean() > high.mean()),
        "observation",
    )
    return [gradient_row, trend_row]


def _estimators_agree(label, field, xs, ts, exact, key, numbers: dict, k: int,
                      num_probes: int) -> ClaimRow:  # fmt: skip
    """The large-D estimators against the exact ratios ``exact`` ``(n, L)`` of ``xs``, on the
    first 8 samples: ``k x k`` sub-Jacobians and ``num_probes``-probe estimates."""
    n = min(8, xs.shape[1])
    out = sweep(SubAndProbe(k, num_probes), field, xs[:, :n], ts, key=key, batch_size=16,
                checked=False, what="sub-Jacobian or probe asymmetry values are")  # fmt: skip
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


def run(ctx: Context, report: Report, title: str) -> None:
    sz = ctx.sizes
    ts = times_grid(ctx.process, sz.num_levels)
    summary: dict[str, dict] = {}
    for data in ctx.datasets:
        image = data not in MIXTURES
        n = (sz.image_diag_samples if image else None) or sz.num_diag_samples
        x0 = ctx.clean_samples(data, n, ctx.key(f"diff-x-{data}"))
        check = (data == "digits" or data == "mnist-latent") and sz.estimator_check
        m = measure_asymmetry(
            ctx.network(data).score(),
            ctx.process,
            x0,
            ts,
            key=ctx.key(f"diff-{data}"),
            gradient=ctx.oracle_score(data),
            untrained=ctx.network(data, steps=0).score(),
            label=data,
            control_name="exact score of a Gaussian fit" if image else "exact oracle score",
            max_exact_dim=sz.max_exact_dim,
            sub_jacobian_size=sz.sub_jacobian_size,
            estimator_check=check,
            exact_samples=sz.exact_samples if image else 0,
            batch_size=4 if image and x0[0].size > sz.max_exact_dim else 16,
        )
        report.add_measurement(title, m)
        summary[data] = m.numbers
        if data in ("mnist", "mnist-latent", "cifar10") and sz.figure_samples > 0:
            what = "decoded latent DDIM-50 samples" if data == "mnist-latent" else "DDIM-50 samples"
            fig = image_grid(ctx.generated(data, sz.figure_samples),
                             f"{what} of the measured network ({data})")  # fmt: skip
            report.save_figure(title, fig, f"samples_{data}")
        if data == "mnist-latent":
            report.add(title, pixel_vs_latent(m.numbers, ctx.config.pixel_run))
        if data == "digits" and not check:
            report.notes[title] = (
                "The check of the large-D estimators (16x16 sub-Jacobians, 32 probes) against "
                "the exact digits ratios runs in the full reproduction, not with --quick."
            )
    report.numbers["differential"] = summary


def pixel_vs_latent(latent: dict, pixel_run: Path | None) -> ClaimRow:
    """The paper's comparison of the two settings: the latent network's exact asymmetry ratio
    by level (``latent``, claim-1 numbers of mnist-latent) against the pixel network's exact
    ratios (claim-1 numbers of a ``--preset mnist`` run in ``pixel_run``), on their common
    levels, and whether asymmetry grows towards low noise in both."""
    claim = "pixel vs latent: both spaces are non-conservative, growing towards low noise"
    lat = np.asarray(latent["median_ratio"]["trained"])
    pix_numbers = _pixel_numbers(pixel_run)
    if pix_numbers is None or "median_exact_ratio" not in pix_numbers:
        return ClaimRow(claim, f"latent median lambda {fmt(lat.min())}..{fmt(lat.max())}",
                        "no pixel run given (--pixel-run OUT of `--preset mnist`)", bool(lat.min() > 1e-2),
                        "latent only")  # fmt: skip
    pl, pv = np.asarray(pix_numbers["levels"]), np.asarray(pix_numbers["median_exact_ratio"])
    ll = np.asarray(latent["levels"])
    common = [(i, j) for i, a in enumerate(ll) for j, b in enumerate(pl) if abs(a - b) < 1e-6]
    if len(common) < 2:
        return ClaimRow(claim, "pixel and latent runs share fewer than 2 noise levels",
                        f"pixel levels {len(pl)}, latent {len(ll)}", False, "not comparable")  # fmt: skip
    li, pi = (np.array(c) for c in zip(*common, strict=True))
    lat, pix = lat[li], pv[pi]
    fifth = max(1, len(li) // 5)
    ends = {k: (float(v[:fifth].mean()), float(v[-fifth:].mean())) for k, v in
            (("latent", lat), ("pixel", pix))}  # fmt: skip
    both_grow = all(low > high for low, high in ends.values())
    return ClaimRow(
        claim,
        "exact median lambda, lowest- vs highest-noise fifth of the shared levels: "
        + ", ".join(f"{k} {fmt(a)} vs {fmt(b)}" for k, (a, b) in ends.items()),
        f"latent/pixel median over {len(li)} shared levels: {fmt(float(np.median(lat / pix)))}",
        bool(lat.min() > 1e-2 and pix.min() > 1e-2 and both_grow),
        "pixel ratios from its exact-Jacobian subset",
    )


def _pixel_numbers(pixel_run: Path | None) -> dict | None:
    if pixel_run is None:
        return None
    path = Path(pixel_run)
    path = path / "results.json" if path.is_dir() else path
    if not path.is_file():
        raise ValueError(f"`pixel_run` must be a `--preset mnist` output or its results.json: "
                         f"{path} does not exist.")  # fmt: skip
    res = json.loads(path.read_text())
    return res.get("numbers", {}).get("differential", {}).get("mnist")
