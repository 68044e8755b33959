"""A small convolutional VAE for 28x28 grey images (the latent setting of the paper, on MNIST).

The encoder maps one image ``(28, 28, 1)`` to a diagonal Gaussian ``q(z|x)`` on a latent image
``(8, 8, 3)``; the decoder maps ``z`` back to the mean of a Gaussian ``p(x|z)``. The image is padded
to 32x32 by its border (the background) and halved twice, so the latent has 3 channels at a
quarter of the side, 192 numbers per digit: the 4x compression of the paper's CIFAR-10 VAE
(3x32x32 -> 3x16x16), and a latent whose exact 192 x 192 Jacobians cost 192 JVPs. An 8x8 latent
(not 7x7) also fits the two-level ``unet-digits`` U-Net unchanged.

:class:`VAE` exposes pure per-sample functions like every network in ``wgfm``:
``init(key) -> params``, ``encode(params, x, key=None) -> z`` (the mean without a key, a sample
with one), ``decode(params, z) -> x``, ``moments(params, x) -> (mean, log_var)``; vmap outside.
"""

from __future__ import annotations

import functools
from typing import Any

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
from jaxtyping import Array, PRNGKeyArray

IMAGE_SHAPE = (28, 28, 1)
_PAD = 2  # 28 + 2 * 2 = 32 = 4 * 8


class _Encoder(nn.Module):
    width: int
    latent_channels: int

    @nn.compact
    def __call__(self, x: Array) -> tuple[Array, Array]:
        pad = ((0, 0), (_PAD, _PAD), (_PAD, _PAD), (0, 0))
        h = jnp.pad(x, pad, mode="edge")
        h = nn.silu(nn.Conv(self.width, (3, 3))(h))
        h = nn.silu(nn.Conv(2 * self.width, (3, 3), strides=(2, 2))(h))  # 16x16
        h = nn.silu(nn.Conv(2 * self.width, (3, 3), strides=(2, 2))(h))  # 8x8
        h = nn.silu(nn.Conv(2 * self.width, (3, 3))(h))
        out = nn.Conv(2 * self.latent_channels, (1, 1))(h)
        mean, log_var = jnp.split(out, 2, axis=-1)
        return mean, log_var


class _Decoder(nn.Module):
    width: int
    out_channels: int

    @nn.compact
    def __call__(self, z: Array) -> Array:
        h = nn.silu(nn.Conv(2 * self.width, (3, 3))(z))
        h = nn.silu(nn.Conv(2 * self.width, (3, 3))(h))
        for channels in (2 * self.width, self.width):  # 8 -> 16 -> 32, nearest x2 then conv
            h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)
            h = nn.silu(nn.Conv(channels, (3, 3))(h))
        h = nn.Conv(self.out_channels, (3, 3))(h)
        return h[:, _PAD:-_PAD, _PAD:-_PAD, :]


class VAENet(nn.Module):
    """Encoder and decoder on batches ``(B, 28, 28, C)``; ``__call__`` runs both (for init)."""

    width: int = 32
    latent_channels: int = 3
    out_channels: int = 1

    def setup(self):
        self.encoder = _Encoder(self.width, self.latent_channels)
        self.decoder = _Decoder(self.width, self.out_channels)

    def __call__(self, x: Array) -> Array:
        return self.decoder(self.encoder(x)[0])

    def encode(self, x: Array) -> tuple[Array, Array]:
        return self.encoder(x)

    def decode(self, z: Array) -> Array:
        return self.decoder(z)


class VAE(eqx.Module):
    """A :class:`VAENet` as pure per-sample functions (see the module docstring)."""

    net: VAENet = eqx.field(static=True, default_factory=VAENet)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        side = (IMAGE_SHAPE[0] + 2 * _PAD) // 4
        return (side, side, self.net.latent_channels)

    def init(self, key: PRNGKeyArray, dtype=jnp.float32):
        """Parameters (a PyTree of ``dtype`` arrays) for ``(28, 28, 1)`` images."""
        return _jit_init(self.net, key, jnp.dtype(dtype))

    def moments(self, params, x: Array) -> tuple[Array, Array]:
        """Mean and log-variance of ``q(z | x)`` for one image."""
        self._check(x.shape, IMAGE_SHAPE[:2], "x")
        out: Any = self.net.apply(params, x[None], method=VAENet.encode)
        return out[0][0], out[1][0]

    def encode(self, params, x: Array, *, key: PRNGKeyArray | None = None) -> Array:
        """``z ~ q(z | x)`` with ``key`` (reparameterised: ``mean + exp(log_var / 2) eps``), its
        mean without."""
        mean, log_var = self.moments(params, x)
        if key is None:
            return mean
        return mean + jnp.exp(0.5 * log_var) * jax.random.normal(key, mean.shape, mean.dtype)

    def decode(self, params, z: Array) -> Array:
        """Mean of ``p(x | z)`` for one latent."""
        self._check(z.shape, self.latent_shape[:2], "z")
        return self.net.apply(params, z[None], method=VAENet.decode)[0]

    @staticmethod
    def _check(shape: tuple[int, ...], side: tuple[int, ...], name: str) -> None:
        if len(shape) != 3 or tuple(shape[:2]) != tuple(side):
            raise ValueError(
                f"`{name}` must be one image of shape ({side[0]}, {side[1]}, C), got {shape}."
            )


@functools.partial(jax.jit, static_argnums=(0, 2))
def _jit_init(net: VAENet, key, dtype):
    x = jnp.zeros((1, *IMAGE_SHAPE[:2], net.out_channels), dtype)
    return net.init(key, x)
