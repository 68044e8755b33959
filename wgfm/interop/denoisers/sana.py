"""Sana: ``SanaTransformer2DModel`` in the latent space of an ``AutoencoderDC`` (32x), on
DPM-Solver with ``prediction_type="flow_prediction"`` and flow sigmas, or on
``FlowMatchEulerDiscreteScheduler``; conditioned on Gemma hidden states and their mask."""

from __future__ import annotations

from .base import AbstractDenoiser
from .pixart import caption, masked_prompt


class Sana(AbstractDenoiser):
    name = "Sana"
    classes = ("SanaTransformer2DModel",)
    examples = "Efficient-Large-Model/Sana_1600M_1024px_diffusers"
    state = "AutoencoderDC latents (H, W, 32) as NCHW, patched by the network itself"
    time = "the scheduler's timestep sigma * 1000, times the config's timestep_scale"
    output = "flow velocity eps - x0 in sigma"

    prompt_names = ("encoder_hidden_states", "encoder_attention_mask")

    def prompt_conditions(self, pipe, prompt, negative, guided):
        return masked_prompt(pipe, prompt, negative, guided)

    def refusal(self, config: dict) -> str | None:
        if config.get("guidance_embeds"):
            return "its guidance embedding belongs to Sana-Sprint's consistency sampler (SCM)"
        return None

    def conditions(self, config, module, shape, pixels):
        return caption(int(config["caption_channels"]), "Gemma's hidden states")

    def forward(self, module, x, timestep, kw, added):
        scale = float(module.config.get("timestep_scale", 1.0) or 1.0)
        return module(x, timestep=timestep * scale, **kw).sample
