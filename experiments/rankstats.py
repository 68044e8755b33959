"""Statistics of claim 4's designed experiment: rank and partial rank correlations, a
standardised regression, and bootstrap intervals that resample clusters (a base network with its
perturbed copies).

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
    "Interval",
    "cluster_bootstrap",
    "partial_corr",
    "partial_spearman",
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
    def excludes_zero(self) -> bool:
        return bool(self.lo > 0 or self.hi < 0)

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
    res = stats.bootstrap(
        (np.arange(len(labels)),),
        on_clusters,
        vectorized=False,
        paired=False,
        n_resamples=int(n_resamples),
        confidence_level=level,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    ci = res.confidence_interval
    return est, np.asarray(ci.low, np.float64), np.asarray(ci.high, np.float64)


def transport_verdict(residual_given_lambda: Interval, lambda_given_residual: Interval) -> bool:
    """Claim 4 holds where quality follows the residual (its partial rank correlation with the
    quality, given lambda, has an interval excluding zero, and positive: more residual, worse
    quality) and not lambda (the interval of lambda given the residual contains zero)."""
    return (
        residual_given_lambda.excludes_zero
        and residual_given_lambda.estimate > 0
        and not lambda_given_residual.excludes_zero
    )
