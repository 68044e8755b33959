"""Claim 4's designed experiment: its statistics against closed forms and scipy, the premise that
the harmless error leaves the transport residual unchanged, and the design at tiny sizes for two
master seeds (the verdict and the sign of each correlation agree)."""

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from experiments import harm_design
from experiments.assets import Context
from experiments.config import QUICK, ReproduceConfig
from experiments.rankstats import (
    Interval,
    cluster_bootstrap,
    partial_corr,
    partial_spearman,
    spearman,
    standardized_regression,
    transport_verdict,
)
from experiments.report import png_is_valid_and_not_blank
from wgfm import gmm, perturbations
from wgfm.diagnostics import transport_residual
from wgfm.fields import wgf_velocity
from wgfm.processes import VP

# -- statistics -------------------------------------------------------------------------------


def _orthonormal(rng, n, k, against):
    """``k`` unit columns of length ``n``, orthogonal to each other and to ``against``'s."""
    q, _ = np.linalg.qr(np.column_stack([against, rng.normal(size=(n, k))]))
    return q[:, against.shape[1] :] * np.sqrt(n)


def test_partial_corr_closed_form():
    """x = a z + u, y = b z + rho u + sqrt(1 - rho^2) u' with u, u' orthonormal to each other
    and to (1, z): what is left after the fit on z is u and rho u + ..., so r_xy.z = rho
    exactly, whatever a and b."""
    rng = np.random.default_rng(0)
    n, rho = 40, 0.37
    z = rng.normal(size=n)
    u, u2 = _orthonormal(rng, n, 2, np.column_stack([np.ones(n), z])).T
    x, y = 2.0 * z + u, -1.5 * z + rho * u + np.sqrt(1 - rho**2) * u2
    assert partial_corr(x, y, z) == pytest.approx(rho, abs=1e-12)  # float64 rounding
    assert partial_corr(x, y, z) != pytest.approx(np.corrcoef(x, y)[0, 1], abs=0.1)


def test_partial_corr_matches_regression_and_precision_matrix():
    """Three independent computations: the formula, the correlation of the residuals of
    least-squares fits on (1, z), and -P_xy / sqrt(P_xx P_yy) from the inverse correlation
    matrix."""
    rng = np.random.default_rng(1)
    cov = np.array([[1.0, 0.6, 0.5], [0.6, 1.0, 0.7], [0.5, 0.7, 1.0]])
    for n in (12, 200):
        x, y, z = rng.multivariate_normal(np.zeros(3), cov, size=n).T
        design = np.column_stack([np.ones(n), z])

        def resid(a, design=design):
            return a - design @ np.linalg.lstsq(design, a, rcond=None)[0]

        by_regression = np.corrcoef(resid(x), resid(y))[0, 1]
        p = np.linalg.inv(np.corrcoef(np.stack([x, y, z])))
        by_precision = -p[0, 1] / np.sqrt(p[0, 0] * p[1, 1])
        got = partial_corr(x, y, z)
        # float64: the three differ by rounding only
        assert got == pytest.approx(by_regression, abs=1e-10)
        assert got == pytest.approx(by_precision, abs=1e-10)


def test_rank_statistics_are_rank_based():
    rng = np.random.default_rng(2)
    x, y, z = rng.normal(size=(3, 30))
    y = y + x + z
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert spearman(np.exp(x), y**3) == pytest.approx(spearman(x, y), abs=1e-12)
    ranks = [stats.rankdata(a) for a in (x, y, z)]
    assert partial_spearman(x, y, z) == pytest.approx(partial_corr(*ranks), abs=1e-12)
    # monotone transforms of any variable, the control included, leave it unchanged
    assert partial_spearman(np.exp(x), y, np.tanh(z)) == pytest.approx(
        partial_spearman(x, y, z), abs=1e-12
    )
    assert np.isnan(partial_corr(x, y, 3 * x + 1))  # z determines x: nothing left


def test_standardized_regression_closed_form():
    """With uncorrelated standardised predictors the slopes are y's correlations with them:
    y = 3 x1 + x2 gives 3 / sqrt(10) and 1 / sqrt(10)."""
    rng = np.random.default_rng(3)
    n = 25
    x1, x2 = _orthonormal(rng, n, 2, np.ones((n, 1))).T
    slopes = standardized_regression(3 * x1 + x2 + 7.0, 5 * x1 - 2, 0.1 * x2)
    np.testing.assert_allclose(slopes, [3 / np.sqrt(10), 1 / np.sqrt(10)], atol=1e-12)


def test_cluster_bootstrap_keeps_clusters_together_and_has_the_right_width():
    clusters = np.repeat(np.arange(10), 3)

    def together(idx):  # every drawn cluster comes with all three of its rows, in order
        return np.array([float(np.all(np.diff(idx.reshape(-1, 3), axis=1) == 1))])

    est, lo, hi = cluster_bootstrap(together, clusters, seed=0, n_resamples=200)
    assert est[0] == lo[0] == hi[0] == 1.0
    # The mean of 40 equal clusters: the bootstrap interval of the mean of cluster means is
    # +-1.96 sd / sqrt(k) (sd with ddof 0); at 4000 resamples its width is within ~5% of that.
    rng = np.random.default_rng(4)
    k = 40
    cmeans = rng.normal(size=k)
    values = np.repeat(cmeans, 2) + np.tile([-0.5, 0.5], k)  # within-cluster spread averages out
    est, lo, hi = cluster_bootstrap(
        lambda i: np.array([values[i].mean()]), np.repeat(np.arange(k), 2), seed=1, n_resamples=4000
    )
    assert est[0] == pytest.approx(cmeans.mean(), abs=1e-12)
    expected = 2 * 1.96 * cmeans.std() / np.sqrt(k)
    assert hi[0] - lo[0] == pytest.approx(expected, rel=0.1)


def test_transport_verdict():
    pos, zero, neg = Interval(0.6, 0.3, 0.8), Interval(0.05, -0.1, 0.2), Interval(-0.3, -0.5, -0.1)
    assert transport_verdict(pos, zero)
    assert not transport_verdict(pos, pos)  # quality follows lambda too
    assert not transport_verdict(pos, neg)  # ... in either direction
    assert not transport_verdict(zero, zero)  # nor the residual
    assert not transport_verdict(neg, zero)  # more residual, better quality: not the claim
    assert (pos.sign, zero.sign, neg.sign) == (1, 0, -1)


# -- the design's premise ---------------------------------------------------------------------


def test_harmless_error_leaves_the_residual_unchanged_and_raises_lambda():
    """R(v) = d_t log p + div v + v . grad log p is linear in v and the harmless velocity
    error -g^2/2 c A grad log p adds div w + w . grad log p = -g^2 c/2 (tr(A H) + s^T A s) = 0:
    in float64 the residual of the perturbed oracle equals the oracle's (0) to rounding, and so
    does that of a non-gradient base field's; a generic error of the same size changes it."""
    with jax.enable_x64(True):
        proc = VP()
        mix = gmm.ring(num_modes=8, radius=3.0, std=0.5, dtype=jnp.float64)
        score = gmm.score_field(mix, proc)
        logp, dlogp = gmm.log_density_field(mix, proc), gmm.dt_log_density_field(mix, proc)
        a = perturbations.random_antisymmetric(2, key=jax.random.key(0)).astype(jnp.float64)
        harmless = perturbations.AntisymmetricScore(score, a)
        generic = perturbations.GenericError(2, key=jax.random.key(1))
        other = perturbations.GenericError(2, key=jax.random.key(2))  # a non-gradient "network"
        xs = mix.sample(16, key=jax.random.key(3)) * 1.3

        def residuals(s, t):
            v = wgf_velocity(proc, s)
            return jax.vmap(
                lambda x: transport_residual(v, x, t, log_density=logp, dt_log_density=dlogp)
            )(xs)

        scale = 2.0  # of order |score|: lambda rises by O(1)

        @jax.jit  # one program for every time (eagerly, each operation compiles on its own)
        def all_residuals(t):
            out = []
            for base in (score, perturbations.perturb(score, other)):
                out.append(
                    (
                        residuals(base, t),
                        residuals(perturbations.perturb(base, _scaled(harmless, scale)), t),
                        residuals(perturbations.perturb(base, _scaled(generic, scale)), t),
                    )
                )
            return out, jnp.max(jnp.abs(jax.vmap(lambda x: dlogp(x, t))(xs)))

        for t in (0.05, 0.3, 0.8):
            out, size = all_residuals(jnp.float64(t))
            for r0, r_h, r_g in out:
                # float64 rounding of sums of terms of size |d_t log p|, |div v| (~1e2 here)
                np.testing.assert_allclose(r_h, r0, atol=1e-11 * (float(size) + 1.0))
                assert float(jnp.max(jnp.abs(r_g - r0))) > 1e-2
        lam = _lambda_ratio(score, xs[0], jnp.float64(0.3))
        lam_h = _lambda_ratio(
            perturbations.perturb(score, _scaled(harmless, 2.0)), xs[0], jnp.float64(0.3)
        )
        assert lam < 1e-12 < 0.1 < lam_h  # the oracle is a gradient; the perturbed one is not


def _scaled(field, c):
    times = jnp.array([0.0, 1.0])
    return perturbations.TimeScaled(field, times, jnp.full(2, c))


def _lambda_ratio(field, x, t):
    j = jax.jacfwd(lambda y: field(y, t))(x)
    return float(jnp.linalg.norm(j - j.T) / jnp.linalg.norm(j))


def test_designed_score_is_one_structure_with_the_size_as_input():
    ctx = Context(ReproduceConfig(quick=True, preset="mixtures"))
    units = harm_design._unit_errors(ctx)
    base = gmm.score_field(ctx.mix2d, ctx.process)
    fields = [
        harm_design.designed_score(base, units, f, s)
        for f, s in (("trained", 0.0), ("+harmless", 0.5), ("+generic", 2.0))
    ]
    treedefs = {jax.tree.structure(f) for f in fields}
    assert len(treedefs) == 1  # one compiled program per architecture, whatever the variant
    x, t = jnp.array([1.0, -0.5]), jnp.float32(0.4)
    np.testing.assert_array_equal(fields[0](x, t), base(x, t))  # zero scales: exactly the base


# -- the design at tiny sizes, two master seeds -----------------------------------------------

TINY4 = dataclasses.replace(
    QUICK,
    train_steps_2d=200,
    batch_size=128,
    num_eval_samples=500,
    num_diag_samples=4,
    num_likelihood=8,
    helmholtz_grid=12,
    snapshots=(0.1, 0.3, 1.0),
    harm_objectives=("eps",),
    harm_seeds=2,
    harm_strengths=(0.5,),
    harm_resamples=500,
)


@pytest.fixture(scope="module")
def tiny_runs():
    out = {}
    for seed in (0, 1):
        ctx = Context(ReproduceConfig(quick=True, preset="mixtures", seed=seed), sizes=TINY4)
        numbers = harm_design.measure(ctx)
        out[seed] = (numbers, harm_design.analyse(numbers, seed=seed, n_resamples=500))
    return out


def test_tiny_design_verdict_and_signs_agree_across_seeds(tiny_runs):
    (n0, a0), (_, a1) = tiny_runs[0], tiny_runs[1]
    assert len(n0["rows"]) == 6 * 5 and a0["n_bases"] == 6
    assert a0["sw2"]["verdict"] == a1["sw2"]["verdict"]
    for s in harm_design.STATISTICS:
        i0, i1 = Interval(**a0["sw2"][s]), Interval(**a1["sw2"][s])
        # the same sign where either interval decides one (an interval holding 0 decides none)
        assert i0.sign == i1.sign or 0 in (i0.sign, i1.sign), (s, i0, i1)
    assert Interval(**a0["sw2"]["spearman_residual"]).sign == 1
    for a in (a0, a1):  # the premise, measured on trained networks
        assert a["+harmless"]["max_rel_residual_change"] < 1e-3
        assert a["+harmless"]["median_lambda_ratio"] > 1.5
        assert a["+generic"]["median_residual_ratio"] > 1.5


def test_tiny_design_figures(tiny_runs, tmp_path):
    numbers, _ = tiny_runs[0]
    for name, fig in (
        ("q", harm_design.figure_quality(numbers)),
        ("s", harm_design.figure_shares(numbers)),
    ):
        fig.savefig(tmp_path / f"{name}.png")
        assert png_is_valid_and_not_blank(tmp_path / f"{name}.png")


def test_published_claim4_table_is_generated_from_the_committed_runs():
    root = Path(__file__).resolve().parent.parent
    doc = (root / "docs" / "reproduction.md").read_text()
    table = harm_design.render_table(root / "docs" / "claim4_runs")
    assert harm_design.replace_table(doc, table) == doc, (
        "regenerate with `python -m experiments.harm_design docs/reproduction.md docs/claim4_runs`"
    )
    with pytest.raises(ValueError, match="markers"):
        harm_design.replace_table("no markers here", table)
