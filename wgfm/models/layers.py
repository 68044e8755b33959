"""Flax (linen) building blocks: time embeddings, the MLP and the U-Net of DDPM (Ho et al. 2020).

Every network here takes a *batch* ``x`` of shape ``(B, *sample_shape)`` and times ``t`` of shape
``(B,)``; :class:`wgfm.models.Model` adds and removes the batch axis so that the public ``apply``
works on one unbatched sample, as every field in ``wgfm`` does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp
from jaxtyping import Array, Float


def sinusoidal_embedding(t: Float[Array, " b"], dim: int, scale: float = 1000.0) -> Array:
    """Transformer-style embedding of ``scale * t`` (Vaswani et al.; DDPM uses ``t`` in steps)."""
    half = dim // 2
    freqs = jnp.exp(-math.log(10_000.0) * jnp.arange(half, dtype=t.dtype) / max(half - 1, 1))
    args = scale * t[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


class TimeMLP(nn.Module):
    """Sinusoidal embedding followed by a two-layer SiLU MLP."""

    dim: int
    time_scale: float = 1000.0

    @nn.compact
    def __call__(self, t: Array) -> Array:
        e = sinusoidal_embedding(t, self.dim, self.time_scale)
        e = nn.silu(nn.Dense(4 * self.dim, name="dense_0")(e))
        return nn.Dense(4 * self.dim, name="dense_1")(e)


class MLP(nn.Module):
    """Residual-free MLP on vectors with the time embedding added to every hidden layer.

    Output size ``out_dim`` (``None``: the input dimension, as a field must return)."""

    width: int = 128
    depth: int = 3
    out_dim: int | None = None
    time_scale: float = 1000.0

    @nn.compact
    def __call__(self, x: Float[Array, "b d"], t: Float[Array, " b"]) -> Array:
        emb = TimeMLP(self.width // 2, self.time_scale)(t)
        h = nn.Dense(self.width)(x)
        for _ in range(self.depth):
            h = nn.silu(h + nn.Dense(self.width)(emb))
            h = nn.Dense(self.width)(h)
        return nn.Dense(self.out_dim or x.shape[-1])(nn.silu(h))


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv, with the time embedding as a per-channel scale and shift
    ``h <- GN(h) * (1 + scale(t)) + shift(t)`` (FiLM; "adaptive group norm" of Dhariwal & Nichol)."""

    channels: int
    groups: int = 8

    @nn.compact
    def __call__(self, x: Array, emb: Array) -> Array:
        h = nn.silu(nn.GroupNorm(num_groups=_groups(x.shape[-1], self.groups))(x))
        h = nn.Conv(self.channels, (3, 3))(h)
        ss = nn.Dense(2 * self.channels)(nn.silu(emb))[:, None, None, :]
        scale, shift = jnp.split(ss, 2, axis=-1)
        h = nn.GroupNorm(num_groups=_groups(self.channels, self.groups))(h) * (1 + scale) + shift
        h = nn.Conv(self.channels, (3, 3))(nn.silu(h))
        if x.shape[-1] != self.channels:
            x = nn.Conv(self.channels, (1, 1), name="skip")(x)
        return x + h


class AttnBlock(nn.Module):
    """Self-attention over pixels, pre-normalised, residual."""

    heads: int = 1
    groups: int = 8

    @nn.compact
    def __call__(self, x: Array) -> Array:
        b, hgt, wid, c = x.shape
        h = nn.GroupNorm(num_groups=_groups(c, self.groups))(x).reshape(b, hgt * wid, c)
        h = nn.MultiHeadDotProductAttention(num_heads=self.heads, qkv_features=c)(h, h)
        return x + h.reshape(b, hgt, wid, c)


class UNet(nn.Module):
    """DDPM U-Net: ``len(channel_mults)`` levels, ``num_res_blocks`` per level, downsampling by 2
    between levels, attention at the listed resolutions (pixels per side), GroupNorm throughout."""

    width: int = 32
    channel_mults: Sequence[int] = (1, 2)
    num_res_blocks: int = 1
    attention_resolutions: Sequence[int] = ()
    groups: int = 8
    heads: int = 1
    time_scale: float = 1000.0

    def check_input(self, shape: tuple[int, ...], in_channels: int | None = None) -> None:
        """Raise ``ValueError`` unless one sample of ``shape`` is an image this U-Net accepts."""
        if len(shape) != 3:
            raise ValueError(f"`x` must be one image of shape (H, W, C), got shape {shape}.")
        factor = 2 ** (len(self.channel_mults) - 1)
        if shape[0] % factor or shape[1] % factor:
            raise ValueError(
                f"`x` height and width must be divisible by {factor} for "
                f"{len(self.channel_mults)} levels, got shape {shape}."
            )
        if in_channels is not None and shape[2] != in_channels:
            raise ValueError(
                f"`x` must have {in_channels} channels for these parameters, got shape {shape}."
            )

    @nn.compact
    def __call__(self, x: Float[Array, "b h w c"], t: Float[Array, " b"]) -> Array:
        emb = TimeMLP(self.width, self.time_scale)(t)
        h = nn.Conv(self.width, (3, 3), name="conv_in")(x)
        skips = [h]
        for level, mult in enumerate(self.channel_mults):
            for _ in range(self.num_res_blocks):
                h = ResBlock(self.width * mult, self.groups)(h, emb)
                if h.shape[1] in self.attention_resolutions:
                    h = AttnBlock(self.heads, self.groups)(h)
                skips.append(h)
            if level < len(self.channel_mults) - 1:
                h = nn.Conv(h.shape[-1], (3, 3), strides=(2, 2))(h)
                skips.append(h)
        h = ResBlock(h.shape[-1], self.groups)(h, emb)
        h = AttnBlock(self.heads, self.groups)(h)
        h = ResBlock(h.shape[-1], self.groups)(h, emb)
        for level, mult in reversed(list(enumerate(self.channel_mults))):
            for _ in range(self.num_res_blocks + 1):
                h = ResBlock(self.width * mult, self.groups)(
                    jnp.concatenate([h, skips.pop()], axis=-1), emb
                )
                if h.shape[1] in self.attention_resolutions:
                    h = AttnBlock(self.heads, self.groups)(h)
            if level > 0:
                b, hh, ww, c = h.shape
                h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)  # nearest-neighbour x2
                h = nn.Conv(c, (3, 3))(h)
        h = nn.silu(nn.GroupNorm(num_groups=_groups(h.shape[-1], self.groups))(h))
        # Zero-initialised output conv (as in DDPM/ADM): the untrained network predicts 0.
        return nn.Conv(x.shape[-1], (3, 3), kernel_init=nn.initializers.zeros, name="conv_out")(h)


def _groups(channels: int, groups: int) -> int:
    """Largest divisor of ``channels`` not exceeding ``groups`` (small widths on CPU)."""
    return math.gcd(channels, groups) or 1
