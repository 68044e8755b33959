"""``wgfm.diagnose`` and its controls, against closed forms.

A linear field ``x -> A x`` has the Jacobian ``A`` at every point and time, so its asymmetry
ratio is ``||A - A^T||_F / ||A||_F`` at every level, whatever the noise draws; a symmetric ``A``
is a gradient (of ``x^T A x / 2``), so its loop integrals vanish up to rounding.
"""

from __future__ import annotations

import json
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import wgfm
from wgfm.diagnosis import CLAIMS, AbstractClaim, DiagnoseSizes, Diagnosis, diagnose
from wgfm.diagnostics import gaussian_fit_score, times_grid, untrained_field, untrained_params
from wgfm.figures import png_is_valid_and_not_blank
from wgfm.report import ClaimRow, Measurement

SIZES = DiagnoseSizes(
    num_levels=3,
    num_samples=4,
    sub_jacobian_size=2,
    num_probes=2,
    max_exact_dim=64,
    batch_size=4,
    loop_levels=2,
    loop_samples=2,
    loop_points=16,
    bridge_steps=16,
    noisy_copies=3,
    noisy_points=6,
    num_generated=1,
    ddim_steps=1,
)
A_ROT = np.array([[0.5, 1.0], [-1.0, 0.2]], np.float32)  # symmetric part diag(0.5, 0.2)
A_SYM = np.array([[-1.0, 0.3], [0.3, -2.0]], np.float32)


def _images(n=64):
    return np.asarray(
        wgfm.gmm.ring(num_modes=4, radius=2.0, std=0.3).sample(n, key=jax.random.key(0)), np.float32
    )


def _linear(a):
    a = jnp.asarray(a)
    return lambda x, t: a @ x


@pytest.fixture(scope="module")
def rotating():
    return diagnose(
        _linear(A_ROT),
        wgfm.VP(),
        _images(),
        key=jax.random.key(1),
        kind="score",
        sizes=SIZES,
        label="rot",
    )


def test_asymmetry_is_the_closed_form_at_every_level(rotating):
    lam = np.linalg.norm(A_ROT - A_ROT.T) / np.linalg.norm(A_ROT)
    num = rotating.numbers["differential"]
    np.testing.assert_allclose(num["levels"], times_grid(wgfm.VP(), 3))
    # float32 Jacobian of a 2x2 linear map: exact up to rounding of the norms
    np.testing.assert_allclose(num["median_ratio"]["trained"], lam, rtol=1e-6)
    # the Gaussian fit's exact score is a gradient: its symmetric Jacobian rounds to ~1e-7
    assert np.all(np.asarray(num["median_ratio"]["oracle score"]) < 1e-5)
    rows = rotating.rows[CLAIMS["differential"].title]
    assert rows[0].verdict and "Gaussian fitted to 64 clean images" in rows[0].control
    assert "no untrained control" in rows[1].control  # a plain function carries no model


def test_a_gradient_field_fails_the_not_a_gradient_rows():
    d = diagnose(
        _linear(A_SYM), wgfm.VP(), _images(), key=jax.random.key(1), kind="score", sizes=SIZES
    )
    (row, _), loops = d.rows[CLAIMS["differential"].title], d.rows[CLAIMS["integral"].title]
    assert not row.verdict and not d.passed
    assert np.all(np.asarray(d.numbers["differential"]["median_ratio"]["trained"]) < 1e-5)
    circ = d.numbers["integral"]
    for family in ("circle", "bridge", "pair rotation", "noisy copies"):
        # |I/L| of a gradient: float32 rounding of sums of ~16-64 terms of size ~|A x| ~ 5
        assert np.all(np.asarray(circ[family]["trained"]["median_abs_I_over_L"]) < 1e-4), family
    assert len(loops) == 4


def test_rotation_circulates_and_the_report_renders(rotating, tmp_path):
    assert all(r.verdict for r in rotating.rows[CLAIMS["integral"].title]), rotating.rows[
        CLAIMS["integral"].title
    ]
    md = rotating.to_markdown()
    assert md.startswith("# wgfm diagnose report: rot") and md.count("| --- |") == 0
    assert (
        CLAIMS["differential"].title in md
        and CLAIMS["integral"].title in md
        and "![lambda_rot](figures/lambda_rot.png)" in md
    )
    js = json.loads(rotating.to_json())
    # (the trend row is an observation: a linear field's lambda is the same at every level)
    assert js["all_verdicts_pass"] == rotating.passed
    assert set(js["numbers"]) == {"differential", "integral"}
    assert [r["verdict"] for r in js["claims"][CLAIMS["differential"].title]][0] is True
    md_path, js_path = rotating.save(tmp_path / "out")
    assert md_path.read_text().count("![") == 2
    figs = sorted((tmp_path / "out" / "figures").glob("*.png"))
    assert len(figs) == 2 and all(png_is_valid_and_not_blank(f) for f in figs)
    saved = json.loads(js_path.read_text())
    np.testing.assert_allclose(
        saved["numbers"]["differential"]["rot"]["median_ratio"]["trained"],
        rotating.numbers["differential"]["median_ratio"]["trained"],
    )


def test_one_claim_alone_gives_the_numbers_of_the_full_diagnosis(rotating):
    alone = diagnose(
        _linear(A_ROT),
        wgfm.VP(),
        _images(),
        key=jax.random.key(1),
        kind="score",
        sizes=SIZES,
        claims=("integral",),
        label="rot",
    )
    assert list(alone.measurements) == [CLAIMS["integral"].title]
    for fam in ("bridge", "noisy copies"):
        np.testing.assert_array_equal(
            alone.numbers["integral"][fam]["trained"]["median_abs_I"],
            rotating.numbers["integral"][fam]["trained"]["median_abs_I"],
        )


def test_a_network_field_gets_its_untrained_control():
    from wgfm.models import get_model

    model = get_model("mlp-small")
    params = model.init(jax.random.key(0), (2,), jnp.float32)
    d = diagnose(
        model.field(params),
        wgfm.VP(),
        _images(),
        key=jax.random.key(2),
        kind="eps",
        sizes=SIZES,
        claims=("differential",),
    )
    med = d.numbers["differential"]["median_ratio"]
    assert set(med) == {"trained", "untrained", "oracle score"}
    assert np.all(np.asarray(med["untrained"]) > 1e-3)  # an MLP's Jacobian is not symmetric
    assert "untrained:" in d.rows[CLAIMS["differential"].title][1].control


def test_bad_input_is_named():
    f, imgs, key = _linear(A_ROT), _images(), jax.random.key(0)
    with pytest.raises(ValueError, match="`kind` is required"):
        diagnose(f, wgfm.VP(), imgs, key=key)
    with pytest.raises(ValueError, match="`claims`"):
        diagnose(f, wgfm.VP(), imgs, key=key, kind="score", claims=("helmholtz",))
    with pytest.raises(ValueError, match="`images` must have shape"):
        diagnose(f, wgfm.VP(), imgs[:1], key=key, kind="score")
    with pytest.raises(ValueError, match="claim 1 needs 4 clean images"):
        diagnose(f, wgfm.VP(), imgs[:3], key=key, kind="score", sizes=SIZES)
    with pytest.raises(ValueError, match="non-finite"):
        diagnose(f, wgfm.VP(), np.full((8, 2), np.nan, np.float32), key=key, kind="score")
    with pytest.raises(ValueError, match="must be positive"):
        DiagnoseSizes(**{**SIZES.__dict__, "num_levels": 0})
    with pytest.raises(ValueError, match="carries no `model`"):
        untrained_field(f, key, (2,))


def test_gaussian_fit_score_is_the_closed_form_marginal_score():
    x = _images(200).astype(np.float64)
    process, t = wgfm.VP(), 0.3
    score = gaussian_fit_score(x, process)
    m, c = x.mean(0), np.cov(x.T) + 1e-3 * np.eye(2)
    a, s = float(process.alpha(t)), float(process.sigma(t))
    cov_t = a**2 * c + s**2 * np.eye(2)
    pts = x[:5] + 0.1
    ref = np.stack([-np.linalg.solve(cov_t, p - a * m) for p in pts])
    got = np.stack([np.asarray(score(jnp.asarray(p, jnp.float32), t)) for p in pts])
    np.testing.assert_allclose(got, ref, rtol=2e-5, atol=2e-5)  # the fit is stored in float32
    with pytest.raises(ValueError, match="at least 2 samples"):
        gaussian_fit_score(x[:1], process)


class _ZeroOutput:
    """An initialiser whose output layer starts at zero, as DDPM U-Nets do."""

    def init(self, key, shape, dtype):
        k = jax.random.normal(key, (3, 3), dtype)
        zero = jnp.zeros((3, 2), dtype)
        return {
            "params": {
                "conv_out": {"kernel": zero, "bias": jnp.zeros(2, dtype)},
                "dense": {"kernel": k},
            }
        }


def test_untrained_params_redraws_only_zero_kernels():
    key = jax.random.key(5)
    p = untrained_params(_ZeroOutput(), key, (3,))
    ref = jax.nn.initializers.lecun_normal()(jax.random.fold_in(key, 1), (3, 2), jnp.float32)
    np.testing.assert_array_equal(p["params"]["conv_out"]["kernel"], ref)
    np.testing.assert_array_equal(p["params"]["conv_out"]["bias"], 0.0)  # biases stay at zero
    np.testing.assert_array_equal(
        p["params"]["dense"]["kernel"],
        _ZeroOutput().init(key, (3,), jnp.float32)["params"]["dense"]["kernel"],
    )


def test_times_grid_is_the_authors_grid_thinned():
    vp = wgfm.VP()
    full = times_grid(vp, 100)
    np.testing.assert_allclose(full, np.clip(np.arange(1, 1000, 10) / 1000, vp.t_min, vp.t_max))
    thin = times_grid(vp, 4)
    assert thin[0] == full[0] and thin[-1] == full[-1] and len(thin) == 4
    with pytest.raises(ValueError, match="`num_levels`"):
        times_grid(vp, 0)


def test_diagnosis_is_exported_at_the_top_level():
    assert wgfm.diagnose is diagnose and wgfm.Diagnosis is Diagnosis


def test_beyond_the_exact_dimension_the_headline_is_the_full_dimension_estimate():
    """A random K x K block certifies asymmetry but is not its size: the first number reported
    is the probe estimate of the full ratio, the sub-Jacobian is labelled a certificate."""
    a = np.asarray(jax.random.normal(jax.random.key(3), (6, 6)), np.float32)
    x = np.asarray(jax.random.normal(jax.random.key(4), (16, 6)), np.float32)
    sizes = DiagnoseSizes(**{**SIZES.__dict__, "max_exact_dim": 4, "num_probes": 64})
    d = diagnose(
        _linear(a),
        wgfm.VP(),
        x,
        key=jax.random.key(5),
        kind="score",
        sizes=sizes,
        claims=("differential",),
    )
    row = d.rows[CLAIMS["differential"].title][0]
    assert row.measured.startswith("median full-dimension lambda (64-probe estimate)")
    assert "certificate: median 2x2 sub-Jacobian lambda" in row.measured
    num = d.numbers["differential"]
    probe = np.asarray(num["median_probe_ratio"]["trained"])
    assert f"{float(probe.min()):.3g}" in row.measured
    lam = np.linalg.norm(a - a.T) / np.linalg.norm(a)
    # 64 Rademacher probes of a 6x6 map: a standard error of a few percent per estimate (3-4%
    # here), and each estimate within 4 of its standard errors of the exact ratio.
    se = np.asarray(num["median_probe_ratio_se"]["trained"])
    assert np.all(se < 0.05 * lam), (se, lam)
    assert np.all(np.abs(probe - lam) <= 4 * se), (probe, se, lam)


def test_the_probe_headline_carries_its_standard_error():
    """Probe path on ``x -> A x``: per level, the median estimate lies within 4 of its median
    standard errors of the exact lambda; the row prints ``estimate ± s.e.``; results carry the
    per-level s.e. and the probes a 10% s.e. would take."""
    a = np.asarray(jax.random.normal(jax.random.key(3), (6, 6)), np.float32)
    x = np.asarray(jax.random.normal(jax.random.key(4), (16, 6)), np.float32)
    sizes = DiagnoseSizes(**{**SIZES.__dict__, "max_exact_dim": 4, "num_probes": 16})
    d = diagnose(
        _linear(a),
        wgfm.VP(),
        x,
        key=jax.random.key(5),
        kind="score",
        sizes=sizes,
        claims=("differential",),
    )
    num = d.numbers["differential"]
    lam = np.linalg.norm(a - a.T) / np.linalg.norm(a)
    est = np.asarray(num["median_probe_ratio"]["trained"])
    se = np.asarray(num["median_probe_ratio_se"]["trained"])
    assert est.shape == se.shape == (3,) and np.all(se > 0)
    assert np.all(np.abs(est - lam) <= 4 * se), (est, se, lam)
    row = d.rows[CLAIMS["differential"].title][0]
    lo = int(np.argmin(est))
    assert f"{est[lo]:.3g} ± {se[lo]:.2g}.." in row.measured, row.measured
    assert "±" in row.control  # the Gaussian fit in the same unit, with its s.e.
    probes = num["probes_for_10pct_se"]["trained"]
    assert set(num["probes_for_10pct_se"]) == {"trained", "oracle score"}
    assert 0 < probes < 1e4 and num["jacobian"]["chosen_by"] == "max_exact_dim"
    assert "D = 6 > max_exact_dim = 4" in d.header["claim 1 Jacobians"]


def test_probes_for_a_target_standard_error_is_the_inverse_square_law():
    from wgfm.diagnosis.asymmetry import probes_for

    # relative s.e. 0.2 at 32 probes: a 10% s.e. takes (0.2 / 0.1)^2 = 4 times as many
    assert probes_for(32, [[0.1, 0.2]], [[0.02, 0.04]]) == pytest.approx(128)
    assert probes_for(8, [[0.0]], [[0.01]]) == np.inf  # a zero ratio has no relative s.e.


def test_the_exact_or_probe_choice_follows_the_budget():
    """``max_exact_dim=None``: exact Jacobians when D JVPs x samples x levels x fields at the
    measured JVP time fit ``exact_budget_s``; a zero budget forces probes, a huge one exact;
    ``exact=`` overrides either way. The header says which and why."""
    import dataclasses

    from wgfm.diagnosis.budget import choose_jacobian, time_jvp

    f = _linear(A_ROT)
    budget = dataclasses.replace(SIZES, max_exact_dim=None, exact_budget_s=0.0)
    common = dict(key=jax.random.key(1), kind="score", claims=("differential",))
    probes = diagnose(f, wgfm.VP(), _images(), sizes=budget, **common)
    jac = probes.numbers["differential"]["jacobian"]
    assert not jac["exact"] and jac["chosen_by"] == "budget" and jac["per_jvp_s"] > 0
    # 4 samples x 3 levels x 2 fields (trained, Gaussian fit), each D = 2 JVPs
    assert jac["count"] == 24 and jac["estimated_exact_s"] == pytest.approx(
        2 * 24 * jac["per_jvp_s"]
    )
    assert "median_probe_ratio" in probes.numbers["differential"]
    assert "over the budget of 0 s" in probes.header["claim 1 Jacobians"]
    big = dataclasses.replace(budget, exact_budget_s=1e6)
    exact = diagnose(f, wgfm.VP(), _images(), sizes=big, **common)
    assert exact.numbers["differential"]["jacobian"]["exact"]
    assert "within the budget of 1e+06 s" in exact.header["claim 1 Jacobians"]
    lam = np.linalg.norm(A_ROT - A_ROT.T) / np.linalg.norm(A_ROT)
    np.testing.assert_allclose(exact.numbers["differential"]["median_ratio"]["trained"], lam, 1e-6)
    forced = diagnose(
        f, wgfm.VP(), _images(), sizes=dataclasses.replace(budget, jacobians="exact"), **common
    )
    assert "asked for" in forced.header["claim 1 Jacobians"]
    assert "median_ratio" in forced.numbers["differential"]
    # the decision itself: the flip happens where the estimated cost crosses the budget
    x, per = jnp.ones(3, jnp.float32), time_jvp(f3 := _linear(np.eye(3)), jnp.ones(3), 0.5)
    assert per > 0
    c = choose_jacobian(f3, x, 0.5, count=10, budget_s=1e6)
    assert c.exact and c.estimated_exact_s == pytest.approx(3 * 10 * c.per_jvp_s)
    assert not choose_jacobian(f3, x, 0.5, count=10, budget_s=0.0).exact
    assert choose_jacobian(f3, x, 0.5, count=10, max_exact_dim=3).exact
    assert not choose_jacobian(f3, x, 0.5, count=10, max_exact_dim=2, exact=None).exact
    with pytest.raises(ValueError, match="`budget_s`"):
        choose_jacobian(f3, x, 0.5, count=10, budget_s=-1.0)
    with pytest.raises(ValueError, match="num_probes must be at least 2"):
        DiagnoseSizes(**{**SIZES.__dict__, "num_probes": 1})


def test_a_pytorch_path_field_runs_on_one_device_and_says_so():
    """A field that runs through PyTorch is not split over a mesh: one line in the header, not
    an error (the mesh here is a stand-in: this process has one device)."""
    import torch

    from wgfm.diagnosis.api import device_line, on_torch
    from wgfm.interop import torch_field

    class Mesh8:
        devices = np.empty(8, object)

    rot = torch.tensor(np.asarray(A_ROT).T)
    inner = torch_field(lambda x, t: x @ rot.to(x.dtype))
    f = eqx.Partial(lambda inner, x, t: inner(x, t), inner)  # JAX calling PyTorch inside
    assert on_torch(f) and not on_torch(_linear(A_ROT))
    assert device_line(f, None).startswith("1 device (cpu")
    assert "8 devices" in device_line(_linear(A_ROT), Mesh8())
    d = diagnose(
        f,
        wgfm.VP(),
        _images(),
        key=jax.random.key(1),
        kind="score",
        sizes=SIZES,
        claims=("differential",),
        mesh=Mesh8(),
    )
    assert "1 device" in d.header["devices"] and "not the 8 asked for" in d.header["devices"]
    assert "runs through PyTorch" in d.to_markdown()
    with pytest.raises(ValueError, match="`devices` and `mesh`"):
        diagnose(
            f, wgfm.VP(), _images(), key=jax.random.key(1), kind="score", devices=1, mesh=Mesh8()
        )


def test_cli_devices_beyond_the_host_is_one_line(capsys, tmp_path):
    from wgfm import cli

    assert cli.main(["diagnose", "--model", str(tmp_path), "--devices", "4"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("wgfm diagnose: `devices`=4 requested") and "\n" not in err


def test_compare_spaces_on_shared_levels():
    from wgfm.diagnosis import compare_spaces

    levels = np.linspace(0.01, 0.99, 10)
    lat = np.linspace(0.3, 0.1, 10)  # falling with noise: grows towards low noise
    # the pixel run has every other level, at twice the latent lambda
    row = compare_spaces((levels, lat), (levels[::2], 2 * lat[::2]), what="w")
    assert row.verdict and "over 5 shared levels: 0.5" in row.control and row.note == "w"
    assert "latent 0.3 vs 0.122" in row.measured  # the lowest- and highest-noise of 5 levels
    # a pixel run that does not grow towards low noise fails the row
    flat = compare_spaces((levels, lat), (levels, np.full(10, 0.2)), what="w")
    assert not flat.verdict
    # no shared levels: not comparable
    none = compare_spaces((levels, lat), (levels + 0.001, lat), what="w")
    assert not none.verdict and "fewer than 2" in none.measured


def test_cost_lines_size_a_full_run():
    import dataclasses

    from wgfm.diagnosis import FULL, QUICK
    from wgfm.diagnosis.shards import cost_lines

    sz = dataclasses.replace(QUICK, num_levels=4, num_samples=2, loop_levels=3, loop_samples=1)
    lines = cost_lines(
        {CLAIMS["differential"].title: 16.0, CLAIMS["integral"].title: 6.0}, sz, FULL
    )
    assert lines["claim 1: seconds per image and level (compilation included)"] == 2.0
    assert lines["claim 2: seconds per image and level (compilation included)"] == 2.0
    n1, n2 = FULL.num_levels * FULL.num_samples, FULL.loop_levels * FULL.loop_samples
    assert lines[f"claim 1: the same rate at the full sizes' {n1} images x levels (s)"] == 2 * n1
    assert lines[f"claim 2: the same rate at the full sizes' {n2} images x levels (s)"] == 2 * n2
    assert cost_lines({}, sz, FULL) == {}  # claims not run: nothing to size


def test_measured_indices_are_a_sorted_sample_without_replacement_per_claim():
    from wgfm.diagnosis.api import measured_indices

    key = jax.random.key(0)
    first, second = CLAIMS.values()
    a = measured_indices(key, first, 50, 8)
    assert a.shape == (8,) and np.all(np.diff(a) > 0) and a.min() >= 0 and a.max() < 50
    np.testing.assert_array_equal(a, measured_indices(key, first, 50, 8))  # deterministic
    assert not np.array_equal(a, measured_indices(key, second, 50, 8))  # own stream per claim


def _measure_mean_norm(score, process, x0, ts, *, key, label="model", **controls):
    """The mean norm of ``score`` at the clean points ``x0`` at every time of ``ts``."""
    norms = jax.vmap(
        lambda t: jnp.mean(jnp.linalg.norm(jax.vmap(score, (0, None))(x0, t), axis=-1))
    )(ts)
    row = ClaimRow(f"{label}: the score is not zero", f"{float(norms.min()):.3g}", "-", True)
    return Measurement([row], {"levels": ts, "mean_norm": norms, "x0": x0}, {})


class _MeanNorm(AbstractClaim):
    """A diagnostic added as a new claim would be: the mean norm of the score at the measured
    clean points, at every level (a closed form for a linear field)."""

    number: ClassVar[int] = 9
    key: ClassVar[str] = "mean-norm"
    title: ClassVar[str] = "9. Mean norm of the score"

    def num_levels(self, sizes):
        return sizes.num_levels

    def num_samples(self, sizes):
        return sizes.num_samples

    def options(self, sizes):
        return {}

    def measurement(self, *args, **kwargs):
        return _measure_mean_norm(*args, **kwargs)

    def header(self, numbers):
        return {"mean norm levels": len(numbers["levels"])}


def test_a_claim_is_added_by_its_registry_entry(monkeypatch, tmp_path):
    """The diagnosis names no claim: a new AbstractClaim in CLAIMS is measured, keyed, titled,
    saved and costed like the paper's two, with nothing else changed."""
    from wgfm.diagnosis.shards import cost_lines

    claim = _MeanNorm()
    monkeypatch.setitem(CLAIMS, claim.key, claim)
    d = diagnose(
        _linear(A_SYM),
        wgfm.VP(),
        _images(),
        key=jax.random.key(2),
        kind="score",
        sizes=SIZES,
        claims=(claim.key,),
        label="sym",
    )
    num = d.numbers["mean-norm"]
    x0 = np.asarray(num["x0"])
    assert x0.shape == (SIZES.num_samples, 2)
    # A_SYM x does not depend on t: the same mean norm at every level, by numpy.
    want = np.mean(np.linalg.norm(x0 @ A_SYM.T, axis=-1))
    np.testing.assert_allclose(num["mean_norm"], np.full(SIZES.num_levels, want), rtol=1e-6)
    assert d.header["mean norm levels"] == SIZES.num_levels
    assert list(d.rows) == [claim.title] and d.passed
    d.save(tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert list(saved["numbers"]) == ["mean-norm"] and list(saved["claims"]) == [claim.title]
    lines = cost_lines({claim.title: 6.0}, SIZES, SIZES)
    assert lines["claim 9: seconds per image and level (compilation included)"] == 0.5


def test_a_claim_measures_every_field_on_the_same_points():
    from wgfm.diagnosis.claim import Controls, claim_fields, noised_points
    from wgfm.diagnostics import noised_samples

    def score(x, t):
        return -x

    def gradient(x, t):
        return -2 * x

    fields = claim_fields(score, Controls(gradient=gradient))
    assert fields == {"trained": score, "oracle score": gradient}
    both = claim_fields(score, Controls(gradient, score))
    assert list(both) == ["trained", "untrained", "oracle score"]  # results.json's order
    key, process = jax.random.key(0), wgfm.VP()
    xs, ts = noised_points(process, np.ones((3, 2)), 2, key)
    assert xs.shape == (2, 3, 2)
    np.testing.assert_array_equal(ts, times_grid(process, 2))
    expected = noised_samples(process, jnp.ones((3, 2)), ts, key=jax.random.split(key)[0])
    np.testing.assert_array_equal(xs, expected)
