"""Stable Diffusion 1.x/2.x: ``UNet2DConditionModel`` with a text embedding and no added
conditions (epsilon or, for SD 2.x 768, v-prediction: the scheduler says which)."""

from __future__ import annotations

from .base import AbstractDenoiser, Condition

# The UNet2DConditionModel configs the text-only family reads: any other embedding type needs
# conditions its own family declares (SDXL, Kandinsky) or is refused.
EXTRA = ("addition_embed_type", "class_embed_type", "encoder_hid_dim_type")


def refuse_extra(config: dict, allowed: dict) -> str | None:
    for key in EXTRA:
        if config.get(key) != allowed.get(key):
            return (
                f"its {key} {config.get(key)!r} asks for conditions no supported family "
                "declares (AudioLDM's CLAP class embedding, a controlnet, ...)"
            )
    return None


def text(config: dict) -> Condition:
    dim = int(config["cross_attention_dim"])
    return Condition(
        "encoder_hidden_states",
        ("seq", dim),
        "the text embedding (the text encoder's hidden states)",
    )


class StableDiffusion(AbstractDenoiser):
    name = "Stable Diffusion 1.x/2.x"
    classes = ("UNet2DConditionModel",)
    examples = "stable-diffusion-v1-5, stabilityai/stable-diffusion-2-1 (v-prediction)"
    state = "latents (H, W, 4) as NCHW"
    time = "the scheduler's timestep"
    output = "eps or v (the scheduler's prediction_type)"

    def accepts(self, config: dict) -> bool:
        return all(config.get(k) is None for k in EXTRA)

    prompt_names = ("encoder_hidden_states",)

    def refusal(self, config: dict) -> str | None:
        return refuse_extra(config, {})

    def prompt_conditions(self, pipe, prompt, negative, guided):
        pe, npe = pipe.encode_prompt(
            prompt, "cpu", 1, guided, negative_prompt=negative if guided else None
        )
        name = "encoder_hidden_states"
        return {name: pe}, ({name: npe} if guided else None)

    def conditions(self, config, module, shape, pixels):
        return (text(config),)
