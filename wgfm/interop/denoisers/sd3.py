"""Stable Diffusion 3 / 3.5: ``SD3Transformer2DModel`` on a flow-matching scheduler (its
``shift``), 16-channel latents normalised with the VAE's ``shift_factor`` and ``scaling_factor``,
the joint text embedding and the pooled ``pooled_projections``."""

from __future__ import annotations

from .base import AbstractDenoiser, Condition


def joint_text(config: dict, text: str, pooled: str) -> tuple[Condition, Condition]:
    """The text states ``(seq, joint_attention_dim)`` and the pooled embedding
    ``(pooled_projection_dim,)`` of the MMDiT families (SD3, FLUX.1), described by ``text`` and
    ``pooled``."""
    return (
        Condition("encoder_hidden_states", ("seq", int(config["joint_attention_dim"])), text),
        Condition("pooled_projections", (int(config["pooled_projection_dim"]),), pooled),
    )


class SD3(AbstractDenoiser):
    name = "SD3/SD3.5"
    prompt_names = ("encoder_hidden_states", "pooled_projections")

    def encode_prompt(self, pipe, prompt, negative, guided):
        pe, npe, pooled, npooled = pipe.encode_prompt(
            prompt,
            None,
            None,
            device="cpu",
            do_classifier_free_guidance=guided,
            negative_prompt=negative if guided else None,
        )
        return (pe, pooled), (npe, npooled)

    def conditions(self, config, module, shape, pixels):
        return joint_text(
            config,
            "CLIP-L, CLIP-G and T5 hidden states, joined",
            "the two CLIP encoders' pooled embeddings, concatenated",
        )
