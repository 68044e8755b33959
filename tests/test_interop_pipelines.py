"""wgfm.interop.pipelines: diffusers pipeline directories chosen by model_index.json, each
field checked against the PyTorch module it wraps (values and JVPs, float32), on tiny random
configs of every supported denoiser family; the scheduler families end to end; learned-variance
outputs, sharded and variant weights; and the errors that name the class."""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from test_diagnose import TINY  # noqa: E402

from wgfm.interop import DiffusersField, TorchDiffusersField, load_diffusers  # noqa: E402
from wgfm.interop.torch import contiguous_group_norms  # noqa: E402
from wgfm.processes import VE, ShiftedInterpolant  # noqa: E402

UNET = TINY  # test_diagnose's tiny pixel U-Net
COND_UNET = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    block_out_channels=(8, 16),
    layers_per_block=1,
    norm_num_groups=4,
    cross_attention_dim=8,
    attention_head_dim=4,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
)
DIT = dict(
    sample_size=8,
    in_channels=4,
    out_channels=8,  # learned sigma, as DiT-XL-2
    patch_size=2,
    num_layers=1,
    num_attention_heads=2,
    attention_head_dim=8,
    num_embeds_ada_norm=10,
)
# float32, the same PyTorch kernels on the same numbers, but batched differently (the field
# calls the module on its own batch, the reference on another): summation order only.
RTOL = 1e-4


def _perturbed(m, seed=0):
    # The reference's JVPs need contiguous GroupNorm inputs too (wgfm.interop.torch).
    contiguous_group_norms(m)
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return m.eval()


def _pipeline(root: Path, pipeline: str, parts: dict) -> Path:
    """Save ``parts`` (name -> diffusers object) under ``root`` with a model_index.json."""
    index = {"_class_name": pipeline, "_diffusers_version": diffusers.__version__}
    for name, obj in parts.items():
        obj.save_pretrained(root / name)
        index[name] = ["diffusers", type(obj).__name__]
    (root / "model_index.json").write_text(json.dumps(index))
    return root


def _check_against(field, ref, shape, t, rng_seed=0):
    """``field(x, t)`` and its JVP against ``ref(x_nchw, t) -> (N, C, H, W)`` (torch)."""
    rng = np.random.default_rng(rng_seed)
    x = rng.standard_normal(shape).astype(np.float32)
    v = rng.standard_normal(shape).astype(np.float32)
    got = np.asarray(field(jnp.asarray(x), jnp.float32(t)))
    to = lambda a: torch.from_numpy(a.transpose(2, 0, 1)[None].copy())  # noqa: E731
    with torch.no_grad():
        want = ref(to(x), torch.tensor([t]))[0].numpy().transpose(1, 2, 0)
    scale = np.abs(want).max()
    assert scale > 1e-2 and np.abs(got - want).max() <= RTOL * scale, (got, want)
    _, jvp = jax.jvp(lambda y: field(y, jnp.float32(t)), (jnp.asarray(x),), (jnp.asarray(v),))
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        _, tj = torch.func.jvp(lambda y: ref(y, torch.tensor([t])), (to(x),), (to(v),))
    tj = tj[0].numpy().transpose(1, 2, 0)
    assert np.abs(np.asarray(jvp) - tj).max() <= RTOL * np.abs(tj).max()


def test_unet2d_condition_model(tmp_path):
    unet = _perturbed(diffusers.UNet2DConditionModel(**COND_UNET))
    root = _pipeline(
        tmp_path, "StableDiffusionPipeline", {"unet": unet, "scheduler": diffusers.DDIMScheduler()}
    )
    with pytest.raises(ValueError, match="UNet2DConditionModel is conditioned on a text"):
        load_diffusers(root)
    e = np.random.default_rng(5).standard_normal((3, 8)).astype(np.float32)
    field, process = load_diffusers(root, encoder_hidden_states=e)
    assert isinstance(field, TorchDiffusersField) and field.kind == "eps"
    assert field.sample_shape == (8, 8, 4) and "text embedding" in " ".join(field.notes)
    k = 1000
    ref = lambda x, t: unet(x, t * k - 1, encoder_hidden_states=torch.from_numpy(e)[None]).sample  # noqa: E731
    _check_against(field, ref, (8, 8, 4), 0.25)
    with pytest.raises(ValueError, match="not class-conditional"):
        load_diffusers(root, encoder_hidden_states=e, class_label=1)


def test_dit_latent_learned_variance_and_null_class(tmp_path):
    dit = _perturbed(diffusers.DiTTransformer2DModel(**DIT))
    vae = diffusers.AutoencoderKL(
        block_out_channels=(8,), norm_num_groups=4, latent_channels=4, sample_size=16
    )
    root = _pipeline(
        tmp_path,
        "DiTPipeline",
        {"transformer": dit, "vae": vae, "scheduler": diffusers.DDIMScheduler()},
    )
    field, _ = load_diffusers(root)
    assert isinstance(field, TorchDiffusersField) and field.cls == "DiTTransformer2DModel"
    notes = " ".join(field.notes)
    assert "learned variance" in notes and "null class label 10" in notes
    assert field.latent is not None and field.latent.cls == "AutoencoderKL"
    assert field.latent.scaling_factor == pytest.approx(vae.config.scaling_factor)
    assert "AutoencoderKL" in notes
    null = torch.full((1,), 10)
    ref = lambda x, t: dit(x, t * 1000 - 1, class_labels=null).sample[:, :4]  # noqa: E731
    _check_against(field, ref, (8, 8, 4), 0.6)
    labelled, _ = load_diffusers(root / "transformer", class_label=3)
    three = torch.full((1,), 3)
    ref3 = lambda x, t: dit(x, t * 1000 - 1, class_labels=three).sample[:, :4]  # noqa: E731
    _check_against(labelled, ref3, (8, 8, 4), 0.3, rng_seed=1)
    with pytest.raises(ValueError, match="class_label"):
        load_diffusers(root, class_label=10)


def test_classifier_free_guidance(tmp_path):
    dit = _perturbed(diffusers.DiTTransformer2DModel(**DIT))
    root = _pipeline(
        tmp_path, "DiTPipeline", {"transformer": dit, "scheduler": diffusers.DDIMScheduler()}
    )
    with pytest.raises(ValueError, match="guidance_scale"):
        load_diffusers(root, guidance_scale=2.0)  # no class label: the null class only
    field, _ = load_diffusers(root, class_label=3, guidance_scale=2.0)
    assert "(1 + w) F(x, c) - w F(x, null) with w = 2, c = 3, null = 10" in " ".join(field.notes)
    c, u = torch.full((1,), 3), torch.full((1,), 10)

    def ref(x, t):
        k = t * 1000 - 1
        return (
            3 * dit(x, k, class_labels=c).sample[:, :4]
            - 2 * dit(x, k, class_labels=u).sample[:, :4]
        )

    _check_against(field, ref, (8, 8, 4), 0.5)


def test_transformer2d_model_patched(tmp_path):
    cfg = dict(DIT, norm_type="ada_norm_zero", out_channels=4)
    tr = _perturbed(diffusers.Transformer2DModel(**cfg))
    root = _pipeline(
        tmp_path, "DiTPipeline", {"transformer": tr, "scheduler": diffusers.DDPMScheduler()}
    )
    field, _ = load_diffusers(root, class_label=2)
    assert not any("learned variance" in n for n in field.notes)
    two = torch.full((1,), 2)
    ref = lambda x, t: tr(x, timestep=t * 1000 - 1, class_labels=two).sample  # noqa: E731
    _check_against(field, ref, (8, 8, 4), 0.4)


def test_uvit_autoencoder_and_unknown_classes_are_named(tmp_path):
    uvit = diffusers.UVit2DModel(
        hidden_size=16,
        cond_embed_dim=8,
        micro_cond_encode_dim=4,
        micro_cond_embed_dim=28,
        encoder_hidden_size=8,
        vocab_size=16,
        codebook_size=16,
        in_channels=8,
        block_out_channels=8,
        block_num_heads=2,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        num_res_blocks=1,
    )
    root = _pipeline(tmp_path / "amused", "AmusedPipeline", {"transformer": uvit})
    with pytest.raises(ValueError, match="UVit2DModel is a masked-token model"):
        load_diffusers(root)
    vae = diffusers.VQModel(block_out_channels=(8,), norm_num_groups=4, latent_channels=2)
    vae.save_pretrained(tmp_path / "vq")
    with pytest.raises(ValueError, match="VQModel, an autoencoder"):
        load_diffusers(tmp_path / "vq")
    unet = diffusers.UNet2DModel(**UNET)
    unet.save_pretrained(tmp_path / "odd")
    cfg = json.loads((tmp_path / "odd" / "config.json").read_text())
    (tmp_path / "odd" / "config.json").write_text(
        json.dumps({**cfg, "_class_name": "UNet3DConditionModel"})
    )
    with pytest.raises(ValueError, match="'UNet3DConditionModel' is not supported"):
        load_diffusers(tmp_path / "odd", scheduler_config={})
    with pytest.raises(ValueError, match="no unet/ or transformer/"):
        load_diffusers(_pipeline(tmp_path / "novae", "X", {"vae": vae}))


def test_class_conditional_unet2d_goes_to_torch(tmp_path):
    unet = _perturbed(diffusers.UNet2DModel(**UNET, num_class_embeds=5))
    root = _pipeline(
        tmp_path, "DDPMPipeline", {"unet": unet, "scheduler": diffusers.DDPMScheduler()}
    )
    with pytest.raises(ValueError, match="no null class"):
        load_diffusers(root)
    field, _ = load_diffusers(root, class_label=4)
    assert isinstance(field, TorchDiffusersField)
    four = torch.full((1,), 4)
    ref = lambda x, t: unet(x, t * 1000 - 1, class_labels=four).sample  # noqa: E731
    _check_against(field, ref, (8, 8, 3), 0.5)


# ---------------------------------------------------------------------------------------------
# Scheduler families end to end, on the flax port and on PyTorch


@pytest.mark.parametrize("backend", ["flax", "torch"])
def test_flow_matching_pipeline(tmp_path, backend):
    unet = _perturbed(diffusers.UNet2DModel(**UNET))
    sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    root = _pipeline(tmp_path, "FlowPipeline", {"unet": unet, "scheduler": sched})
    field, process = load_diffusers(root, backend=backend)
    assert isinstance(process, ShiftedInterpolant) and field.kind == "velocity"
    assert isinstance(field, DiffusersField if backend == "flax" else TorchDiffusersField)
    t = 0.4
    s = 3 * t / (1 + 2 * t)
    ds = 3 / (1 + 2 * t) ** 2

    def ref(x, t_):
        return ds * unet(x, torch.tensor([s * 1000.0])).sample

    _check_against(field, ref, (8, 8, 3), t)


def test_edm_pipeline(tmp_path):
    unet = _perturbed(diffusers.UNet2DModel(**UNET))
    sched = diffusers.EDMEulerScheduler(sigma_min=0.01, sigma_max=20.0, sigma_data=0.5)
    root = _pipeline(tmp_path, "EDMPipeline", {"unet": unet, "scheduler": sched})
    field, process = load_diffusers(root)
    assert isinstance(process, VE) and field.kind == "x0"
    t = 0.7
    sigma = 0.01 * (20.0 / 0.01) ** t

    def ref(x, t_):
        inp = sched.precondition_inputs(x, sigma)
        out = unet(inp, sched.precondition_noise(sigma)).sample
        return sched.precondition_outputs(x, out, sigma)

    _check_against(field, ref, (8, 8, 3), t)
    assert math.isclose(float(process.sigma(t)), sigma, rel_tol=1e-6)


# ---------------------------------------------------------------------------------------------
# Checkpoint forms


def test_learned_variance_unet2d_on_the_port(tmp_path):
    unet = _perturbed(diffusers.UNet2DModel(**UNET, out_channels=6))
    sched = diffusers.DDPMScheduler(variance_type="learned_range")
    root = _pipeline(tmp_path, "DDPMPipeline", {"unet": unet, "scheduler": sched})
    field, _ = load_diffusers(root)
    assert isinstance(field, DiffusersField) and field.learned_variance
    assert "the first 3" in " ".join(field.notes)
    ref = lambda x, t: unet(x, t * 1000 - 1).sample[:, :3]  # noqa: E731
    _check_against(field, ref, (8, 8, 3), 0.3)


def test_sharded_and_variant_weights(tmp_path):
    unet = _perturbed(diffusers.UNet2DModel(**UNET))
    unet.save_pretrained(tmp_path / "one")
    unet.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "diffusion_pytorch_model.safetensors.index.json").is_file()
    assert len(list((tmp_path / "sharded").glob("*.safetensors"))) > 1
    unet.to(torch.float16).save_pretrained(tmp_path / "fp16", variant="fp16")
    unet.float()
    ref_field, _ = load_diffusers(tmp_path / "one", scheduler_config={})
    sharded, _ = load_diffusers(tmp_path / "sharded", scheduler_config={})
    jax.tree.map(np.testing.assert_array_equal, sharded.params, ref_field.params)
    with pytest.raises(ValueError, match="pass `variant`"):
        load_diffusers(tmp_path / "fp16", scheduler_config={})
    half, _ = load_diffusers(tmp_path / "fp16", scheduler_config={}, variant="fp16")
    # fp16 weights read into float32: each parameter within half precision (2^-11 relative).
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=2**-11, atol=1e-7),
        half.params,
        ref_field.params,
    )
    assert jax.tree.leaves(half.params)[0].dtype == jnp.float32
    # The PyTorch path reads the same forms through diffusers itself.
    tsh, _ = load_diffusers(tmp_path / "sharded", scheduler_config={}, backend="torch")
    x = jnp.asarray(np.random.default_rng(0).standard_normal((8, 8, 3)), jnp.float32)
    a, b = np.asarray(tsh(x, 0.5)), np.asarray(ref_field(x, 0.5))
    assert np.abs(a - b).max() <= RTOL * np.abs(b).max()
    t16, _ = load_diffusers(tmp_path / "fp16", scheduler_config={}, backend="torch", variant="fp16")
    c = np.asarray(t16(x, 0.5))
    assert np.abs(c - np.asarray(half(x, 0.5))).max() <= RTOL * np.abs(b).max()


# ---------------------------------------------------------------------------------------------
# Latent pipelines


@pytest.mark.parametrize("vae_cls", ["VQModel", "AutoencoderKL"])
def test_latent_pipeline_encodes_with_its_autoencoder(tmp_path, vae_cls):
    """LDMPipeline (UNet2DModel + VQModel) and a KL latent pipeline: the field is the flax port
    in latent space, and images are encoded by the pipeline's own autoencoder times its
    scaling_factor (VQ: unquantised latents; KL: the posterior mean)."""
    from wgfm.interop.pipelines import encode_latents, pixel_shape

    torch.manual_seed(0)
    cfg = dict(block_out_channels=(8, 8), norm_num_groups=4, latent_channels=3, sample_size=16)
    cfg["down_block_types"] = ("DownEncoderBlock2D",) * 2
    cfg["up_block_types"] = ("UpDecoderBlock2D",) * 2
    vae = _perturbed(getattr(diffusers, vae_cls)(**cfg, scaling_factor=0.7))
    unet = diffusers.UNet2DModel(**UNET)
    name = "vqvae" if vae_cls == "VQModel" else "vae"
    root = _pipeline(
        tmp_path, "LDMPipeline", {"unet": unet, name: vae, "scheduler": diffusers.DDIMScheduler()}
    )
    field, _ = load_diffusers(root)
    assert isinstance(field, DiffusersField) and field.latent.cls == vae_cls
    assert f"latent space of the pipeline's {vae_cls} (scaling_factor 0.7)" in field.notes[-1]
    assert pixel_shape(field.latent, field.sample_shape) == (16, 16, 3)
    x = np.random.default_rng(0).uniform(-1, 1, (3, 16, 16, 3)).astype(np.float32)
    z = encode_latents(field.latent, x, batch=2)
    with torch.no_grad():
        enc = vae.encode(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
        ref = enc.latents if vae_cls == "VQModel" else enc.latent_dist.mode()
    ref = 0.7 * ref.numpy().transpose(0, 2, 3, 1)
    assert z.shape == (3, 8, 8, 3) == ref.shape
    # The same float32 kernels, batched 2 + 1 against 3: summation order only.
    np.testing.assert_allclose(z, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_unet2d_beyond_the_port_runs_on_pytorch(tmp_path):
    unet = _perturbed(diffusers.UNet2DModel(**UNET, downsample_type="resnet"))
    root = _pipeline(
        tmp_path, "DDPMPipeline", {"unet": unet, "scheduler": diffusers.DDPMScheduler()}
    )
    field, _ = load_diffusers(root)
    assert isinstance(field, TorchDiffusersField)
    assert "flax port does not support" in field.notes[-1] and "downsample_type" in field.notes[-1]
    ref = lambda x, t: unet(x, t * 1000 - 1).sample  # noqa: E731
    _check_against(field, ref, (8, 8, 3), 0.2)
    with pytest.raises(ValueError, match="downsample_type"):
        load_diffusers(root, backend="flax")
