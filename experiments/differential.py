"""Claim 1 — the differential constraint: trained networks have asymmetric Jacobians.

A score is a gradient, so its Jacobian (the Hessian of ``log p_t``) is symmetric. We measure the
asymmetry ratio ``lambda = ||J - J^T||_F / ||J||_F`` (and QCSBM's NAsym) of the score implied by
trained networks at every noise level, with exact forward-mode Jacobians (D <= 64), against two
controls: the exact oracle score (lambda ~ 0, float32 rounding; for images, the exact score of
the Gaussian fitted to the data) and an untrained network. Beyond ``max_exact_dim`` (MNIST,
CIFAR-10) we take the authors' path: K x K principal sub-Jacobians on random coordinates (any
asymmetric block certifies non-conservativity) with probe estimates of the full ratio; on the
digits U-Net we show that both estimators agree with the exact numbers.

The measurement is the library's :func:`wgfm.diagnosis.measure_asymmetry`, the one ``wgfm
diagnose`` makes; this module chooses the networks, sizes and controls of each data set.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from experiments.assets import Context
from experiments.measures import measure_claim
from experiments.report import ClaimRow, Report, fmt, image_grid
from wgfm.diagnosis import CLAIMS, compare_spaces
from wgfm.presets import MIXTURES

CLAIM = CLAIMS["differential"]
TITLE = CLAIM.title
NUMBERS_KEY = CLAIM.key


def run(ctx: Context, report: Report, title: str) -> None:
    sz = ctx.sizes
    summary: dict[str, dict] = {}
    for data in ctx.datasets:
        image = data not in MIXTURES
        check = (data == "digits" or data == "mnist-latent") and sz.estimator_check
        claim = dataclasses.replace(
            CLAIM, estimator_check=check, exact_samples=sz.exact_samples if image else 0
        )
        m = measure_claim(
            ctx,
            claim,
            data,
            keys=(f"diff-x-{data}", f"diff-{data}"),
            control_name="exact score of a Gaussian fit" if image else "exact oracle score",
        )
        report.add_measurement(title, m)
        summary[data] = m.numbers
        if data in ("mnist", "mnist-latent", "cifar10") and sz.figure_samples > 0:
            what = "decoded latent DDIM-50 samples" if data == "mnist-latent" else "DDIM-50 samples"
            fig = image_grid(
                ctx.generated(data, sz.figure_samples), f"{what} of the measured network ({data})"
            )
            report.save_figure(title, fig, f"samples_{data}")
        if data == "mnist-latent":
            report.add(title, pixel_vs_latent(m.numbers, ctx.config.pixel_run))
        if data == "digits" and not check:
            report.notes[title] = (
                "The check of the large-D estimators (16x16 sub-Jacobians, 32 probes) against "
                "the exact digits ratios runs in the full reproduction, not with --quick."
            )
    report.numbers[NUMBERS_KEY] = summary


def pixel_vs_latent(latent: dict, pixel_run: Path | None) -> ClaimRow:
    """The paper's comparison of the two settings: the latent network's exact asymmetry ratio
    by level (``latent``, claim-1 numbers of mnist-latent) against the pixel network's exact
    ratios (claim-1 numbers of a ``--preset mnist`` run in ``pixel_run``), on their common
    levels (:func:`wgfm.diagnosis.compare_spaces`)."""
    lat = np.asarray(latent["median_ratio"]["trained"])
    pix_numbers = _pixel_numbers(pixel_run)
    if pix_numbers is None or "median_exact_ratio" not in pix_numbers:
        return ClaimRow(
            "pixel vs latent: both spaces are non-conservative, growing towards low noise",
            f"latent median lambda {fmt(lat.min())}..{fmt(lat.max())}",
            "no pixel run given (--pixel-run OUT of `--preset mnist`)",
            bool(lat.min() > 1e-2),
            "latent only",
        )
    return compare_spaces(
        (np.asarray(latent["levels"]), lat),
        (np.asarray(pix_numbers["levels"]), np.asarray(pix_numbers["median_exact_ratio"])),
        what="pixel ratios from its exact-Jacobian subset",
        quantity="exact median lambda",
    )


def _pixel_numbers(pixel_run: Path | None) -> dict | None:
    if pixel_run is None:
        return None
    path = Path(pixel_run)
    path = path / "results.json" if path.is_dir() else path
    if not path.is_file():
        raise ValueError(
            f"`pixel_run` must be a `--preset mnist` output or its results.json: "
            f"{path} does not exist."
        )
    res = json.loads(path.read_text())
    return res.get("numbers", {}).get("differential", {}).get("mnist")
