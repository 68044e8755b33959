"""`wgfm diagnose` end to end, through its command with ``--condition FILE.npz``, on tiny
SDXL-, SD3- and FLUX-type pipelines saved with save_pretrained: the added conditions of SDXL,
SD3's pooled projections on a shifted flow, FLUX's 2x2 packing with the
distilled ``guidance`` condition and a dynamically shifted scheduler; text guidance on SD3. Each run writes the
full-dimension lambda estimate (D = 256 > the test sizes' max_exact_dim: the probe path, as
for real models) and a report stating the conditions, the guidance and the time map used.
The sizes are the test suite's (tests/test_diagnose.py), not --quick's: one run takes ~20 s
on 2 CPU cores instead of ~80 s; docs/families_check.py runs the real --quick."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from test_diagnose import SIZES  # noqa: E402
from test_families_transformers import FLUX, SD3  # noqa: E402
from test_families_unet import SDXL, _rand, _vae  # noqa: E402
from test_interop_pipelines import _pipeline  # noqa: E402

from wgfm import cli  # noqa: E402
from wgfm.diagnosis import CLAIMS  # noqa: E402
from wgfm.diagnosis.command import DiagnoseConfig, run  # noqa: E402

D = 8 * 8 * 4  # every pipeline here: 8x8 latents of 4 channels


def _sdxl(root):
    sched = diffusers.EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_end=0.012)
    unet = diffusers.UNet2DConditionModel(**SDXL)
    return _pipeline(
        root, "StableDiffusionXLPipeline", {"unet": unet, "vae": _vae(), "scheduler": sched}
    )


def _sd3(root):
    tr = diffusers.SD3Transformer2DModel(**SD3)
    vae = _vae(shift_factor=0.06, scaling_factor=1.5)
    sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    return _pipeline(
        root, "StableDiffusion3Pipeline", {"transformer": tr, "vae": vae, "scheduler": sched}
    )


def _flux(root):
    tr = diffusers.FluxTransformer2DModel(**FLUX)  # guidance_embeds: FLUX.1-dev-type
    sched = diffusers.FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True, base_image_seq_len=4, max_image_seq_len=64
    )
    return _pipeline(root, "FluxPipeline", {"transformer": tr, "scheduler": sched})


def _images(folder):
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):  # 16x16 pixels: the tiny VAE's 8x8 latents
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


TEXT = {"encoder_hidden_states": _rand(0, 3, 8)}
# family: (builder, condition, negative condition or None, extra options, report lines)
CASES = {
    # Clean images given (encoded by its VAE): generating them takes this UNet ~20 s.
    "sdxl": (
        _sdxl,
        {**TEXT, "text_embeds": _rand(1, 8)},
        None,
        {"images": "images"},
        (
            "resized to 16x16, encoded into the latent space of the pipeline's AutoencoderKL",
            "conditioned on a given text_embeds (the pooled text embedding) of shape (8,)",
            "time_ids [16.0, 16.0, 0.0, 0.0, 16.0, 16.0] (the pipeline's default",
            "read as SDXL: input latents",
            "EulerDiscreteScheduler -> DiscreteVP (1000 steps); network output epsilon, "
            "field kind eps",
        ),
    ),
    # Text guidance here, where the network is cheapest to call twice.
    "sd3": (
        _sd3,
        {**TEXT, "pooled_projections": _rand(4, 8)},
        {"encoder_hidden_states": _rand(2, 3, 8), "pooled_projections": _rand(3, 8)},
        {"guidance_scale": 5.0},
        (
            "conditioned on a given pooled_projections",
            "F(x, null) + w (F(x, c) - F(x, null)) with w = 5",
            "timestep the scheduler's timestep sigma * 1000",
            "AutoencoderKL (scaling_factor 1.5, shift_factor 0.06)",
            "FlowMatchEulerDiscreteScheduler -> ShiftedInterpolant (shift 3)",
            "field kind velocity",
        ),
    ),
    "flux": (
        _flux,
        {**TEXT, "pooled_projections": _rand(4, 8)},
        None,
        {"sample_size": 8},
        (
            "guidance 3.5 (the pipeline's default: FLUX.1-dev's distilled guidance scale, an "
            "input of the network, not classifier-free guidance",
            "timestep sigma (the pipeline's timestep / 1000)",
            "packed into 2x2 patches",
            # 16 packed tokens between base 4 (shift 0.5) and max 64 (1.15): mu = 0.63.
            "mu 0.63: the pipeline's shift for 8x8 latents",
            "ShiftedInterpolant (shift 1.8776",
            "field kind velocity",
        ),
    ),
}


@pytest.mark.parametrize("family", list(CASES))
def test_diagnose_quick_end_to_end(family, tmp_path):
    build, cond, neg, options, lines = CASES[family]
    torch.manual_seed(0)
    root = build(tmp_path / family)
    np.savez(tmp_path / "c.npz", **cond)
    if neg is not None:
        np.savez(tmp_path / "n.npz", **neg)
        options = {**options, "negative_condition": tmp_path / "n.npz"}
    if "images" in options:
        options = {**options, "images": _images(tmp_path / "images")}
    out = tmp_path / "out"
    config = DiagnoseConfig(
        model=root, condition=tmp_path / "c.npz", out=out, quick=True, **options
    )
    d = run(config, sizes=SIZES)
    assert d is not None  # one process: it writes the report
    res = json.loads((out / "results.json").read_text())
    md = (out / "REPORT.md").read_text()
    for line in lines:
        assert line in md, line
    assert "- mode: quick (sizes overridden)" in md
    (claim1,) = res["numbers"]["differential"].values()
    assert claim1["jacobian"]["dim"] == D and not claim1["jacobian"]["exact"]
    probe = claim1["median_probe_ratio"]
    assert set(probe) == {"trained", "untrained", "oracle score"}
    # The Gaussian fit's exact score is a gradient: its lambda is float32 rounding (~1e-7). A
    # random network's is not: lambda 0.1..1, and >= 2e-3 where a flow's velocity is nearly
    # linear (pure noise). Both sides of the verdict are measured, not placeholders.
    trained, oracle = np.asarray(probe["trained"]), np.asarray(probe["oracle score"])
    assert len(trained) == SIZES.num_levels and np.all(np.isfinite(trained)), probe
    assert np.all(oracle < 1e-5) and trained.min() > 100 * oracle.max(), probe
    rows = d.rows[CLAIMS["differential"].title]
    assert len(rows) == 2 and "untrained" in rows[1].control
    (claim2,) = res["numbers"]["integral"].values()
    assert np.isfinite(claim2["circle"]["trained"]["median_abs_I_over_L"]).all()


def test_missing_condition_is_one_line_with_nothing_written(tmp_path, capsys):
    root = _sdxl(tmp_path / "sdxl")
    np.savez(tmp_path / "half.npz", encoder_hidden_states=TEXT["encoder_hidden_states"])
    out = tmp_path / "out"
    args = ["diagnose", "--model", str(root), "--condition", str(tmp_path / "half.npz")]
    assert cli.main([*args, "--out", str(out), "--quick"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "text_embeds (8,)" in err[0] and not out.exists()
