"""The transformer families against diffusers itself, on tiny random configs saved with
save_pretrained: PixArt (caption embedding, ``resolution``/``aspect_ratio``, learned sigma),
SD3 (``pooled_projections``, shifted flow matching, ``shift_factor`` latents), FLUX.1 (2x2
packing, the pipeline's position ids, timestep / 1000, the distilled ``guidance``, ``mu`` from
the image size) and Sana (DPM-Solver flow sigmas, ``AutoencoderDC`` latents): the field at
(x, t) equals the pipeline's own denoiser call at the scheduler's timestep for that t (values
and JVPs, float32), and the time map reproduces the scheduler's sigmas at every step."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from test_families_unet import _rand, _vae  # noqa: E402
from test_interop_pipelines import _check_against, _perturbed, _pipeline  # noqa: E402

from wgfm.interop import load_diffusers  # noqa: E402
from wgfm.processes import ShiftedInterpolant  # noqa: E402

PIXART = dict(
    num_attention_heads=2,
    attention_head_dim=12,  # inner dim 24: the size embeddings take a third each
    in_channels=4,
    out_channels=8,
    num_layers=1,
    cross_attention_dim=24,
    sample_size=8,
    patch_size=2,
    caption_channels=8,
    use_additional_conditions=True,
    norm_num_groups=4,
)
SD3 = dict(
    sample_size=8,
    patch_size=2,
    in_channels=4,
    out_channels=4,
    num_layers=1,
    attention_head_dim=8,
    num_attention_heads=2,
    joint_attention_dim=8,
    caption_projection_dim=16,
    pooled_projection_dim=8,
    pos_embed_max_size=8,
)
FLUX = dict(
    patch_size=1,
    in_channels=16,  # 4 latent channels, packed 2x2
    num_layers=1,
    num_single_layers=1,
    attention_head_dim=8,
    num_attention_heads=2,
    joint_attention_dim=8,
    pooled_projection_dim=8,
    guidance_embeds=True,
    axes_dims_rope=(2, 2, 4),
)
SANA = dict(
    in_channels=4,
    out_channels=4,
    num_attention_heads=2,
    attention_head_dim=8,
    num_layers=1,
    num_cross_attention_heads=2,
    cross_attention_head_dim=8,
    cross_attention_dim=16,
    caption_channels=8,
    sample_size=8,
    patch_size=1,
)


def _dc():
    """A tiny AutoencoderDC (4 latent channels, 2x)."""
    return diffusers.AutoencoderDC(
        in_channels=3,
        latent_channels=4,
        attention_head_dim=4,
        encoder_block_types=("ResBlock", "ResBlock"),
        decoder_block_types=("ResBlock", "ResBlock"),
        encoder_block_out_channels=(8, 8),
        decoder_block_out_channels=(8, 8),
        encoder_layers_per_block=(1, 1),
        decoder_layers_per_block=(1, 1),
        encoder_qkv_multiscales=((), ()),
        decoder_qkv_multiscales=((), ()),
        decoder_norm_types="rms_norm",
        decoder_act_fns="silu",
        scaling_factor=0.4,
    ).eval()


def _flow_step(field, sched, i, shift, truncated=False):
    """wgfm time of the scheduler's step ``i``, checked against its sigma and timestep, and
    ds/dt there (the field is the velocity in t: ds/dt times the network's eps - x0).
    ``truncated``: the scheduler stores its timesteps sigma K as integers (DPM-Solver); the
    field passes sigma K itself, continuous in t, as FlowMatchEulerDiscreteScheduler does."""
    s, ts = float(sched.sigmas[i]), float(sched.timesteps[i])
    p = field.process
    assert isinstance(p, ShiftedInterpolant) and p.shift == pytest.approx(shift, rel=1e-6)
    t = float(p.time_of_sigma(s))
    # diffusers' sigmas are float32: 1e-6 relative.
    assert float(p.sigma(t)) == pytest.approx(s, rel=1e-6)
    mine = float(field.schedule.timestep(t))
    if truncated:
        assert int(mine + 1e-3) == ts
    else:
        assert mine == pytest.approx(ts, rel=1e-6)
    return t, shift / (1 + (shift - 1) * t) ** 2


def test_pixart_caption_and_size_conditions(tmp_path):
    tr = _perturbed(diffusers.PixArtTransformer2DModel(**PIXART))
    sched = diffusers.DPMSolverMultistepScheduler()
    root = _pipeline(
        tmp_path, "PixArtAlphaPipeline", {"transformer": tr, "vae": _vae(), "scheduler": sched}
    )
    e = _rand(0, 4, 8)
    field, _ = load_diffusers(root, condition={"encoder_hidden_states": e})
    notes = " ".join(field.notes)
    assert "resolution [16.0, 16.0]" in notes and "aspect_ratio [1.0]" in notes
    assert "learned variance" in notes
    k = 400
    # The pipeline's micro-conditions: the image's height and width, and their ratio.
    added = {"resolution": torch.tensor([[16.0, 16.0]]), "aspect_ratio": torch.tensor([[1.0]])}

    def ref(x, t_):
        out = tr(x, torch.from_numpy(e)[None], timestep=torch.tensor([k]), added_cond_kwargs=added)
        return out.sample[:, :4]

    _check_against(field, ref, (8, 8, 4), (k + 1) / 1000)
    # The caption's attention mask: its length is the caption's; left out of the null
    # condition, it is the forward's default there (every token attended), not the caption's.
    mask = np.array([1, 1, 0, 0], np.float32)
    with pytest.raises(ValueError, match="`encoder_attention_mask` has 3 along its seq axis, `en"):
        load_diffusers(
            root, condition={"encoder_hidden_states": e, "encoder_attention_mask": mask[:3]}
        )
    c = {"encoder_hidden_states": e, "encoder_attention_mask": mask}
    n = {"encoder_hidden_states": _rand(1, 4, 8)}
    filled, _ = load_diffusers(root, condition=c, negative_condition=n, guidance_scale=3.0)
    ones = {**n, "encoder_attention_mask": np.ones(4, np.float32)}
    given, _ = load_diffusers(root, condition=c, negative_condition=ones, guidance_scale=3.0)
    x = jnp.asarray(_rand(2, 8, 8, 4))
    # The same calls on the same numbers: equal to the last bit.
    np.testing.assert_array_equal(filled(x, 0.4), given(x, 0.4))
    masked, _ = load_diffusers(
        root,
        condition=c,
        negative_condition={**n, "encoder_attention_mask": mask},
        guidance_scale=3.0,
    )
    assert np.abs(np.asarray(masked(x, 0.4)) - np.asarray(given(x, 0.4))).max() > 1e-4


def test_sd3_pooled_projections_and_shifted_flow(tmp_path):
    tr = _perturbed(diffusers.SD3Transformer2DModel(**SD3))
    vae = _vae(shift_factor=0.06, scaling_factor=1.5)
    sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    root = _pipeline(
        tmp_path, "StableDiffusion3Pipeline", {"transformer": tr, "vae": vae, "scheduler": sched}
    )
    with pytest.raises(ValueError, match=r"pooled_projections \(8,\)"):
        load_diffusers(root, condition={"encoder_hidden_states": _rand(1, 3, 8)})
    c = {"encoder_hidden_states": _rand(1, 3, 8), "pooled_projections": _rand(2, 8)}
    field, _ = load_diffusers(root, condition=c)
    assert field.kind == "velocity" and field.latent.shift_factor == pytest.approx(0.06)
    assert "scaling_factor 1.5, shift_factor 0.06" in " ".join(field.notes)
    sched.set_timesteps(28)
    t, ds = _flow_step(field, sched, 9, 3.0)
    ts = sched.timesteps[9:10]

    def ref(x, t_):
        e, p = (
            torch.from_numpy(c[k])[None] for k in ("encoder_hidden_states", "pooled_projections")
        )
        return ds * tr(x, e, p, timestep=ts).sample

    _check_against(field, ref, (8, 8, 4), t)


def test_flux_packing_ids_guidance_and_mu(tmp_path):
    from diffusers.pipelines.flux.pipeline_flux import FluxPipeline, calculate_shift

    tr = _perturbed(diffusers.FluxTransformer2DModel(**FLUX))
    sched = diffusers.FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True, base_image_seq_len=4, max_image_seq_len=64
    )
    root = _pipeline(tmp_path, "FluxPipeline", {"transformer": tr, "scheduler": sched})
    c = {"encoder_hidden_states": _rand(3, 3, 8), "pooled_projections": _rand(4, 8)}
    with pytest.raises(ValueError, match="distilled guidance is its `guidance` condition"):
        load_diffusers(root, condition=c, sample_size=8, guidance_scale=2.0)
    field, _ = load_diffusers(root, condition={**c, "guidance": np.float32(2.5)}, sample_size=8)
    assert field.sample_shape == (8, 8, 4)
    # The pipeline's mu: 16 packed tokens for 8x8 latents.
    mu = calculate_shift(16, 4, 64, 0.5, 1.15)
    sched.set_timesteps(sigmas=np.linspace(1.0, 1 / 10, 10), mu=mu)
    t, ds = _flow_step(field, sched, 4, float(np.exp(mu)))
    ts = sched.timesteps[4:5]
    ids = FluxPipeline._prepare_latent_image_ids(1, 4, 4, "cpu", torch.float32)

    def ref(x, t_):
        e, p = (
            torch.from_numpy(c[k])[None] for k in ("encoder_hidden_states", "pooled_projections")
        )
        packed = FluxPipeline._pack_latents(x, 1, 4, 8, 8)
        out = tr(
            packed,
            timestep=ts / 1000,
            guidance=torch.tensor([2.5]),
            pooled_projections=p,
            encoder_hidden_states=e,
            txt_ids=torch.zeros(3, 3),
            img_ids=ids,
        ).sample
        # 8x8 latents are 64-pixel images at the pipeline's vae_scale_factor 8.
        return ds * FluxPipeline._unpack_latents(out, 64, 64, 8)

    _check_against(field, ref, (8, 8, 4), t)


def test_sana_dpm_solver_flow_sigmas_and_dc_latents(tmp_path):
    from wgfm.interop.pipelines import encode_latents

    tr = _perturbed(diffusers.SanaTransformer2DModel(**SANA))
    dc = _dc()
    sched = diffusers.DPMSolverMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0
    )
    root = _pipeline(tmp_path, "SanaPipeline", {"transformer": tr, "vae": dc, "scheduler": sched})
    e = _rand(5, 6, 8)
    field, _ = load_diffusers(root, condition={"encoder_hidden_states": e})
    assert field.latent.cls == "AutoencoderDC" and field.kind == "velocity"
    # The time map at every inference step of the flow-sigma grid.
    sched.set_timesteps(20)
    for i in range(20):
        t, ds = _flow_step(field, sched, i, 3.0, truncated=True)
    t, ds = _flow_step(field, sched, 7, 3.0, truncated=True)
    ts = torch.tensor([float(sched.sigmas[7]) * 1000])
    ref = lambda x, t_: ds * tr(x, torch.from_numpy(e)[None], timestep=ts).sample  # noqa: E731
    _check_against(field, ref, (8, 8, 4), t)
    x = np.random.default_rng(0).uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
    with torch.no_grad():
        want = 0.4 * dc.encode(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).latent
    # The same float32 kernels on the same batch.
    np.testing.assert_allclose(
        encode_latents(field.latent, x), want.numpy().transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-6
    )
