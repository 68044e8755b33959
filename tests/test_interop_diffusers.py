"""wgfm.interop.diffusers against diffusers itself: random UNet2DModels saved with
``save_pretrained``, loaded by wgfm, compared output for output; schedulers' ``alphas_cumprod``;
every malformed directory gives its own clear error."""

from __future__ import annotations

import json
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

from wgfm import as_field, samplers  # noqa: E402
from wgfm.interop import DDPM_CIFAR10_32, load_diffusers, load_unet2d, scheduler_betas  # noqa: E402
from wgfm.processes import DiscreteVP, discrete_schedule  # noqa: E402

# google/ddpm-cifar10-32's published unet and scheduler configurations, copied into the
# repository: the package's constant is checked against this copy, not against itself.
PUBLISHED = json.loads((Path(__file__).parent / "fixtures" / "ddpm-cifar10-32.json").read_text())
CIFAR_UNET = DDPM_CIFAR10_32
TINY = dict(
    sample_size=8,
    block_out_channels=(16, 32),
    layers_per_block=1,
    norm_num_groups=4,
    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    attention_head_dim=8,
    up_block_types=("AttnUpBlock2D", "UpBlock2D"),
)
CONFIGS = {
    "tiny": (TINY, [3.0, 700.5]),
    # Fourier embedding (timesteps are noise levels > 0), FiLM time conditioning, one input
    # channel, two outputs, right/bottom-padded downsampling, a mid-block scale, GELU.
    "fourier-scale-shift": (
        dict(
            sample_size=16,
            block_out_channels=(16, 32, 32),
            layers_per_block=2,
            down_block_types=("AttnDownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D", "AttnUpBlock2D"),
            norm_num_groups=4,
            attention_head_dim=None,
            time_embedding_type="fourier",
            resnet_time_scale_shift="scale_shift",
            center_input_sample=True,
            downsample_padding=0,
            mid_block_scale_factor=2**0.5,
            act_fn="gelu",
            flip_sin_to_cos=False,
            in_channels=1,
            out_channels=2,
            norm_eps=1e-6,
        ),
        [0.5, 20.0],
    ),
    "mish-attn-groups": (
        dict(
            TINY,
            resnet_time_scale_shift="scale_shift",
            attn_norm_num_groups=2,
            freq_shift=1,
            act_fn="mish",
            time_embedding_dim=24,
            attention_head_dim=4,
            add_attention=True,
        ),
        [0.0, 999.0],
    ),
}


def _random_unet(config: dict, seed: int = 0):
    """A diffusers UNet2DModel whose every parameter (GroupNorm scales and biases included) is
    perturbed, so that no mapping error can hide behind an identity initialisation."""
    torch.manual_seed(seed)
    m = diffusers.UNet2DModel(**config).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return m


def _torch_out(m, x_nchw: np.ndarray, timesteps) -> np.ndarray:
    with torch.no_grad():
        ts = torch.as_tensor(np.asarray(timesteps, np.float32))
        return m(torch.from_numpy(x_nchw), ts).sample.numpy()


def _compare(m, model, params, timesteps, hw: int, c: int) -> tuple[float, float]:
    x = np.random.default_rng(1).standard_normal((len(timesteps), c, hw, hw)).astype(np.float32)
    ref = _torch_out(m, x, timesteps)
    apply = jax.jit(jax.vmap(model.apply, in_axes=(None, 0, 0)))
    out = apply(params, jnp.asarray(x.transpose(0, 2, 3, 1)), jnp.asarray(timesteps, jnp.float32))
    out = np.asarray(out).transpose(0, 3, 1, 2)
    assert out.dtype == np.float32
    return float(np.max(np.abs(out - ref))), float(np.max(np.abs(ref)))


# float32 tolerance: XLA and PyTorch (oneDNN) sum the convolutions in different orders; each
# layer's relative rounding is ~sqrt(fan_in) * 2^-24 <= ~1e-5 (fan_in <= 9 * 512) and GroupNorm
# renormalises every block, so the ~40 layers stay ~1e-5 of the output scale (measured: 1-9e-6).
# 1e-4 leaves ~10x margin; a wrong layout, missing term or swapped tensor gives O(1).
RTOL = 1e-4


@pytest.mark.parametrize("name", list(CONFIGS))
def test_port_matches_diffusers(tmp_path, name):
    config, timesteps = CONFIGS[name]
    m = _random_unet(config)
    m.save_pretrained(tmp_path)
    model, params, raw = load_unet2d(tmp_path)
    assert raw["block_out_channels"] == list(config["block_out_channels"])
    n_torch = sum(p.numel() for p in m.parameters())
    assert sum(a.size for a in jax.tree.leaves(params)) == n_torch
    err, scale = _compare(m, model, params, timesteps, config["sample_size"], m.config.in_channels)
    assert scale > 0.5 and err <= RTOL * scale, (err, scale)


def test_ddpm_cifar10_32_config_matches_diffusers(tmp_path):
    config = PUBLISHED["unet"]
    assert config == CIFAR_UNET
    m = _random_unet(config)
    m.save_pretrained(tmp_path)
    model, params, _ = load_unet2d(tmp_path)
    n = sum(a.size for a in jax.tree.leaves(params))
    assert n == sum(p.numel() for p in m.parameters()) and 35.7e6 < n < 35.8e6
    err, scale = _compare(m, model, params, [0.0, 999.0], 32, 3)
    assert scale > 0.5 and err <= RTOL * scale, (err, scale)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """A pipeline directory (unet/ + scheduler/) with a v-prediction cosine scheduler."""
    root = tmp_path_factory.mktemp("pipe")
    m = _random_unet(TINY)
    m.save_pretrained(root / "unet")
    sched = diffusers.DDPMScheduler(
        beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction"
    )
    sched.save_pretrained(root / "scheduler")
    return root, m, sched


def test_pipeline_field_time_convention_and_v_prediction(pipeline):
    root, m, sched = pipeline
    field, process = load_diffusers(root)
    assert isinstance(process, DiscreteVP) and field.kind == "eps"
    x = np.random.default_rng(2).standard_normal((3, 8, 8)).astype(np.float32)
    k = 249
    t = (k + 1) / 1000  # training step k sits at t = (k+1)/K
    v = _torch_out(m, x[None], [float(k)])[0]
    ab = float(sched.alphas_cumprod[k])
    eps_ref = np.sqrt(1 - ab) * x + np.sqrt(ab) * v  # eps from v = alpha eps - sigma x0
    got = np.asarray(field(jnp.asarray(x.transpose(1, 2, 0)), jnp.float32(t))).transpose(2, 0, 1)
    assert np.max(np.abs(got - eps_ref)) <= RTOL * np.max(np.abs(eps_ref))
    jitted = eqx.filter_jit(field)(jnp.asarray(x.transpose(1, 2, 0)), jnp.float32(t))
    np.testing.assert_allclose(np.asarray(jitted).transpose(2, 0, 1), got, rtol=1e-5, atol=1e-5)
    # Usable downstream: the WGF velocity and DDIM on the scheduler's own grid.
    vel = as_field(process, field, kind=field.kind, to="velocity")
    y = jnp.asarray(x.transpose(1, 2, 0))
    a, b = process.velocity_coefficients(t)
    expect = a * y - b * jnp.asarray(got.transpose(1, 2, 0)) / process.sigma(t)
    np.testing.assert_allclose(vel(y, jnp.float32(t)), expect, rtol=1e-4, atol=1e-4)
    # float64 start: sample_ddim's schedule arrays are float64 under x64 (scan carries one dtype).
    y64 = y[None].astype(jnp.float64)
    res = samplers.sample_ddim(field, process, y64, kind=field.kind, num_steps=2)
    assert res.samples.shape == (1, 8, 8, 3) and bool(jnp.all(jnp.isfinite(res.samples)))


@pytest.mark.parametrize("kind", ["epsilon", "sample"])
def test_prediction_type_sets_kind(pipeline, kind):
    root, _, _ = pipeline
    field, _ = load_diffusers(root / "unet", scheduler_config={"prediction_type": kind})
    assert field.kind == {"epsilon": "eps", "sample": "x0"}[kind]


def test_bare_model_dir_warns_and_uses_ddpm_defaults(tmp_path):
    _random_unet(TINY).save_pretrained(tmp_path / "alone")
    with pytest.warns(UserWarning, match="DDPMScheduler defaults"):
        _, process = load_diffusers(tmp_path / "alone")
    ref = diffusers.DDPMScheduler().alphas_cumprod.double().numpy()
    np.testing.assert_allclose(process.alphas_cumprod(), ref, rtol=1e-4)


def test_component_dir_keeps_the_sibling_scheduler(pipeline):
    """``--model pipe/unet`` uses ``pipe/scheduler`` (v-prediction, cosine), not defaults."""
    root, _, sched = pipeline
    field, process = load_diffusers(root / "unet")
    assert field.prediction_type == "v_prediction"
    np.testing.assert_allclose(
        process.alphas_cumprod(), sched.alphas_cumprod.double().numpy(), rtol=1e-4
    )


SCHEDULES = [
    dict(beta_schedule="linear"),
    dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
    dict(beta_schedule="squaredcos_cap_v2"),
    dict(beta_schedule="sigmoid", beta_start=1e-4, beta_end=0.02),
    dict(trained_betas=list(np.linspace(1e-4, 0.05, 500))),
    dict(beta_schedule="linear", rescale_betas_zero_snr=True, num_train_timesteps=400),
    # the published DDPM CIFAR-10 scheduler (its class name is not a constructor argument)
    {k: v for k, v in PUBLISHED["scheduler"].items() if not k.startswith("_")},
]


@pytest.mark.parametrize("cfg", SCHEDULES, ids=lambda c: c.get("beta_schedule") or "trained")
def test_scheduler_alphas_cumprod(cfg):
    sched = diffusers.DDPMScheduler(**cfg)
    ref_b = sched.betas.double().numpy()
    ref_ab = sched.alphas_cumprod.double().numpy()
    if cfg.get("rescale_betas_zero_snr"):
        # diffusers rescales in float32, subtracting sqrt(alphabar_K) (cancellation: ~1e-3
        # relative error on small betas): check against its own function run in float64, and
        # against the float32 scheduler to its absolute accuracy.
        from diffusers.schedulers.scheduling_ddpm import rescale_zero_terminal_snr

        lin = torch.linspace(1e-4, 0.02, sched.config.num_train_timesteps, dtype=torch.float64)
        ab32 = ref_ab
        ref_b = rescale_zero_terminal_snr(lin).numpy()
        ref_ab = np.cumprod(1 - ref_b)
        np.testing.assert_allclose(ref_ab, ab32, atol=1e-5)
    ours = scheduler_betas(dict(sched.config))
    # diffusers builds betas in float32: 1-2 ulps (2^-24 relative) from the exact values.
    np.testing.assert_allclose(ours, ref_b, rtol=3e-7, atol=1e-12)
    process = DiscreteVP.from_betas(ours)
    k = process.num_steps
    # Its float32 cumprod adds <= K * 2^-24 relative (6e-5 for K = 1000); a zero-SNR final 0
    # is matched absolutely.
    np.testing.assert_allclose(process.alphas_cumprod(), ref_ab, rtol=1e-4, atol=1e-12)
    # The process at t_k = (k+1)/K reproduces it (float64 here: only the interpolation's exp/log).
    t = np.arange(1, k + 1) / k
    ab = np.asarray(jax.vmap(process.alpha)(jnp.asarray(t))) ** 2
    np.testing.assert_allclose(ab, process.alphas_cumprod(), rtol=1e-12, atol=1e-15)
    # Exactly diffusers' values when given diffusers' float32 betas.
    exact = DiscreteVP.from_betas(ref_b).alphas_cumprod()
    np.testing.assert_allclose(exact, np.cumprod(1 - ref_b), rtol=1e-14)
    if cfg.get("rescale_betas_zero_snr"):
        assert ab[-1] == 0.0 and process.t_max == (k - 1) / k
    grid_t, grid_ab = discrete_schedule(process, k)
    np.testing.assert_array_equal(grid_ab, process.alphas_cumprod())
    np.testing.assert_allclose(grid_t, t)


def test_discrete_vp_is_a_vp_process():
    process = DiscreteVP.from_betas(np.linspace(1e-4, 0.02, 1000))
    assert process.t_min == 1e-3 and process.t_max == 1.0
    t = jnp.asarray([0.0, 0.0004, 0.1234, 0.5, 0.9995, 1.0])
    a, s = jax.vmap(process.alpha)(t), jax.vmap(process.sigma)(t)
    np.testing.assert_allclose(a**2 + s**2, 1.0, rtol=1e-14)
    assert a[0] == 1.0 and s[0] == 0.0
    # Inside a step, d log alpha/dt is the autodiff derivative and g^2 = -2 d log alpha/dt.
    inner = jnp.asarray([0.0004, 0.1234, 0.5, 0.9995])
    dlog = jax.vmap(jax.grad(lambda u: jnp.log(process.alpha(u))))(inner)
    np.testing.assert_allclose(jax.vmap(process.dlog_alpha)(inner), dlog, rtol=1e-10)
    np.testing.assert_allclose(jax.vmap(process.g2)(inner), -2 * dlog, rtol=1e-10)
    # -> the continuous-time VP rate K beta_k (to O(beta)).
    np.testing.assert_allclose(
        process.g2(0.5), 1000 * np.linspace(1e-4, 0.02, 1000)[499], rtol=1e-2
    )
    np.testing.assert_allclose(jax.jit(process.sigma)(0.3), process.sigma(0.3), rtol=1e-14)


@pytest.mark.parametrize(
    "betas, match",
    [([0.1], "betas"), ([0.0, 0.1], "betas"), ([0.1, 1.5], "betas")],
)
def test_discrete_vp_bad_betas(betas, match):
    with pytest.raises(ValueError, match=match):
        DiscreteVP.from_betas(betas)


# ---------------------------------------------------------------------------------------------
# Bad directories


@pytest.fixture
def tiny_dir(tmp_path):
    _random_unet(TINY).save_pretrained(tmp_path)
    return tmp_path


def _edit_weights(d: Path, fn) -> None:
    f = d / "diffusion_pytorch_model.safetensors"
    state = dict(safetensors_numpy.load_file(str(f)))
    fn(state)
    safetensors_numpy.save_file(state, str(f))


def _edit_config(d: Path, **changes) -> None:
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(changes)
    (d / "config.json").write_text(json.dumps(cfg))


def test_legacy_attention_names_load_identically(tiny_dir):
    _, ref, _ = load_unet2d(tiny_dir)
    rename = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}

    def legacy(state):
        for key in [k for k in state if ".attentions." in k]:
            new = key
            for a, b in rename.items():
                new = new.replace(f".{a}.", f".{b}.")
            state[new] = state.pop(key)
        assert any(".query." in k for k in state)

    _edit_weights(tiny_dir, legacy)
    _, got, _ = load_unet2d(tiny_dir)
    jax.tree.map(np.testing.assert_array_equal, got, ref)


def test_missing_files(tmp_path, tiny_dir):
    with pytest.raises(ValueError, match="no config.json"):
        load_unet2d(tmp_path / "nowhere")
    (tiny_dir / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ValueError, match="has no diffusion_pytorch_model.safetensors"):
        load_unet2d(tiny_dir)


def test_wrong_shape_names_tensor_and_both_shapes(tiny_dir):
    key = "down_blocks.0.resnets.0.conv1.weight"
    _edit_weights(tiny_dir, lambda s: s.update({key: np.zeros((16, 16, 3, 1), np.float32)}))
    with pytest.raises(
        ValueError,
        match=r"down_blocks\.0\.resnets\.0\.conv1\.weight` has shape "
        r"\(16, 16, 3, 1\).*expects \(3, 3, 16, 16\)",
    ):
        load_unet2d(tiny_dir)


def test_unused_and_missing_tensors(tiny_dir):
    def edit(state):
        state["extra.weight"] = np.zeros(3, np.float32)
        del state["conv_out.bias"]

    _edit_weights(tiny_dir, edit)
    with pytest.raises(ValueError, match="not used by the port: extra.weight") as info:
        load_unet2d(tiny_dir)
    assert "with no tensor: params/conv_out/bias" in str(info.value)


@pytest.mark.parametrize(
    "changes, match",
    [
        (dict(down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"]), "'CrossAttnDownBlock2D'"),
        (dict(up_block_types=["SkipUpBlock2D", "UpBlock2D"]), "'SkipUpBlock2D'"),
        (dict(resnet_time_scale_shift="spatial"), "resnet_time_scale_shift"),
        (dict(time_embedding_type="learned"), "time_embedding_type"),
        (dict(downsample_type="resnet"), "downsample_type"),
        (dict(num_class_embeds=10), "num_class_embeds"),
        (dict(mystery_option=1), "mystery_option"),
        (dict(_class_name="UNet2DConditionModel"), "UNet2DConditionModel"),
        (dict(block_out_channels=[16, 32, 64]), "same length"),
        (dict(norm_num_groups=None), "norm_num_groups"),
    ],
)
def test_unsupported_config(tiny_dir, changes, match):
    _edit_config(tiny_dir, **changes)
    with pytest.raises(ValueError, match=match):
        load_unet2d(tiny_dir)


@pytest.mark.parametrize(
    "cfg, match",
    [
        ({"beta_schedule": "laplace"}, "laplace"),
        ({"prediction_type": "flow"}, "prediction_type"),
        ({"_class_name": "ScoreSdeVeScheduler", "sigma_max": 50.0}, "ScoreSdeVeScheduler"),
    ],
)
def test_unsupported_scheduler(tiny_dir, cfg, match):
    with pytest.raises(ValueError, match=match):
        load_diffusers(tiny_dir, scheduler_config=cfg)


def test_wrong_input_shape_is_named(tiny_dir):
    field, _ = load_diffusers(tiny_dir, scheduler_config={})
    with pytest.raises(ValueError, match="channels"):
        field(jnp.zeros((8, 8, 1)), 0.5)
    with pytest.raises(ValueError, match="divisible by 2"):
        field(jnp.zeros((7, 7, 3)), 0.5)


def test_pytorch_bin_checkpoint_needs_torch(tmp_path, monkeypatch):
    m = _random_unet(TINY)
    m.save_pretrained(tmp_path / "st")
    m.save_pretrained(tmp_path / "bin", safe_serialization=False)
    assert (tmp_path / "bin" / "diffusion_pytorch_model.bin").is_file()
    _, ref, _ = load_unet2d(tmp_path / "st")
    _, got, _ = load_unet2d(tmp_path / "bin")
    jax.tree.map(np.testing.assert_array_equal, got, ref)
    monkeypatch.setitem(__import__("sys").modules, "torch", None)  # `import torch` now fails
    with pytest.raises(ValueError, match="torch is not installed"):
        load_unet2d(tmp_path / "bin")
