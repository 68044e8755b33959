"""Stable Diffusion 3 / 3.5: ``SD3Transformer2DModel`` on a flow-matching scheduler (its
``shift``), 16-channel latents normalised with the VAE's ``shift_factor`` and ``scaling_factor``,
the joint text embedding and the pooled ``pooled_projections``."""

from __future__ import annotations

from .base import AbstractDenoiser, Condition


class SD3(AbstractDenoiser):
    name = "SD3/SD3.5"
    classes = ("SD3Transformer2DModel",)
    examples = "stabilityai/stable-diffusion-3.5-medium"
    state = "latents (H, W, 16) as NCHW, patched by the network itself"
    time = "the scheduler's timestep sigma * 1000"
    output = "flow velocity eps - x0 in sigma"

    prompt_names = ("encoder_hidden_states", "pooled_projections")

    def prompt_conditions(self, pipe, prompt, negative, guided):
        pe, npe, pooled, npooled = pipe.encode_prompt(
            prompt,
            None,
            None,
            device="cpu",
            do_classifier_free_guidance=guided,
            negative_prompt=negative if guided else None,
        )
        cond = {"encoder_hidden_states": pe, "pooled_projections": pooled}
        neg = {"encoder_hidden_states": npe, "pooled_projections": npooled}
        return cond, (neg if guided else None)

    def conditions(self, config, module, shape, pixels):
        return (
            Condition(
                "encoder_hidden_states",
                ("seq", int(config["joint_attention_dim"])),
                "CLIP-L, CLIP-G and T5 hidden states, joined",
            ),
            Condition(
                "pooled_projections",
                (int(config["pooled_projection_dim"]),),
                "the two CLIP encoders' pooled embeddings, concatenated",
            ),
        )
