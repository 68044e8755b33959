"""What cannot be read as a score or velocity is refused in one line naming the class and the
reason (inpainting/depth UNets, AudioLDM's CLAP class embedding, consistency schedulers), and
CogVideoX's snr_shift_scale is applied as its scheduler applies it; the families table in
docs/diagnose_your_model.md is the registry's."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from test_families_unet import _vae  # noqa: E402
from test_interop_pipelines import COND_UNET, _pipeline  # noqa: E402

from wgfm.interop import load_diffusers, scheduler_map  # noqa: E402
from wgfm.interop.denoisers import DESCRIPTIONS, FAMILIES, supported, table  # noqa: E402

DOC = Path(__file__).resolve().parents[1] / "docs" / "diagnose_your_model.md"


@pytest.mark.parametrize("channels", [9, 5], ids=["inpainting", "depth"])
def test_inpainting_and_depth_unets_are_refused(tmp_path, channels):
    unet = diffusers.UNet2DConditionModel(**dict(COND_UNET, in_channels=channels))
    root = _pipeline(
        tmp_path / "pipe",
        "StableDiffusionInpaintPipeline",
        {"unet": unet, "vae": _vae(), "scheduler": diffusers.DDIMScheduler()},
    )
    out = tmp_path / "out"
    with pytest.raises(ValueError) as e:
        load_diffusers(root, encoder_hidden_states=np.zeros((3, 8), np.float32))
    msg = str(e.value)
    assert "UNet2DConditionModel is not supported" in msg and "\n" not in msg
    assert f"takes {channels} input channels and predicts 4" in msg and "inpainting" in msg
    assert not out.exists()


def test_clap_class_embedding_is_refused(tmp_path):
    cfg = dict(
        COND_UNET, class_embed_type="simple_projection", projection_class_embeddings_input_dim=8
    )
    root = _pipeline(
        tmp_path,
        "AudioLDMPipeline",
        {"unet": diffusers.UNet2DConditionModel(**cfg), "scheduler": diffusers.DDIMScheduler()},
    )
    with pytest.raises(
        ValueError, match="UNet2DConditionModel is not supported: its class_embed_type"
    ):
        load_diffusers(root)


@pytest.mark.parametrize("name", ["LCMScheduler", "TCDScheduler", "CMStochasticIterativeScheduler"])
def test_consistency_schedulers_are_refused(name):
    config = {"_class_name": name, **getattr(diffusers, name)().config}
    with pytest.raises(ValueError, match=f"{name}.*consistency-distilled"):
        scheduler_map(config)


@pytest.mark.parametrize("zero_snr", [False, True])
def test_cogvideox_snr_shift_is_applied(zero_snr):
    sched = diffusers.CogVideoXDDIMScheduler(
        snr_shift_scale=3.0, rescale_betas_zero_snr=zero_snr, beta_schedule="scaled_linear"
    )
    m = scheduler_map(dict(sched.config))
    k = np.arange(1000)
    ab = jax.vmap(lambda t: m.process.alpha(t) ** 2)(jnp.asarray((k + 1) / 1000))
    # diffusers computes alphas_cumprod in float32: 1e-6 relative, and at the last step of the
    # zero-SNR schedule (0 in both) an absolute 1e-7.
    np.testing.assert_allclose(ab, sched.alphas_cumprod.double().numpy(), rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("doc", [DOC, DOC.parents[1] / "README.md"], ids=lambda p: p.name)
def test_families_table_is_generated_from_the_registry(doc):
    text = doc.read_text()
    start, end = "<!-- families:start -->\n", "<!-- families:end -->"
    assert start in text and end in text
    assert text.split(start)[1].split(end)[0] == table()
    for f in FAMILIES:
        assert f"| {f.name} |" in text


def test_every_family_is_described_once():
    # families.toml and the registry name the same families, in the same order.
    assert list(DESCRIPTIONS) == [f.name for f in FAMILIES]
    for name, about in DESCRIPTIONS.items():
        assert about["guidance"] in ("class", "text", "none"), name
        assert {"classes", "examples", "state", "timestep", "output", "needs"} <= set(about)


def test_model_help_lists_the_registry(capsys):
    from wgfm import cli

    with pytest.raises(SystemExit):
        cli.main(["diagnose", "--help"])
    text = " ".join(capsys.readouterr().out.replace("│", " ").split())
    # Every family, by name, in registry order, then every class.
    assert f"families {', '.join(f.name for f in FAMILIES)}; classes" in text, text
    for cls in supported():
        assert cls in text, cls
