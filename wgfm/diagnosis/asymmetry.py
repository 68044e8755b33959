"""Claim 1, the differential constraint: is the score's Jacobian symmetric?

:func:`measure_asymmetry` takes any score field, a process and clean samples, noises the
samples at every level and compares the field's Jacobian asymmetry with the optional controls
of :mod:`wgfm.diagnostics.controls` on the same points; :class:`JacobianAsymmetry` is the claim in
:data:`wgfm.diagnosis.registry.CLAIMS`, which ``wgfm diagnose`` and the reproduction's claim 1
both measure with.
"""

from __future__ import annotations

from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PRNGKeyArray

from ..diagnostics import noised_samples, sweep
from ..diagnostics.adaptive import AdaptiveSubAndProbe
from ..diagnostics.kernels import ExactAsymmetry, SubAndProbe
from ..processes import AbstractProcess
from ..report import ClaimRow, Measurement, fmt, level_bar
from ..typing import Field
from .budget import JacobianChoice, JacobianPolicy
from .claim import NO_CONTROLS, AbstractClaim, ClaimInputs, Controls, claim_fields, noised_points
from .sizes import DiagnoseSizes


class JacobianAsymmetry(AbstractClaim):
    """Claim 1: the Jacobian asymmetry of the score at every noise level (:func:`measure_asymmetry`).

    Attributes:
        estimator_check: :func:`measure_asymmetry`'s check of the large-D estimators against
            exact Jacobians (the reproduction's; the diagnosis leaves it off).
        exact_samples: on the probe path, exact Jacobians of this many samples per level to check
            the estimators against (0: none).
    """

    number: ClassVar[int] = 1
    key: ClassVar[str] = "differential"
    title: ClassVar[str] = "1. Differential constraint: Jacobian asymmetry"
    estimator_check: bool = False
    exact_samples: int = 0

    def num_levels(self, sizes: DiagnoseSizes) -> int:
        return sizes.num_levels

    def num_samples(self, sizes: DiagnoseSizes) -> int:
        return sizes.num_samples

    def options(self, sizes: DiagnoseSizes) -> dict[str, Any]:
        return dict(
            policy=JacobianPolicy(sizes.jacobians, sizes.max_exact_dim, sizes.exact_budget_s),
            sub_jacobian_size=sizes.sub_jacobian_size,
            num_probes=sizes.num_probes,
            rel_se=sizes.rel_se,
            max_probes=sizes.max_probes,
            batch_size=sizes.batch_size,
            estimator_check=self.estimator_check,
            exact_samples=self.exact_samples,
        )

    def measurement(self, *args, **kwargs) -> Measurement:
        return measure_asymmetry(*args, **kwargs)

    def plan(self, inputs: ClaimInputs) -> dict[str, Any]:
        x = inputs
        xs, ts = noised_points(x.process, x.x0, self.num_levels(x.sizes), x.key)
        fields = claim_fields(x.score, x.controls)
        policy = self.options(x.sizes)["policy"]
        return {"jacobian": _choose(policy, x.score, xs, ts, len(fields), x.mesh).numbers()}

    def level_values(self, inputs: ClaimInputs, plan, levels):
        x = inputs
        xs, ts = noised_points(x.process, x.x0, self.num_levels(x.sizes), x.key)
        opts = self.options(x.sizes)
        for i in levels:
            yield (
                i,
                asymmetry_values(
                    claim_fields(x.score, x.controls),
                    xs,
                    ts,
                    exact=bool(plan["jacobian"]["exact"]),
                    key=jax.random.split(x.key)[1],
                    mesh=x.mesh,
                    select=[i],
                    **{k: opts[k] for k in _VALUE_OPTIONS},
                ),
            )

    def summarize(self, values, plan, sizes, *, ts, label="model", control_name="", image=True):
        opts = self.options(sizes)
        choice = JacobianChoice.from_numbers(plan["jacobian"])
        rows, numbers, fig = summarize_asymmetry(
            values,
            ts,
            choice,
            label=label,
            control_name=control_name,
            image=image,
            **{k: opts[k] for k in _VALUE_OPTIONS if k != "batch_size"},
        )
        return Measurement(rows, numbers, {f"lambda_{label}": fig})

    def header(self, numbers: dict[str, Any]) -> dict[str, str]:
        out = {f"claim {self.number} Jacobians": numbers["jacobian"]["description"]}
        if "adaptive" in numbers:
            out[f"claim {self.number} probes"] = adaptive_line(numbers["adaptive"])
        return out


# The options of measure_asymmetry that asymmetry_values reads.
_VALUE_OPTIONS = ("sub_jacobian_size", "num_probes", "rel_se", "max_probes", "batch_size")


def measure_asymmetry(
    field: Field,
    process: AbstractProcess,
    x0: Array,
    ts,
    *,
    key: PRNGKeyArray,
    controls: Controls = NO_CONTROLS,
    label: str = "model",
    policy: JacobianPolicy | None = None,
    sub_jacobian_size: int = 16,
    num_probes: int = 32,
    rel_se: float | None = None,
    max_probes: int = 256,
    batch_size: int = 16,
    estimator_check: bool = False,
    exact_samples: int = 0,
    mesh=None,
) -> Measurement:
    """Claim 1 on one score ``field``: its Jacobian asymmetry at every level of ``ts``.

    The clean samples are noised once per level (the same ``x0`` at every level), and the field
    and each control are measured on the same points: the ratio
    ``lambda = ||J - J^T||_F / ||J||_F`` of exact ``D x D`` Jacobians (docs/design.md §1), or
    else ``num_probes``-probe estimates of it with their standard errors (the headline) and
    ``K x K`` sub-Jacobians (a certificate), as ``policy`` chooses.

    Args:
        field: the score field ``(x (*shape), t ()) -> (*shape)``.
        process: the forward process that noises ``x0``.
        x0: clean samples, shape ``(n, *shape)`` (vectors or images).
        ts: noise levels, shape ``(L,)``.
        key: noise, sub-Jacobian coordinates and probes.
        controls: the fields measured beside ``field`` (:class:`Controls`): a gradient on the
            data's scale (the exact score, or
            :func:`wgfm.diagnostics.controls.gaussian_fit_score`), the same architecture
            untrained, and how the rows name the first.
        label: the field's name in rows; figures are named ``lambda_<label>``.
        policy: exact or probes (:class:`wgfm.diagnosis.budget.JacobianPolicy`; default exact
            up to ``D = 64``); ``numbers["jacobian"]`` records the choice and why.
        sub_jacobian_size: ``K`` of the ``K x K`` sub-Jacobians.
        num_probes: probes of the full-ratio estimate (a JVP and a VJP each), or of each
            round with ``rel_se``.
        rel_se: with it, probes are drawn in rounds until the ratio's relative s.e. is at most
            ``rel_se`` (:class:`wgfm.diagnostics.adaptive.AdaptiveSubAndProbe`);
            ``numbers["adaptive"]`` records the passes used, the s.e. reached and the skew
            part's effective rank.
        max_probes: the most probes ``rel_se`` may spend.
        batch_size: samples at a time.
        estimator_check: exact path only: also run the large-D estimators on up to 8 samples
            and report their agreement with the exact ratios.
        exact_samples: probe path only: exact Jacobians of ``field`` on this many samples per
            level, against which the estimators are checked.
        mesh: a ``jax.sharding.Mesh`` splitting the samples over its devices (same numbers).

    Returns:
        A :class:`wgfm.report.Measurement`: the gradient and trend rows (and the estimator
        row), per-level medians ``(L,)`` of each field's ratios, the figure.

    Raises:
        ValueError: naming the first non-finite level and sample.
    """
    k_noise, k_sub = jax.random.split(key)
    x0 = jnp.asarray(x0)
    tsj = jnp.asarray(ts, x0.dtype)
    xs = noised_samples(process, x0, tsj, key=k_noise)
    fields = claim_fields(field, controls)
    choice = _choose(policy or JacobianPolicy(), field, xs, tsj, len(fields), mesh)
    opts: dict[str, Any] = dict(
        sub_jacobian_size=sub_jacobian_size,
        num_probes=num_probes,
        rel_se=rel_se,
        max_probes=max_probes,
    )
    res = asymmetry_values(
        fields,
        xs,
        tsj,
        exact=choice.exact,
        key=k_sub,
        batch_size=batch_size,
        mesh=mesh,
        label=label,
        **opts,
    )
    rows, numbers, fig = summarize_asymmetry(
        res,
        np.asarray(ts),
        choice,
        label=label,
        control_name=controls.control_name,
        image=x0.ndim > 2,
        **opts,
    )
    if choice.exact and estimator_check:
        k = min(sub_jacobian_size, int(np.prod(x0.shape[1:])))
        lam = res["trained"][0]
        rows.append(_estimators_agree(label, field, xs, tsj, lam, k_sub, numbers, k, num_probes))
    if not choice.exact and exact_samples > 0:
        rows.append(
            _exact_subset(label, field, xs[:, :exact_samples], tsj, res["trained"], numbers)
        )
    numbers["jacobian"] = numbers.pop("jacobian")  # last, as results.json has always had it
    return Measurement(rows, numbers, {f"lambda_{label}": fig})


def _choose(policy: JacobianPolicy, field, xs, ts, num_fields: int, mesh) -> JacobianChoice:
    """``policy``'s choice for every field's Jacobians at the points ``xs`` ``(L, n, ...)``,
    timed (if at all) at the middle level's first sample."""
    devices = 1 if mesh is None else int(mesh.devices.size)
    # Controls cost no more than the trained field (the same architecture, or a Gaussian's
    # linear score): time it alone and count every field's Jacobians at its price.
    count = -(-xs.shape[1] // devices) * len(ts) * num_fields
    mid = len(ts) // 2
    return policy.choose(field, xs[mid, 0], ts[mid], count=count)


def asymmetry_values(
    fields: dict[str, Field],
    xs: Array,
    ts: Array,
    *,
    exact: bool,
    key: PRNGKeyArray,
    sub_jacobian_size: int,
    num_probes: int,
    rel_se: float | None,
    max_probes: int,
    batch_size: int,
    mesh=None,
    select=None,
    label: str = "model",
) -> dict[str, tuple[np.ndarray, ...]]:
    """Claim 1's per-sample values of each field at the points ``xs`` ``(L, n, ...)``: exact
    ``(lambda, NAsym)``, or the sub-Jacobian ratio, the probe ratio and its s.e. (and with
    ``rel_se`` the passes and effective rank), each ``(n, L)`` (``(n, len(select))`` at the
    levels ``select`` only, as :func:`wgfm.diagnostics.sweep` takes it). ``key``: the
    sub-Jacobian coordinates and probes, the same for every field."""
    if exact:
        diag, what, bar, bs = ExactAsymmetry(), "Jacobian asymmetry values are", "Jacobians", None
    else:
        diag = (
            SubAndProbe(sub_jacobian_size, num_probes)
            if rel_se is None
            else AdaptiveSubAndProbe(sub_jacobian_size, rel_se, max_probes, num_probes)
        )
        what, bar, bs = "sub-Jacobian or probe asymmetry values are", "sub-Jacobians", batch_size
    return {
        k: _values(
            sweep(
                diag,
                f,
                xs,
                ts,
                key=None if exact else key,
                mesh=mesh,
                batch_size=bs,
                checked=False,
                what=what,
                progress=None if select is not None else level_bar(f"{bar}, {label}, {k}", xs[0]),
                select=select,
            )
        )
        for k, f in fields.items()
    }


def summarize_asymmetry(
    res: dict[str, tuple[np.ndarray, ...]],
    ts: np.ndarray,
    choice: JacobianChoice,
    *,
    label: str,
    control_name: str,
    image: bool,
    sub_jacobian_size: int,
    num_probes: int,
    rel_se: float | None,
    max_probes: int,
) -> tuple[list[ClaimRow], dict, Any]:
    """Claim 1's rows, numbers (per-level medians; ``numbers["jacobian"]`` the choice) and
    figure from :func:`asymmetry_values` ``res`` at every level of ``ts`` ``(L,)``."""
    exact = choice.exact
    lam = {k: v[0] for k, v in res.items()}  # (n, L) each
    med = {k: np.median(v, axis=0) for k, v in lam.items()}
    k = sub_jacobian_size
    ylabel = "asymmetry ratio ||J-J^T||/||J||" if exact else f"{k}x{k} sub-Jacobian asymmetry ratio"
    from ..figures import boxplot_by_level

    fig = boxplot_by_level(np.asarray(ts), lam, ylabel, f"Differential constraint ({label})")
    if exact:
        what = "lambda"
        rows = _rows(label, med, what, control_name, image=image)
        numbers = {
            "levels": np.asarray(ts),
            "median_ratio": med,
            "median_nasym": {k: np.median(v[1], axis=0) for k, v in res.items()},
        }
    else:  # the probe estimate is the full-dimension number; sub-Jacobians certify
        what = f"{k}x{k} sub-Jacobian lambda"
        how = (
            f"{num_probes}-probe estimate"
            if rel_se is None
            else f"probes until a {100 * rel_se:g}% s.e., at most {max_probes}"
        )
        headline = (
            f"full-dimension lambda ({how})",
            {k: np.median(v[1], axis=0) for k, v in res.items()},
            {k: np.median(v[2], axis=0) for k, v in res.items()},
        )
        rows = _rows(label, med, what, control_name, image=image, headline=headline)
        numbers = {
            "levels": np.asarray(ts),
            "sub_jacobian_size": sub_jacobian_size,
            "num_probes": num_probes,
            "median_sub_ratio": med,
            "median_probe_ratio": headline[1],
            "median_probe_ratio_se": headline[2],
            "probes_for_10pct_se": {
                k: probes_for(_probes_used(v, num_probes), v[1], v[2]) for k, v in res.items()
            },
        }
        if rel_se is not None:
            numbers["adaptive"] = adaptive_numbers(res, rel_se, max_probes, num_probes)
    numbers["jacobian"] = choice.numbers()
    return rows, numbers, fig


def headline_lambda(numbers: dict) -> tuple[np.ndarray, np.ndarray, str]:
    """The full-dimension lambda of the trained field from claim-1 ``numbers`` of
    :func:`measure_asymmetry`: the exact ratios or the probe estimate, never the sub-Jacobian
    certificate.

    Args:
        numbers: a :class:`wgfm.report.Measurement`'s ``numbers`` of :func:`measure_asymmetry`
            (or results.json's).

    Returns:
        ``(levels, lambda, what)``: the levels ``(L,)``, the per-level median lambda ``(L,)``
        and ``"exact lambda"`` or ``"probe lambda"``.
    """
    levels = np.asarray(numbers["levels"], float)
    if "median_probe_ratio" in numbers:
        return levels, np.asarray(numbers["median_probe_ratio"]["trained"]), "probe lambda"
    return levels, np.asarray(numbers["median_ratio"]["trained"]), "exact lambda"


def compare_spaces(
    latent: tuple[np.ndarray, np.ndarray],
    pixel: tuple[np.ndarray, np.ndarray],
    *,
    what: str,
    quantity: str = "median lambda",
) -> ClaimRow:
    """The paper's comparison of its two settings: the latent network's per-level lambda against
    the pixel network's on their shared levels (equal to 1e-6), and whether asymmetry grows
    towards low noise in both.

    Args:
        latent: ``(levels (L,), lambda (L,))`` of the latent network (:func:`headline_lambda`).
        pixel: ``(levels (P,), lambda (P,))`` of the pixel network.
        what: where the pixel numbers come from (the row's last column).
        quantity: what lambda is (exact, probe estimate).

    Returns:
        A :class:`wgfm.report.ClaimRow`: holds when both are above 1e-2 at every shared level
        and grow towards low noise; "not comparable" with fewer than 2 shared levels.
    """
    claim = "pixel vs latent: both spaces are non-conservative, growing towards low noise"
    (ll, lat), (pl, pv) = (tuple(np.asarray(a, float) for a in s) for s in (latent, pixel))
    common = [(i, j) for i, a in enumerate(ll) for j, b in enumerate(pl) if abs(a - b) < 1e-6]
    if len(common) < 2:
        return ClaimRow(
            claim,
            "pixel and latent runs share fewer than 2 noise levels",
            f"pixel levels {len(pl)}, latent {len(ll)}",
            False,
            "not comparable",
        )
    li, pi = (np.array(c) for c in zip(*common, strict=True))
    lat, pix = lat[li], pv[pi]
    fifth = max(1, len(li) // 5)
    ends = {
        k: (float(v[:fifth].mean()), float(v[-fifth:].mean()))
        for k, v in (("latent", lat), ("pixel", pix))
    }
    both_grow = all(low > high for low, high in ends.values())
    return ClaimRow(
        claim,
        f"{quantity}, lowest- vs highest-noise fifth of the shared levels: "
        + ", ".join(f"{k} {fmt(a)} vs {fmt(b)}" for k, (a, b) in ends.items()),
        f"latent/pixel median over {len(li)} shared levels: {fmt(float(np.median(lat / pix)))}",
        # 1e-2: three orders above what float32 rounding gives a gradient field's lambda
        bool(lat.min() > 1e-2 and pix.min() > 1e-2 and both_grow),
        what,
    )


def probes_for(num_probes, ratio, ratio_se, target: float = 0.1) -> float:
    """Probes for a relative standard error ``target`` of the ratio: ``num_probes (r / target)^2``
    with ``r`` the median over samples and levels of ``ratio_se / ratio`` (the s.e. shrinks as
    one over the root of the probe count). Infinite when most ratios are exactly 0 (they have
    no relative s.e.). ``num_probes``: one count, or each point's (adaptive stopping), whose
    ``num_probes_i (r_i / target)^2`` then gives the median."""
    ratio, ratio_se = np.asarray(ratio, float), np.asarray(ratio_se, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(ratio > 0, ratio_se / ratio, np.inf)
    if np.ndim(num_probes) == 0:
        return float(num_probes * (np.median(rel) / target) ** 2)
    # adaptive stopping: each point's own probe count
    return float(np.median(np.asarray(num_probes, float) * (rel / target) ** 2))


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
    sub, probe = (e[:m] for e in estimates[:2])
    numbers["median_exact_ratio"] = np.median(exact, axis=0)
    numbers["exact_samples"] = m
    return _agreement(
        label, sub, probe, exact, numbers, int(numbers["sub_jacobian_size"]), f"{m} per level"
    )


def _probes_used(values: tuple[np.ndarray, ...], num_probes: int):
    """Probes behind each estimate: ``num_probes``, or per point from its passes (adaptive:
    ``passes = 2 probes + 1``)."""
    return num_probes if len(values) < 4 else (values[3] - 1) / 2


def adaptive_numbers(res: dict, rel_se: float, max_probes: int, round_probes: int) -> dict:
    """results.json's record of adaptive stopping: per field and level, the median network
    passes per point, the median relative s.e. reached, and the median effective rank of the
    skew part (0 where the probes did not resolve it: the forward estimator)."""
    out: dict = {"rel_se": rel_se, "max_probes": max_probes, "round_probes": round_probes}
    rel = {
        k: np.where(v[1] > 0, v[2] / np.where(v[1] > 0, v[1], 1), np.inf) for k, v in res.items()
    }
    out["median_passes"] = {k: np.median(v[3], axis=0) for k, v in res.items()}
    out["total_passes"] = {k: float(np.sum(v[3])) for k, v in res.items()}
    out["median_relative_se"] = {k: np.median(r, axis=0) for k, r in rel.items()}
    out["median_effective_rank"] = {k: np.median(v[4], axis=0) for k, v in res.items()}
    return out


def adaptive_line(a: dict) -> str:
    """The report header's line on adaptive stopping (the trained field's numbers)."""
    passes = np.asarray(a["median_passes"]["trained"], float)
    rel = np.asarray(a["median_relative_se"]["trained"], float)
    rank = np.asarray(a["median_effective_rank"]["trained"], float)
    line = (
        f"rounds of {a['round_probes']} probes until lambda's s.e. is at most "
        f"{100 * a['rel_se']:g}% of it (at most {a['max_probes']}): median passes per point "
        f"{fmt(passes.min())}..{fmt(passes.max())} by level ({fmt(a['total_passes']['trained'])} "
        f"in all for the model), relative s.e. reached {fmt(100 * rel.min())}..."
        f"{fmt(100 * rel.max())}%"
    )
    if np.all(rank > 0):
        line += (
            f"; effective rank of the skew part {fmt(rank.min())}..{fmt(rank.max())} "
            "(an upper bound from Rademacher probes; one probe's relative variance is about "
            "1 / (2 r_eff) on lambda)"
        )
    return line


def _values(result) -> tuple[np.ndarray, ...]:
    """A sweep's value arrays as ``(n, L)`` (samples first, as the box plots take them)."""
    return tuple(np.asarray(v).T for v in result.values)


def _rows(
    label: str,
    med: dict,
    what: str,
    control_name: str,
    *,
    image: bool,
    headline: tuple[str, dict, dict] | None = None,
) -> list[ClaimRow]:
    """The verdict on the certificate ``med`` (exact lambda, or sub-Jacobian lambda on the
    probe path) and the trend; with ``headline`` (its name and the per-level medians of a
    full-dimension estimate and of its standard error), the numbers reported first are the
    headline's, each with its s.e., and the sub-Jacobian is labelled a certificate: an
    asymmetric block proves a field is not a gradient, but a random K x K block of an image is
    nearly diagonal and its ratio is not the size of the full one."""
    tr = med["trained"]
    if headline is None:
        measured = f"median {what} {fmt(tr.min())}..{fmt(tr.max())}"
        size = (what, med, None)
    else:
        size = headline
        h, e = headline[1]["trained"], headline[2]["trained"]
        lo, hi = int(np.argmin(h)), int(np.argmax(h))
        measured = (
            f"median {headline[0]} {_pm(h[lo], e[lo])}..{_pm(h[hi], e[hi])}; certificate: "
            f"median {what} {fmt(tr.min())}..{fmt(tr.max())}"
        )
    return [
        _gradient_row(label, med, what, control_name, measured, size),
        _trend_row(label, med, size, image),
    ]


def _gradient_row(
    label: str, med: dict, what: str, control_name: str, measured: str, size: tuple
) -> ClaimRow:
    """Whether the trained field is not a gradient: its certificate ``med`` against the
    gradient control's (100 times above it, the control below 1e-4), or without a control
    above 1e-3. ``size``: the reported ``(name, medians, s.e. or None)``."""
    tr = med["trained"]
    if "oracle score" not in med:  # float32 rounding of a gradient field stays orders below
        return ClaimRow(
            f"{label}: score is not a gradient at every noise level",
            measured,
            "no gradient control given",
            bool(np.all(tr > 1e-3)),
            "threshold 1e-3 at every level",
        )
    size_what, size_med, size_se = size
    ctl = med["oracle score"]
    ratio = tr / np.maximum(ctl, 1e-30)
    ctl_text = f"{control_name}: max median {fmt(ctl.max())}"
    if size_se is not None:
        o, oe = size_med["oracle score"], size_se["oracle score"]
        i = int(np.argmax(o))
        ctl_text = (
            f"{control_name}: max median {size_what} {_pm(o[i], oe[i])}, {what} {fmt(ctl.max())}"
        )
    return ClaimRow(
        f"{label}: trained score is not a gradient at every noise level",
        measured,
        ctl_text,
        bool(np.all(ratio > 100) and np.max(ctl) < 1e-4),
        f"trained/control >= {fmt(ratio.min())} at every level"
        if np.max(ctl) > 0
        else "the control's Jacobian is symmetric to the last bit (lambda exactly 0)",
    )


def _trend_row(label: str, med: dict, size: tuple, image: bool) -> ClaimRow:
    """The paper's trend, asymmetry growing towards low noise, in the reported ``size``
    (``(name, medians, s.e. or None)``: the full-dimension estimate where there is one)."""
    size_what, size_med, size_se = size
    series = size_med["trained"]
    fifth = max(1, len(series) // 5)
    low, high = series[:fifth], series[-fifth:]
    if "untrained" in med:
        u = size_med["untrained"]
        avg = (
            fmt(u.mean())
            if size_se is None
            else _pm(u.mean(), float(np.mean(size_se["untrained"])))
        )
        untrained = f"untrained: {size_what} {avg} on average" + (
            " (output layer drawn at random, not zero)" if image else ""
        )
    else:
        untrained = "no untrained control given"
    return ClaimRow(
        f"{label}: asymmetry grows towards low noise (paper's trend)",
        f"median {size_what}, lowest-noise fifth {fmt(low.mean())} vs highest {fmt(high.mean())}",
        untrained,
        bool(low.mean() > high.mean()),
        "observation",
    )


def _pm(value, se) -> str:
    """``value ± se`` for a table cell (the s.e. to two significant digits)."""
    return f"{fmt(value)} ± {fmt(se, 2)}"


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
    sub, probe = _values(out)[:2]
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
