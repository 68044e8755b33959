"""Stable Diffusion 1.x/2.x: ``UNet2DConditionModel`` with a text embedding and no added
conditions (epsilon or, for SD 2.x 768, v-prediction: the scheduler says which); and what the
``UNet2DConditionModel`` families share (:class:`AbstractConditionUNet`)."""

from __future__ import annotations

from typing import ClassVar

from .base import AbstractDenoiser, Condition

# The UNet2DConditionModel config keys that add conditions: each family reads the values it
# declares in `embeddings`; any other value needs conditions no family declares.
EXTRA = ("addition_embed_type", "class_embed_type", "encoder_hid_dim_type")


class AbstractConditionUNet(AbstractDenoiser):
    """A ``UNet2DConditionModel`` family, told apart by its ``addition_embed_type`` and
    refusing any other embedding (AudioLDM's CLAP class embedding, a controlnet, ...)."""

    embeddings: ClassVar[dict[str, str]] = {}  # the EXTRA keys it reads, and their values

    def accepts(self, config: dict) -> bool:
        return config.get("addition_embed_type") == self.embeddings.get("addition_embed_type")

    def refusal(self, config: dict) -> str | None:
        for key in EXTRA:
            if config.get(key) != self.embeddings.get(key):
                return (
                    f"its {key} {config.get(key)!r} asks for conditions no supported family "
                    "declares (AudioLDM's CLAP class embedding, a controlnet, ...)"
                )
        return None


def text(config: dict, doc: str) -> Condition:
    """The text embedding, ``(seq, cross_attention_dim)``."""
    return Condition("encoder_hidden_states", ("seq", int(config["cross_attention_dim"])), doc)


class StableDiffusion(AbstractConditionUNet):
    name = "Stable Diffusion 1.x/2.x"
    prompt_names = ("encoder_hidden_states",)

    def encode_prompt(self, pipe, prompt, negative, guided):
        pe, npe = pipe.encode_prompt(
            prompt, "cpu", 1, guided, negative_prompt=negative if guided else None
        )
        return (pe,), (npe,)

    def conditions(self, config, module, shape, pixels):
        return (text(config, "the text embedding (the text encoder's hidden states)"),)
