"""Kandinsky 2.2 decoder: ``UNet2DConditionModel`` with ``addition_embed_type="image"``,
conditioned on the prior's CLIP image embedding, in the latent space of its ``movq``."""

from __future__ import annotations

from .base import AbstractDenoiser, Condition
from .stable_diffusion import refuse_extra


class Kandinsky22(AbstractDenoiser):
    name = "Kandinsky 2.2 decoder"
    classes = ("UNet2DConditionModel",)
    examples = "kandinsky-community/kandinsky-2-2-decoder"
    state = "movq latents (H, W, 4), unscaled, as NCHW"
    time = "the scheduler's timestep"
    output = "eps (and a learned-variance half, dropped)"

    def accepts(self, config: dict) -> bool:
        return config.get("addition_embed_type") == "image"

    def refusal(self, config: dict) -> str | None:
        return refuse_extra(
            config, {"addition_embed_type": "image", "encoder_hid_dim_type": "image_proj"}
        )

    def conditions(self, config, module, shape, pixels):
        dim = int(config["encoder_hid_dim"])
        return (Condition("image_embeds", (dim,), "the prior's CLIP image embedding", added=True),)

    def forward(self, module, x, timestep, kw, added):
        # The pipeline passes no text states: the image embedding is projected into them.
        return module(
            x, timestep=timestep, encoder_hidden_states=None, added_cond_kwargs=added
        ).sample
