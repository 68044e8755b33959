"""Flax networks as pure per-sample functions (the only place ``wgfm`` imports flax)."""

from .configs import CONFIGS, get_model
from .core import Model, ModelField, score_field, velocity_field
from .layers import MLP, UNet, sinusoidal_embedding
from .vae import VAE, VAENet

__all__ = [
    "CONFIGS",
    "MLP",
    "Model",
    "ModelField",
    "UNet",
    "VAE",
    "VAENet",
    "get_model",
    "score_field",
    "sinusoidal_embedding",
    "velocity_field",
]
