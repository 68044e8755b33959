"""The UNet2DConditionModel families against diffusers itself, on tiny random configs saved
with save_pretrained: SDXL (added conditions ``text_embeds``/``time_ids``, text guidance in the
pipeline's convention), SD 2.x v-prediction, the Kandinsky 2.2 decoder (``image_embeds``,
``movq`` latents); the field at (x, t) equals the pipeline's own denoiser call at the
scheduler's timestep for that t (values and JVPs, float32)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from test_interop_pipelines import COND_UNET, _check_against, _perturbed, _pipeline  # noqa: E402

from wgfm.interop import load_diffusers  # noqa: E402

SDXL = dict(
    COND_UNET,
    addition_embed_type="text_time",
    addition_time_embed_dim=4,
    projection_class_embeddings_input_dim=6 * 4 + 8,  # six size ids of 4 + a pooled 8
)
KANDINSKY = dict(
    COND_UNET,
    out_channels=8,  # learned variance, as the 2.2 decoder
    addition_embed_type="image",
    encoder_hid_dim_type="image_proj",
    encoder_hid_dim=8,
)


def _vae(cls="AutoencoderKL", **kw):
    """A tiny autoencoder downsampling 2x: 8x8 latents are 16x16 images."""
    cfg: dict[str, object] = dict(
        block_out_channels=(8, 8), norm_num_groups=4, latent_channels=4, sample_size=16
    )
    cfg["down_block_types"] = ("DownEncoderBlock2D",) * 2
    cfg["up_block_types"] = ("UpDecoderBlock2D",) * 2
    return getattr(diffusers, cls)(**cfg, **kw)


def _rand(seed, *shape):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    unet = _perturbed(diffusers.UNet2DConditionModel(**SDXL))
    sched = diffusers.EulerDiscreteScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        timestep_spacing="leading",
    )
    root = _pipeline(
        tmp_path_factory.mktemp("sdxl"),
        "StableDiffusionXLPipeline",
        {"unet": unet, "vae": _vae(), "scheduler": sched},
    )
    return unet, sched, root


def test_sdxl_conditions_are_declared_and_checked(sdxl):
    _, _, root = sdxl
    ehs, pooled = _rand(0, 3, 8), _rand(1, 8)
    with pytest.raises(ValueError, match=r"give `condition`.* with text_embeds \(it takes ") as e:
        load_diffusers(root, condition={"encoder_hidden_states": ehs})
    assert "encoder_hidden_states (seq, 8), text_embeds (8,), time_ids (6,) optional" in str(
        e.value
    )
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="names `pooled`, which UNet2DConditionModel does not"):
        load_diffusers(root, condition={"encoder_hidden_states": ehs, "pooled": pooled})
    with pytest.raises(ValueError, match=r"`text_embeds` must have shape \(8,\).*got \(7,\)"):
        load_diffusers(root, condition={"encoder_hidden_states": ehs, "text_embeds": pooled[:7]})
    with pytest.raises(ValueError, match="needs the negative .* text_embeds"):
        load_diffusers(
            root, condition={"encoder_hidden_states": ehs, "text_embeds": pooled}, guidance_scale=5
        )


def test_sdxl_field_is_the_pipelines_guided_call(sdxl):
    unet, sched, root = sdxl
    c = {"encoder_hidden_states": _rand(0, 3, 8), "text_embeds": _rand(1, 8)}
    n = {"encoder_hidden_states": _rand(2, 3, 8), "text_embeds": _rand(3, 8)}
    field, _ = load_diffusers(root, condition=c, negative_condition=n, guidance_scale=5.0)
    notes = " ".join(field.notes)
    assert "F(x, null) + w (F(x, c) - F(x, null)) with w = 5" in notes
    assert "time_ids [16.0, 16.0, 0.0, 0.0, 16.0, 16.0]" in notes
    sched.set_timesteps(25)
    ts = int(sched.timesteps[10])  # an inference step's own timestep (leading spacing: integer)
    t = (ts + 1) / 1000
    assert float(field.schedule.timestep(t)) == pytest.approx(ts, abs=1e-3)
    # The pipeline's _get_add_time_ids: original size, crop (0, 0), target size, in pixels.
    ids = torch.tensor([[16.0, 16.0, 0.0, 0.0, 16.0, 16.0]])

    def call(x, cond):
        e, p = (torch.from_numpy(cond[k])[None] for k in ("encoder_hidden_states", "text_embeds"))
        added = {"text_embeds": p, "time_ids": ids}
        return unet(x, ts, encoder_hidden_states=e, added_cond_kwargs=added).sample

    def ref(x, t_):
        u = call(x, n)
        return u + 5.0 * (call(x, c) - u)

    _check_against(field, ref, (8, 8, 4), t)


def test_sd2_v_prediction_end_to_end(tmp_path):
    unet = _perturbed(diffusers.UNet2DConditionModel(**COND_UNET))
    sched = diffusers.DDIMScheduler(
        prediction_type="v_prediction", beta_schedule="scaled_linear", beta_end=0.012
    )
    root = _pipeline(tmp_path, "StableDiffusionPipeline", {"unet": unet, "scheduler": sched})
    e = _rand(4, 5, 8)
    field, _ = load_diffusers(root, encoder_hidden_states=e)
    assert field.kind == "eps" and "v_prediction" in field.describe_process()
    k = 600
    ab = float(sched.alphas_cumprod[k])

    def ref(x, t_):
        v = unet(x, k, encoder_hidden_states=torch.from_numpy(e)[None]).sample
        # x = sqrt(ab) x0 + sqrt(1 - ab) eps and v = sqrt(ab) eps - sqrt(1 - ab) x0.
        return (1 - ab) ** 0.5 * x + ab**0.5 * v

    _check_against(field, ref, (8, 8, 4), (k + 1) / 1000)


def test_kandinsky22_image_embeds_in_movq_latents(tmp_path):
    unet = _perturbed(diffusers.UNet2DConditionModel(**KANDINSKY))
    movq = _vae("VQModel")  # its config's scaling_factor 0.18215: the pipeline never uses it
    sched = diffusers.DDPMScheduler()
    root = _pipeline(
        tmp_path, "KandinskyV22Pipeline", {"unet": unet, "movq": movq, "scheduler": sched}
    )
    with pytest.raises(ValueError, match=r"image_embeds \(8,\)"):
        load_diffusers(root)
    img, neg = _rand(5, 8), _rand(6, 8)
    field, _ = load_diffusers(
        root,
        condition={"image_embeds": img},
        negative_condition={"image_embeds": neg},
        guidance_scale=4.0,
    )
    assert field.latent.cls == "VQModel" and field.latent.scaling_factor == 1.0
    assert "learned variance" in " ".join(field.notes)
    k = 300

    def call(x, e):
        added = {"image_embeds": torch.from_numpy(e)[None]}
        return unet(x, k, encoder_hidden_states=None, added_cond_kwargs=added).sample[:, :4]

    def ref(x, t_):
        u = call(x, neg)
        return u + 4.0 * (call(x, img) - u)

    _check_against(field, ref, (8, 8, 4), (k + 1) / 1000)
