"""Sana: ``SanaTransformer2DModel`` in the latent space of an ``AutoencoderDC`` (32x), on
DPM-Solver with ``prediction_type="flow_prediction"`` and flow sigmas, or on
``FlowMatchEulerDiscreteScheduler``; conditioned on Gemma hidden states and their mask."""

from __future__ import annotations

from .pixart import AbstractCaptioned, caption


class Sana(AbstractCaptioned):
    name = "Sana"

    def refusal(self, config: dict) -> str | None:
        if config.get("guidance_embeds"):
            return "its guidance embedding belongs to Sana-Sprint's consistency sampler (SCM)"
        return None

    def conditions(self, config, module, shape, pixels):
        return caption(int(config["caption_channels"]), "Gemma's hidden states")

    def forward(self, module, x, timestep, kw, added):
        scale = float(module.config.get("timestep_scale", 1.0) or 1.0)
        return module(x, timestep=timestep * scale, **kw).sample
