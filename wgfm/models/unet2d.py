"""A flax port of ``diffusers``' ``UNet2DModel`` (the DDPM U-Net family), for pretrained weights.

The module mirrors diffusers' configuration keys and its parameter tree mirrors the state-dict
names (``down_blocks.0.resnets.1.conv1.weight`` <-> ``down_blocks_0/resnets_1/conv1/kernel``), so
:mod:`wgfm.interop.diffusers` maps a checkpoint mechanically. Images are NHWC (XLA's native
layout on CPU; ``wgfm`` fields take ``(H, W, C)`` samples); times are diffusers *timesteps*
(training step indices, fractional allowed), not ``wgfm``'s ``t in [0, 1]``: the importer's field
does that conversion. Inference only: dropout is the identity.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

DOWN_BLOCKS = ("DownBlock2D", "AttnDownBlock2D")
UP_BLOCKS = ("UpBlock2D", "AttnUpBlock2D")
ACTIVATIONS = {
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "relu": jax.nn.relu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # torch.nn.GELU() is the erf form
    "mish": lambda x: x * jnp.tanh(jax.nn.softplus(x)),
}


def timestep_embedding(
    t: Float[Array, " b"], dim: int, flip_sin_to_cos: bool, freq_shift: float
) -> Array:
    """diffusers' ``get_timestep_embedding``: ``[sin(t w_i), cos(t w_i)]`` with
    ``w_i = 10000^(-i / (dim/2 - freq_shift))``, halves swapped if ``flip_sin_to_cos``."""
    half = dim // 2
    freqs = jnp.exp(-math.log(10_000.0) * jnp.arange(half, dtype=t.dtype) / (half - freq_shift))
    args = t[:, None] * freqs[None, :]
    emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
    if flip_sin_to_cos:
        emb = jnp.concatenate([emb[:, half:], emb[:, :half]], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


def _gn(groups: int, eps: float, name: str) -> nn.GroupNorm:
    # Two-pass variance, as torch computes it (the fast E[x^2] - E[x]^2 form loses ~1e-4).
    return nn.GroupNorm(num_groups=groups, epsilon=eps, use_fast_variance=False, name=name)


def _conv(features: int, name: str, kernel: int = 3, stride: int = 1, pad=None) -> nn.Conv:
    p = kernel // 2 if pad is None else pad
    padding = ((p, p), (p, p)) if isinstance(p, int) else p
    return nn.Conv(features, (kernel, kernel), (stride, stride), padding, name=name)


class ResnetBlock2D(nn.Module):
    """GN -> act -> conv, plus the time embedding (added, or FiLM for ``scale_shift``),
    GN -> act -> conv, residual (1x1 conv when channels change), divided by ``output_scale``."""

    out_channels: int
    groups: int
    eps: float
    act: str
    time_scale_shift: str = "default"
    output_scale: float = 1.0

    @nn.compact
    def __call__(self, x: Array, temb: Array) -> Array:
        act = ACTIVATIONS[self.act]
        h = _conv(self.out_channels, "conv1")(act(_gn(self.groups, self.eps, "norm1")(x)))
        n_proj = 2 * self.out_channels if self.time_scale_shift == "scale_shift" else None
        e = nn.Dense(n_proj or self.out_channels, name="time_emb_proj")(act(temb))[:, None, None]
        if n_proj is None:
            h = _gn(self.groups, self.eps, "norm2")(h + e)
        else:
            scale, shift = jnp.split(e, 2, axis=-1)
            h = _gn(self.groups, self.eps, "norm2")(h) * (1 + scale) + shift
        h = _conv(self.out_channels, "conv2")(act(h))
        if x.shape[-1] != self.out_channels:
            x = _conv(self.out_channels, "conv_shortcut", kernel=1)(x)
        return (x + h) / self.output_scale


class Attention(nn.Module):
    """diffusers' spatial self-attention block (``_from_deprecated_attn_block``): optional GN,
    ``heads = C // head_dim`` heads scaled by ``head_dim^-1/2``, residual, ``/ output_scale``."""

    head_dim: int
    groups: int | None
    eps: float
    output_scale: float = 1.0

    @nn.compact
    def __call__(self, x: Array) -> Array:
        b, hgt, wid, c = x.shape
        h = x if self.groups is None else _gn(self.groups, self.eps, "group_norm")(x)
        h = h.reshape(b, hgt * wid, c)
        heads = c // self.head_dim
        q, k, v = (
            nn.Dense(c, name=n)(h).reshape(b, hgt * wid, heads, self.head_dim)
            for n in ("to_q", "to_k", "to_v")
        )
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(self.head_dim)
        w = jax.nn.softmax(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)), axis=-1)
        out = jnp.einsum("bhqk,bkhd->bqhd", w.astype(v.dtype), v).reshape(b, hgt * wid, c)
        out = nn.Dense(c, name="to_out_0")(out).reshape(b, hgt, wid, c)
        return (out + x) / self.output_scale


class FourierProjection(nn.Module):
    """diffusers' ``GaussianFourierProjection`` (log=True, scale 16): ``[sin, cos](2 pi w log t)``."""

    size: int

    @nn.compact
    def __call__(self, t: Array) -> Array:
        w = self.param("weight", nn.initializers.normal(16.0), (self.size,), t.dtype)
        proj = jnp.log(t)[:, None] * w[None, :] * (2 * math.pi)
        return jnp.concatenate([jnp.sin(proj), jnp.cos(proj)], axis=-1)


class UNet2D(nn.Module):
    """``diffusers.UNet2DModel`` in flax; fields and defaults are its configuration keys.

    Supported: ``DownBlock2D``/``AttnDownBlock2D``, ``UpBlock2D``/``AttnUpBlock2D``,
    ``UNetMidBlock2D`` (or none), positional and Fourier time embeddings, ``default`` and
    ``scale_shift`` ResNet time conditioning. :func:`wgfm.models.unet2d_from_config` validates a
    ``config.json`` and names whatever else it finds."""

    sample_size: int | Sequence[int] | None = None
    in_channels: int = 3
    out_channels: int = 3
    center_input_sample: bool = False
    time_embedding_type: str = "positional"
    time_embedding_dim: int | None = None
    freq_shift: float = 0
    flip_sin_to_cos: bool = True
    down_block_types: Sequence[str] = (
        "DownBlock2D",
        "AttnDownBlock2D",
        "AttnDownBlock2D",
        "AttnDownBlock2D",
    )
    mid_block_type: str | None = "UNetMidBlock2D"
    up_block_types: Sequence[str] = ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D")
    block_out_channels: Sequence[int] = (224, 448, 672, 896)
    layers_per_block: int = 2
    mid_block_scale_factor: float = 1.0
    downsample_padding: int = 1
    act_fn: str = "silu"
    attention_head_dim: int | None = 8
    norm_num_groups: int = 32
    attn_norm_num_groups: int | None = None
    norm_eps: float = 1e-5
    resnet_time_scale_shift: str = "default"
    add_attention: bool = True

    def check_input(self, shape: tuple[int, ...], in_channels: int | None = None) -> None:
        """Raise ``ValueError`` unless one sample of ``shape`` is an image this U-Net accepts."""
        if len(shape) != 3:
            raise ValueError(f"`x` must be one image of shape (H, W, C), got shape {shape}.")
        factor = 2 ** (len(self.block_out_channels) - 1)
        if shape[0] % factor or shape[1] % factor:
            raise ValueError(f"`x` height and width must be divisible by {factor}, got {shape}.")
        if shape[2] != (in_channels or self.in_channels):
            raise ValueError(f"`x` must have {self.in_channels} channels, got shape {shape}.")

    def _resnet(self, ch: int, name: str, output_scale: float = 1.0) -> ResnetBlock2D:
        return ResnetBlock2D(
            ch,
            self.norm_num_groups,
            self.norm_eps,
            self.act_fn,
            self.resnet_time_scale_shift,
            output_scale,
            name=name,
        )

    def _attn(self, ch: int, name: str, groups, output_scale: float = 1.0) -> Attention:
        head_dim = self.attention_head_dim or ch
        return Attention(head_dim, groups, self.norm_eps, output_scale, name=name)

    def _time_embedding(self, t: Array) -> Array:
        c0 = self.block_out_channels[0]
        if self.time_embedding_type == "fourier":
            e = FourierProjection(c0, name="time_proj")(t)
        else:
            e = timestep_embedding(t, c0, self.flip_sin_to_cos, self.freq_shift)
        dim = self.time_embedding_dim or 4 * c0
        e = nn.silu(nn.Dense(dim, name="time_embedding_linear_1")(e))
        return nn.Dense(dim, name="time_embedding_linear_2")(e)

    @nn.compact
    def __call__(self, x: Float[Array, "b h w c"], t: Float[Array, " b"]) -> Array:
        t = jnp.broadcast_to(jnp.asarray(t, x.dtype), (x.shape[0],))
        if self.center_input_sample:
            x = 2 * x - 1.0
        temb = self._time_embedding(t)
        h = _conv(self.block_out_channels[0], "conv_in")(x)
        skips = [h]
        n = len(self.block_out_channels)
        downs = zip(self.down_block_types, self.block_out_channels, strict=True)
        for i, (kind, ch) in enumerate(downs):
            for j in range(self.layers_per_block):
                h = self._resnet(ch, f"down_blocks_{i}_resnets_{j}")(h, temb)
                if kind == "AttnDownBlock2D":
                    h = self._attn(ch, f"down_blocks_{i}_attentions_{j}", self.norm_num_groups)(h)
                skips.append(h)
            if i < n - 1:
                p = self.downsample_padding
                pad = ((0, 1), (0, 1)) if p == 0 else p  # diffusers pads right/bottom for 0
                h = _conv(ch, f"down_blocks_{i}_downsamplers_0_conv", stride=2, pad=pad)(h)
                skips.append(h)
        if self.mid_block_type is not None:
            h = self._mid_block(h, temb)
        ups = zip(self.up_block_types, self.block_out_channels[::-1], strict=True)
        for i, (kind, ch) in enumerate(ups):
            for j in range(self.layers_per_block + 1):
                h = jnp.concatenate([h, skips.pop()], axis=-1)
                h = self._resnet(ch, f"up_blocks_{i}_resnets_{j}")(h, temb)
                if kind == "AttnUpBlock2D":
                    h = self._attn(ch, f"up_blocks_{i}_attentions_{j}", self.norm_num_groups)(h)
            if i < n - 1:
                h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)  # nearest-neighbour x2
                h = _conv(ch, f"up_blocks_{i}_upsamplers_0_conv")(h)
        h = nn.silu(_gn(self.norm_num_groups, self.norm_eps, "conv_norm_out")(h))
        out = _conv(self.out_channels, "conv_out")(h)
        if self.time_embedding_type == "fourier":
            out = out / t[:, None, None, None]
        return out

    def _mid_block(self, h: Array, temb: Array) -> Array:
        ch, s = self.block_out_channels[-1], self.mid_block_scale_factor
        groups = self.attn_norm_num_groups
        if groups is None and self.resnet_time_scale_shift == "default":
            groups = self.norm_num_groups
        h = self._resnet(ch, "mid_block_resnets_0", s)(h, temb)
        if self.add_attention:
            h = self._attn(ch, "mid_block_attentions_0", groups, s)(h)
        return self._resnet(ch, "mid_block_resnets_1", s)(h, temb)


# Keys that must keep diffusers' default for the port to be exact (anything else is unsupported).
_FIXED = {
    "downsample_type": "conv",
    "upsample_type": "conv",
    "class_embed_type": None,
    "num_class_embeds": None,
}
# Keys without effect at inference (dropout) or only used by unsupported options.
_IGNORED = ("dropout", "num_train_timesteps")
_CHOICES = {
    "time_embedding_type": ("positional", "fourier"),
    "resnet_time_scale_shift": ("default", "scale_shift"),
    "act_fn": tuple(ACTIVATIONS),
    "mid_block_type": ("UNetMidBlock2D", None),
}


def unet2d_from_config(config: dict) -> UNet2D:
    """A :class:`UNet2D` from a diffusers ``UNet2DModel`` ``config.json`` dict. Raises
    ``ValueError`` naming any unknown key, unsupported block type or option value."""
    name = config.get("_class_name", "UNet2DModel")
    if name != "UNet2DModel":
        raise ValueError(f"config `_class_name` must be 'UNet2DModel', got {name!r}.")
    fields = {f for f in UNet2D.__dataclass_fields__ if f not in ("parent", "name")}
    kwargs = {}
    for key, value in config.items():
        if key.startswith("_") or key in _IGNORED:
            continue
        if key in _FIXED:
            if value != _FIXED[key]:
                raise ValueError(
                    f"config `{key}` = {value!r} is not supported (only {_FIXED[key]!r})."
                )
            continue
        if key not in fields:
            raise ValueError(f"config key `{key}` is not supported by the UNet2DModel port.")
        kwargs[key] = tuple(value) if isinstance(value, list) else value
    for key, allowed in _CHOICES.items():
        if key in kwargs and kwargs[key] not in allowed:
            raise ValueError(f"config `{key}` must be one of {allowed}, got {kwargs[key]!r}.")
    for key, allowed in (("down_block_types", DOWN_BLOCKS), ("up_block_types", UP_BLOCKS)):
        blocks = tuple(b.removeprefix("UNetRes") for b in kwargs.get(key, ()))
        for b in blocks:
            if b not in allowed:
                raise ValueError(f"config `{key}`: block type {b!r} is not supported {allowed}.")
        if blocks:
            kwargs[key] = blocks
    net = UNet2D(**kwargs)
    if not isinstance(net.norm_num_groups, int):
        raise ValueError(
            f"config `norm_num_groups` must be an integer, got {net.norm_num_groups!r}."
        )
    n = len(net.block_out_channels)
    if len(net.down_block_types) != n or len(net.up_block_types) != n:
        raise ValueError(
            "config `down_block_types`, `up_block_types` and `block_out_channels` must have the "
            f"same length, got {net.down_block_types}, {net.up_block_types}, "
            f"{net.block_out_channels}."
        )
    return net
