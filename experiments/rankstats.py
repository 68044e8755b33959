"""Statistics of claim 4's designed experiment: rank and partial rank correlations, a
standardised regression, bootstrap intervals that resample clusters (a training run: its
snapshots and their perturbed copies), and verdicts with three outcomes, where an interval that
is NaN or empty decides nothing ("undecided", never "holds").

scipy supplies the Spearman coefficient and the bootstrap; the partial correlation (which scipy
lacks) is written here: for one control ``z``,
``r_xy.z = (r_xy - r_xz r_yz) / sqrt((1 - r_xz^2)(1 - r_yz^2))`` (e.g. Cohen et al., *Applied
Multiple Regression*, eq. 3.3.8), and the partial rank correlation is that formula on ranks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
from jaxtyping import Float, Int
from scipy import stats

__all__ = [
    "FAILS",
    "HOLDS",
    "UNDECIDED",
    "Interval",
    "equivalence_verdict",
    "cluster_bootstrap",
    "cluster_bootstrap_mean",
    "partial_corr",
    "partial_spearman",
    "rank_statistics",
    "spearman",
    "standardized_regression",
    "transport_verdict",
]


@dataclasses.dataclass(frozen=True)
class Interval:
    """A point estimate with a two-sided confidence interval ``[lo, hi]`` at ``level``."""

    estimate: float
    lo: float
    hi: float
    level: float = 0.95

    @property
    def decided(self) -> bool:
        """Whether the interval can decide anything: finite estimate and ends, ``lo <= hi``
        (a NaN compares false with everything, so every test on it would read "no")."""
        ends = (self.estimate, self.lo, self.hi)
        return bool(np.all(np.isfinite(ends)) and self.lo <= self.hi)

    @property
    def excludes_zero(self) -> bool:
        return bool(self.decided and (self.lo > 0 or self.hi < 0))

    @property
    def contains_zero(self) -> bool:
        """``lo <= 0 <= hi`` of a decided interval (a NaN one neither contains nor excludes 0)."""
        return bool(self.decided and self.lo <= 0 <= self.hi)

    @property
    def sign(self) -> int:
        """+1 or -1 where the interval excludes zero, 0 where it does not."""
        return int(np.sign(self.estimate)) if self.excludes_zero else 0

    def text(self, digits: int = 2) -> str:
        return f"{self.estimate:.{digits}f} [{self.lo:.{digits}f}, {self.hi:.{digits}f}]"


def spearman(a: Float[np.ndarray, " n"], b: Float[np.ndarray, " n"]) -> float:
    """Spearman's rank correlation (scipy: the Pearson correlation of tie-averaged ranks)."""
    return float(stats.spearmanr(np.asarray(a), np.asarray(b)).statistic)  # type: ignore[attr-defined]


def partial_corr(
    x: Float[np.ndarray, " n"], y: Float[np.ndarray, " n"], z: Float[np.ndarray, " n"]
) -> float:
    """Pearson partial correlation of ``x`` and ``y`` given one control ``z`` (module docstring
    formula): the correlation of what is left of ``x`` and of ``y`` after a linear fit on ``z``."""
    r = np.corrcoef(np.stack([np.asarray(x), np.asarray(y), np.asarray(z)]))
    rxy, rxz, ryz = r[0, 1], r[0, 2], r[1, 2]
    ax, ay = 1.0 - rxz**2, 1.0 - ryz**2
    # z determines x or y up to a line (1 - r^2 at float64 rounding, ~1e-16): nothing is left
    # to correlate.
    if min(ax, ay) < 1e-10:
        return float("nan")
    return float((rxy - rxz * ryz) / np.sqrt(ax * ay))


def partial_spearman(
    x: Float[np.ndarray, " n"], y: Float[np.ndarray, " n"], z: Float[np.ndarray, " n"]
) -> float:
    """Partial rank correlation of ``x`` and ``y`` given ``z``: :func:`partial_corr` of the
    tie-averaged ranks (the rank analogue of holding ``z`` fixed)."""
    rk = stats.rankdata
    return partial_corr(rk(x), rk(y), rk(z))


def rank_statistics(
    y: Float[np.ndarray, " n"], x1: Float[np.ndarray, " n"], x2: Float[np.ndarray, " n"]
) -> Float[np.ndarray, " 6"]:
    """From one ranking of each variable: Spearman of ``y`` with ``x1`` and with ``x2``, the
    partial rank correlations of ``y`` with ``x1`` given ``x2`` and with ``x2`` given ``x1``,
    and the standardised rank-regression slopes of ``y`` on both. Equal to :func:`spearman`,
    :func:`partial_spearman` and :func:`standardized_regression` on the ranks (one ranking
    instead of seven, for the bootstrap's thousands of calls)."""
    ry, r1, r2 = (stats.rankdata(a) for a in (y, x1, x2))
    r = np.corrcoef(np.stack([ry, r1, r2]))

    def partial(a, b, c):  # r_ab.c from the correlation matrix (module docstring formula)
        aa, bb = 1.0 - r[a, c] ** 2, 1.0 - r[b, c] ** 2
        if min(aa, bb) < 1e-10:  # as partial_corr: c determines a or b, nothing is left
            return float("nan")
        return (r[a, b] - r[a, c] * r[b, c]) / np.sqrt(aa * bb)

    slope = standardized_regression(ry, r1, r2)
    return np.array([r[0, 1], r[0, 2], partial(0, 1, 2), partial(0, 2, 1), slope[0], slope[1]])


def standardized_regression(
    y: Float[np.ndarray, " n"], *xs: Float[np.ndarray, " n"]
) -> Float[np.ndarray, " k"]:
    """Least-squares slopes of z-scored ``y`` on z-scored ``xs`` (with an intercept): each
    slope is the change of ``y`` in standard deviations per standard deviation of that
    predictor with the others held fixed, so slopes of different predictors compare."""

    def z(a):
        a = np.asarray(a, np.float64)
        s = a.std()
        return (a - a.mean()) / s if s > 0 else np.zeros_like(a)

    design = np.column_stack([np.ones(len(y)), *[z(a) for a in xs]])
    coef, *_ = np.linalg.lstsq(design, z(y), rcond=None)
    return coef[1:]


def cluster_bootstrap(
    statistic: Callable[[np.ndarray], np.ndarray],
    clusters: Int[np.ndarray, " n"],
    *,
    seed: int,
    n_resamples: int = 2000,
    level: float = 0.95,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(estimate, lo, hi)`` of ``statistic(rows)`` (rows: indices into the data, returning a
    1-D array) with percentile bootstrap intervals that resample whole *clusters* with
    replacement: every row of a drawn cluster enters, once per draw.

    Rows of one cluster (a base network and its perturbed copies) share the network's own error,
    so they are not independent draws; resampling rows one by one would treat them as such and
    give intervals too narrow. The clusters are the independent units here. scipy's bootstrap
    resamples the cluster labels; the percentile method because BCa's jackknife over clusters
    would, with a dozen clusters, add its own noise to the few it has."""
    clusters = np.asarray(clusters)
    labels = np.unique(clusters)
    members = [np.flatnonzero(clusters == c) for c in labels]

    def on_clusters(drawn):
        return statistic(np.concatenate([members[int(i)] for i in drawn]))

    est = np.asarray(statistic(np.arange(len(clusters))), np.float64)
    low, high = _percentile_ci(on_clusters, len(labels), False, n_resamples, level, seed)
    return est, low, high


def _percentile_ci(on_clusters, num_clusters: int, vectorized: bool, n_resamples, level, seed):
    """scipy's percentile bootstrap over cluster indices ``0..num_clusters-1``: ``(low, high)``
    of ``on_clusters`` (the one resampling both cluster bootstraps share)."""
    res = stats.bootstrap(
        (np.arange(num_clusters),),
        on_clusters,
        vectorized=vectorized,
        paired=False,
        n_resamples=int(n_resamples),
        confidence_level=level,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    ci = res.confidence_interval
    return np.asarray(ci.low, np.float64), np.asarray(ci.high, np.float64)


HOLDS, FAILS, UNDECIDED = "holds", "does not hold", "undecided"


def cluster_bootstrap_mean(
    values: Float[np.ndarray, "n k"],
    clusters: Int[np.ndarray, " n"],
    *,
    seed: int,
    n_resamples: int = 2000,
    level: float = 0.95,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`cluster_bootstrap` of the column means of ``values``, the same draws and numbers,
    vectorised: the mean over the rows of the drawn clusters is the sum of their column sums
    over the sum of their sizes, so every resample is two gathers instead of a Python call
    (the statistic of the primary test, and of simulations that run it hundreds of times)."""
    values = np.asarray(values, np.float64)
    labels, inv = np.unique(np.asarray(clusters), return_inverse=True)
    sums = np.zeros((len(labels), values.shape[1]))
    np.add.at(sums, inv, values)
    counts = np.bincount(inv)

    def mean_of(drawn, axis=-1):  # drawn: (..., m) cluster indices -> (k, ...)
        del axis  # scipy resamples along the last axis
        drawn = np.asarray(drawn).astype(int)
        return np.moveaxis(sums[drawn].sum(-2) / counts[drawn].sum(-1)[..., None], -1, 0)

    low, high = _percentile_ci(mean_of, len(labels), True, n_resamples, level, seed)
    return values.mean(0), low, high


def transport_verdict(residual_given_lambda: Interval, lambda_given_residual: Interval) -> str:
    """The rank verdict: claim 4 holds where quality follows the residual (its partial rank
    correlation with the quality, given lambda, has an interval excluding zero, and positive:
    more residual, worse quality) and not lambda (the interval of lambda given the residual
    contains zero); undecided where either interval is NaN or empty."""
    if not (residual_given_lambda.decided and lambda_given_residual.decided):
        return UNDECIDED
    holds = (
        residual_given_lambda.excludes_zero
        and residual_given_lambda.estimate > 0
        and lambda_given_residual.contains_zero
    )
    return HOLDS if holds else FAILS


def equivalence_verdict(
    harmless: Interval, generic: Interval, *, equivalence: float, harm: float
) -> str:
    """The paired verdict of claim 4: "holds" iff the harmless copies' effect on quality lies
    inside the equivalence margin (its interval within ``[-equivalence, equivalence]``) and
    the generic copies' effect of the same size lies beyond the harm margin (its interval above
    ``harm``); "does not hold" where the harmless effect's interval lies wholly outside the
    equivalence margin (harmful, or helpful, beyond the metric's noise); else "undecided": an
    interval straddles a margin (too little power to tell), the generic copies do not show harm
    (the design cannot tell harmless from harmful), or an interval or margin is NaN or empty."""
    margins_ok = bool(np.isfinite(equivalence) and np.isfinite(harm) and equivalence >= 0)
    if not (harmless.decided and generic.decided and margins_ok):
        return UNDECIDED
    if harmless.lo > equivalence or harmless.hi < -equivalence:
        return FAILS
    if -equivalence <= harmless.lo and harmless.hi <= equivalence and generic.lo > harm:
        return HOLDS
    return UNDECIDED
