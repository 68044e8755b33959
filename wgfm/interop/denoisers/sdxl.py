"""SDXL-type: ``UNet2DConditionModel`` with ``addition_embed_type="text_time"`` (SDXL, SDXL
refiner, Playground v2.5 on its EDM scheduler): a text embedding, the pooled text embedding
``text_embeds`` and the six size conditions ``time_ids`` as added conditions."""

from __future__ import annotations

from .base import Condition
from .stable_diffusion import AbstractConditionUNet, text


class SDXL(AbstractConditionUNet):
    name = "SDXL"
    embeddings = {"addition_embed_type": "text_time"}
    prompt_names = ("encoder_hidden_states", "text_embeds")

    def encode_prompt(self, pipe, prompt, negative, guided):
        pe, npe, pooled, npooled = pipe.encode_prompt(
            prompt,
            device="cpu",
            num_images_per_prompt=1,
            do_classifier_free_guidance=guided,
            negative_prompt=negative if guided else None,
        )
        return (pe, pooled), (npe, npooled)

    def conditions(self, config, module, shape, pixels):
        n_time = int(config["addition_time_embed_dim"])
        pooled = int(config["projection_class_embeddings_input_dim"]) - 6 * n_time
        h, w = pixels
        # The pipeline's default: original size = target size = the image's, no crop.
        ids = (float(h), float(w), 0.0, 0.0, float(h), float(w))
        return (
            text(config, "both text encoders' hidden states, concatenated"),
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
