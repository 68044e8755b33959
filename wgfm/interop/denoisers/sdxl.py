"""SDXL-type: ``UNet2DConditionModel`` with ``addition_embed_type="text_time"`` (SDXL, SDXL
refiner, Playground v2.5 on its EDM scheduler): a text embedding, the pooled text embedding
``text_embeds`` and the six size conditions ``time_ids`` as added conditions."""

from __future__ import annotations

from .base import AbstractDenoiser, Condition
from .stable_diffusion import refuse_extra


class SDXL(AbstractDenoiser):
    name = "SDXL"
    classes = ("UNet2DConditionModel",)
    examples = "stabilityai/stable-diffusion-xl-base-1.0, playgroundai/playground-v2.5"
    state = "latents (H, W, 4) as NCHW"
    time = "the scheduler's timestep (EDM: its preconditioned noise)"
    output = "eps or v (the scheduler's prediction_type)"

    def accepts(self, config: dict) -> bool:
        return config.get("addition_embed_type") == "text_time"

    prompt_names = ("encoder_hidden_states", "text_embeds")

    def refusal(self, config: dict) -> str | None:
        return refuse_extra(config, {"addition_embed_type": "text_time"})

    def prompt_conditions(self, pipe, prompt, negative, guided):
        pe, npe, pooled, npooled = pipe.encode_prompt(
            prompt,
            device="cpu",
            num_images_per_prompt=1,
            do_classifier_free_guidance=guided,
            negative_prompt=negative if guided else None,
        )
        cond = {"encoder_hidden_states": pe, "text_embeds": pooled}
        return cond, ({"encoder_hidden_states": npe, "text_embeds": npooled} if guided else None)

    def conditions(self, config, module, shape, pixels):
        n_time = int(config["addition_time_embed_dim"])
        pooled = int(config["projection_class_embeddings_input_dim"]) - 6 * n_time
        h, w = pixels
        # The pipeline's default: original size = target size = the image's, no crop.
        ids = (float(h), float(w), 0.0, 0.0, float(h), float(w))
        return (
            Condition(
                "encoder_hidden_states",
                ("seq", int(config["cross_attention_dim"])),
                "both text encoders' hidden states, concatenated",
            ),
            Condition("text_embeds", (pooled,), "the pooled text embedding", added=True),
            Condition(
                "time_ids",
                (6,),
                "original size, crop top-left, target size (default: the image's size, no crop)",
                added=True,
                default=ids,
                negative=False,
            ),
        )
