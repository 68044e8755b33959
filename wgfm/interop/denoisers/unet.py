"""Pixel-space ``UNet2DModel`` (DDPM, NCSN++, ADM-style), unconditional or class-conditional.

The unconditional ones run on the flax port where it supports the config
(:func:`wgfm.interop.diffusers.load_unet2d`); this family is their PyTorch path."""

from __future__ import annotations

from .base import AbstractDenoiser
from .dit import label_conditions


class UNet2D(AbstractDenoiser):
    name = "UNet2DModel"

    def conditions(self, config, module, shape, pixels):
        return label_conditions(module)
