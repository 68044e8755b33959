"""Kandinsky 2.2 decoder: ``UNet2DConditionModel`` with ``addition_embed_type="image"``,
conditioned on the prior's CLIP image embedding, in the latent space of its ``movq``."""

from __future__ import annotations

from .base import Condition
from .stable_diffusion import AbstractConditionUNet


class Kandinsky22(AbstractConditionUNet):
    name = "Kandinsky 2.2 decoder"
    embeddings = {"addition_embed_type": "image", "encoder_hid_dim_type": "image_proj"}

    def conditions(self, config, module, shape, pixels):
        dim = int(config["encoder_hid_dim"])
        return (Condition("image_embeds", (dim,), "the prior's CLIP image embedding", added=True),)

    def forward(self, module, x, timestep, kw, added):
        # The pipeline passes no text states: the image embedding is projected into them.
        return module(
            x, timestep=timestep, encoder_hidden_states=None, added_cond_kwargs=added
        ).sample
