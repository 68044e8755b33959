"""Pixel-space ``UNet2DModel`` (DDPM, NCSN++, ADM-style), unconditional or class-conditional.

The unconditional ones run on the flax port where it supports the config
(:func:`wgfm.interop.diffusers.load_unet2d`); this family is their PyTorch path."""

from __future__ import annotations

from .base import AbstractDenoiser
from .dit import label_condition


class UNet2D(AbstractDenoiser):
    name = "UNet2DModel"
    classes = ("UNet2DModel",)
    examples = "google/ddpm-cifar10-32, CompVis/ldm-celebahq-256 (with its VQModel)"
    state = "images or latents (H, W, C) as NCHW"
    time = "the scheduler's timestep"
    output = "eps, x0 or v (the scheduler's prediction_type); a learned-variance half dropped"
    guidance = "class"

    def conditions(self, config, module, shape, pixels):
        c = label_condition(module)
        return () if c is None else (c,)
