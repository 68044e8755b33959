"""Flax networks as pure per-sample functions (the only place ``wgfm`` imports flax)."""

from .configs import CONFIGS, get_model
from .core import Model, ModelField
from .layers import MLP, UNet, sinusoidal_embedding
from .unet2d import UNet2D, unet2d_from_config
from .vae import VAE, VAENet

__all__ = [
    "CONFIGS",
    "MLP",
    "Model",
    "ModelField",
    "UNet",
    "UNet2D",
    "VAE",
    "VAENet",
    "get_model",
    "sinusoidal_embedding",
    "unet2d_from_config",
]
