"""The analysis of claim 4's designed experiment (:mod:`experiments.harm_design`), recomputed from
the measured rows alone (:func:`analyse`), with every interval over independent training runs.

*Primary test: the paired contrast.* For each run's final network, the change of quality from
the network to its harmless copies and to its generic copies of the same ``L2`` sizes (mean over
sizes and signs): for SW2 and MMD the log ratio of the values censored at their noise floor, for
the excess NLL the difference in nats (the mean log-likelihood ratio). Each has a 95% bootstrap
interval over runs. Claim 4 holds for a metric iff the harmless interval lies inside the
equivalence margin and the generic interval beyond the harm margin
(:func:`experiments.rankstats.equivalence_verdict`).

*The margins*, fixed here before any run: both are ``MARGIN_FACTOR`` times the root mean square,
over runs, of the replica contrast ``d`` (the same change between two independent draws of the
network as trained: the metric's own noise, measured in each run). ``d`` is the difference of two
draws with equal noise, so ``2 RMS(d)`` is the half-width of the range that holds about 95% of
such differences (normal approximation): a harmless effect inside it is no larger than what
separates two measurements of one field, and a generic effect beyond it is larger than that.

*Secondary: the pooled partial rank correlation* of quality with the residual given lambda, and
with lambda given the residual, over the networks *as trained* (every snapshot) only. The copies
are left out because the design places them: a harmless copy has its network's residual and
quality at about 20 times its lambda, a generic one more residual and worse quality, so pooled
with the networks they make "larger lambda, same or better quality at a given residual" by
construction, and the partial correlation would measure the design rather than the networks.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from experiments.harm_design import COPIES
from experiments.rankstats import (
    HOLDS,
    UNDECIDED,
    Interval,
    cluster_bootstrap,
    cluster_bootstrap_mean,
    equivalence_verdict,
    rank_statistics,
    transport_verdict,
)

# quality metric -> label; claim 4's verdict is SW2's, the others are reported beside it
METRICS = {"sw2": "SW2", "mmd": "MMD", "excess_nll": "excess NLL"}
CLAIM_METRIC = "sw2"
MARGIN_FACTOR = 2.0  # margins: this times RMS of the replica contrast (module docstring)
SHARE_THRESHOLD = 0.2  # "a large share is harmless": the share's interval above 20%
STATISTICS = (
    "spearman_residual",
    "spearman_lambda",
    "partial_residual_given_lambda",
    "partial_lambda_given_residual",
    "slope_residual",
    "slope_lambda",
)
_NAN = Interval(float("nan"), float("nan"), float("nan"))


def scaled_quality(rows: list[dict], metric: str, floor: dict) -> np.ndarray:
    """``log max(q, floor)`` of SW2 or MMD per row (below its floor a metric cannot order two
    sample sets, so those values tie at it), the excess NLL itself (in nats: already a log)."""
    q = np.array([r[metric] for r in rows], np.float64)
    if metric == "excess_nll":
        return q
    return np.log(np.maximum(q, floor[metric]))


def labels(rows: list[dict], cluster: str = "run") -> np.ndarray:
    """Integer cluster labels of ``rows`` by their ``cluster`` entry (``"run"``: the training
    run, the independent unit)."""
    return np.unique([str(r[cluster]) for r in rows], return_inverse=True)[1]


def paired_contrasts(
    rows: list[dict], metric: str, floor: dict, *, cluster: str = "run"
) -> dict[str, np.ndarray]:
    """Per base network with copies: the replica contrast and each copy family's mean contrast
    to the network as trained (:func:`scaled_quality` differences), with its cluster label."""
    g = scaled_quality(rows, metric, floor)
    lab = labels(rows, cluster)
    by_base: dict[int, dict[str, list[float]]] = {}
    for i, r in enumerate(rows):
        by_base.setdefault(r["base"], {}).setdefault(r["family"], []).append(float(g[i]))
    first = {r["base"]: int(lab[i]) for i, r in reversed(list(enumerate(rows)))}
    out: dict[str, list] = {"replica": [], **{f: [] for f in COPIES}, "cluster": []}
    for b, fams in by_base.items():
        if "replica" not in fams:
            continue  # a snapshot measured as trained only
        base = fams["trained"][0]
        out["replica"].append(fams["replica"][0] - base)
        for f in COPIES:
            out[f].append(float(np.mean(fams[f])) - base)
        out["cluster"].append(first[b])
    return {k: np.asarray(v) for k, v in out.items()}


def margin(replica: np.ndarray) -> float:
    """``MARGIN_FACTOR * RMS(replica)`` (NaN without replicas)."""
    if len(replica) == 0:
        return float("nan")
    return float(MARGIN_FACTOR * np.sqrt(np.mean(np.square(replica))))


def intervals(
    values: np.ndarray, clusters: np.ndarray, *, seed: int, n_resamples: int
) -> list[Interval]:
    """The mean of each column of ``values`` ``(n, k)`` with a 95% bootstrap interval that
    resamples ``clusters``; NaN intervals where fewer than two clusters or a value is not
    finite (nothing to resample, or nothing to trust)."""
    values = np.asarray(values, np.float64).reshape(len(clusters), -1)
    if len(np.unique(clusters)) < 2 or not np.all(np.isfinite(values)):
        return [_NAN] * values.shape[1]
    est, lo, hi = cluster_bootstrap_mean(values, clusters, seed=seed, n_resamples=n_resamples)
    return [Interval(float(e), float(a), float(b)) for e, a, b in zip(est, lo, hi, strict=True)]


def primary(
    rows: list[dict], metric: str, floor: dict, *, seed: int, n_resamples: int, cluster="run"
) -> dict:
    """The paired test of one metric: intervals of the mean harmless, generic and replica
    contrasts over clusters, the margins, the verdict and the per-network contrasts."""
    c = paired_contrasts(rows, metric, floor, cluster=cluster)
    cols = np.column_stack([c["+harmless"], c["+generic"], c["replica"]])
    h, g, r = intervals(cols, c["cluster"], seed=seed, n_resamples=n_resamples)
    m = margin(c["replica"])
    return {
        "+harmless": dataclasses.asdict(h),
        "+generic": dataclasses.asdict(g),
        "replica": dataclasses.asdict(r),
        "margin": m,
        "verdict": equivalence_verdict(h, g, equivalence=m, harm=m),
        "n_clusters": int(len(np.unique(c["cluster"]))),
        "per_network": {k: v.tolist() for k, v in c.items() if k != "cluster"},
    }


def secondary(rows: list[dict], metric: str, floor: dict, *, seed: int, n_resamples: int) -> dict:
    """Rank statistics of quality against the residual and lambda over the networks as trained
    (module docstring: why the copies are left out), intervals over runs."""
    tr = [r for r in rows if r["family"] == "trained"]
    if len({r["run"] for r in tr}) < 2 or len(tr) < 4:
        ivs = {s: _NAN for s in STATISTICS}
    else:
        lam, res = (np.array([r[k] for r in tr]) for k in ("lambda", "residual"))
        y = scaled_quality(tr, metric, floor)

        def stat(idx):
            return rank_statistics(y[idx], res[idx], lam[idx])

        if not np.all(np.isfinite(stat(np.arange(len(tr))))):
            # nothing to rank (a constant quality, lambda or residual): NaN, never a number
            ivs = {s: _NAN for s in STATISTICS}
        else:
            est, lo, hi = cluster_bootstrap(stat, labels(tr), seed=seed, n_resamples=n_resamples)
            ivs = {
                s: Interval(float(e), float(a), float(b))
                for s, e, a, b in zip(STATISTICS, est, lo, hi, strict=True)
            }
    return {
        **{s: dataclasses.asdict(v) for s, v in ivs.items()},
        "n_networks": len(tr),
        "verdict": transport_verdict(
            ivs["partial_residual_given_lambda"], ivs["partial_lambda_given_residual"]
        ),
    }


def premise(rows: list[dict]) -> dict:
    """The design's premise, measured: the harmless copies keep each network's residual and
    raise its lambda; the generic ones raise both (ratios to the network as trained)."""
    trained = {r["base"]: r for r in rows if r["family"] == "trained"}
    out = {}
    for f in COPIES:
        cp = [r for r in rows if r["family"] == f]
        res = np.array([r["residual"] / trained[r["base"]]["residual"] for r in cp])
        lam = np.array([r["lambda"] / trained[r["base"]]["lambda"] for r in cp])
        nan = float("nan")
        out[f] = {
            "max_rel_residual_change": float(np.max(np.abs(res - 1))) if len(cp) else nan,
            "median_residual_ratio": float(np.median(res)) if len(cp) else nan,
            "median_lambda_ratio": float(np.median(lam)) if len(cp) else nan,
        }
    return out


def share_summary(shares: list[dict], *, seed: int, n_resamples: int) -> dict:
    """The mean harmless share over the runs' final networks with its interval over runs, and
    its verdict against ``SHARE_THRESHOLD`` (undecided where the interval is NaN)."""
    values = np.array([s["share"] for s in shares], np.float64)
    (iv,) = (
        intervals(values, labels(shares), seed=seed, n_resamples=n_resamples) if shares else [_NAN]
    )
    verdict = UNDECIDED if not iv.decided else HOLDS if iv.lo > SHARE_THRESHOLD else "does not hold"
    return {
        "mean": dataclasses.asdict(iv),
        "verdict": verdict,
        "per_network": values.tolist(),
        "max_discretisation": float(max((s["discretisation"] for s in shares), default=np.nan)),
    }


def analyse(numbers: dict, *, seed: int, n_resamples: int) -> dict:
    """Everything claim 4 reports, from ``numbers`` (:func:`experiments.harm_measure.measure`'s
    rows, floors and shares) alone: per metric the primary paired test and the secondary rank
    statistics, the premise, the fields at the noise floor and the harmless share."""
    rows, floor = numbers["rows"], numbers["floor"]
    return {
        "n_fields": len(rows),
        "n_bases": len(numbers["bases"]),
        "n_runs": len(numbers["runs"]),
        "n_resamples": n_resamples,
        "margin_factor": MARGIN_FACTOR,
        "primary": {
            m: primary(rows, m, floor, seed=seed, n_resamples=n_resamples) for m in METRICS
        },
        "secondary": {
            m: secondary(rows, m, floor, seed=seed, n_resamples=n_resamples) for m in METRICS
        },
        "premise": premise(rows),
        "at_floor": {
            m: int(sum(r[m] <= floor[m] for r in rows)) for m in ("sw2", "mmd") if m in floor
        },
        "harmless_share": share_summary(numbers["shares"], seed=seed, n_resamples=n_resamples),
    }
