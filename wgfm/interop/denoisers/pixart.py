"""PixArt-alpha and PixArt-Sigma: ``PixArtTransformer2DModel`` (or ``Transformer2DModel`` with
``norm_type="ada_norm_single"``): T5 caption embeddings, the ``resolution``/``aspect_ratio``
added conditions where the config asks for them (``sample_size`` 128: PixArt-alpha 1024), and
a learned-sigma half."""

from __future__ import annotations

from .base import AbstractDenoiser, Condition


def caption(dim: int, doc: str) -> tuple[Condition, Condition]:
    """A caption's hidden states and its attention mask (PixArt, Sana)."""
    return (
        Condition("encoder_hidden_states", ("seq", dim), doc),
        Condition(
            "encoder_attention_mask",
            ("seq",),
            "1 for the caption's tokens, 0 for padding (default: every token attended)",
            mask=True,
        ),
    )


class AbstractCaptioned(AbstractDenoiser):
    """A family conditioned on a caption and its attention mask (PixArt, Sana), encoded by the
    pipeline's own ``encode_prompt`` at the defaults of the pipeline's own call (PixArt:
    ``clean_caption``, which the pipeline drops without bs4 and ftfy, ``max_sequence_length``
    120 alpha / 300 Sigma; Sana: its ``complex_human_instruction`` prefix, 300 tokens)."""

    prompt_names = ("encoder_hidden_states", "encoder_attention_mask")

    def encode_prompt(self, pipe, prompt, negative, guided):
        import inspect

        params = inspect.signature(pipe.__call__).parameters
        known = ("clean_caption", "max_sequence_length", "complex_human_instruction")
        defaults = {k: params[k].default for k in known if k in params}
        pe, mask, npe, nmask = pipe.encode_prompt(
            prompt,
            do_classifier_free_guidance=guided,
            negative_prompt=negative or "",
            device="cpu",
            **defaults,
        )
        return (pe, mask), (npe, nmask)


def uses_sizes(config: dict) -> bool:
    flag = config.get("use_additional_conditions")
    # As the model and its pipeline decide it: only the 1024-pixel alpha checkpoints.
    return bool(flag) if flag is not None else config.get("sample_size") == 128


class PixArt(AbstractCaptioned):
    name = "PixArt-alpha/Sigma"

    def accepts(self, config: dict) -> bool:
        return config.get("_class_name") == "PixArtTransformer2DModel" or (
            config.get("norm_type") == "ada_norm_single"
        )

    def conditions(self, config, module, shape, pixels):
        dim = int(config.get("caption_channels") or config["cross_attention_dim"])
        out = list(caption(dim, "the T5 caption embedding"))
        if uses_sizes(config):
            h, w = pixels
            out += [
                Condition(
                    "resolution",
                    (2,),
                    "image height and width in pixels (default: the image's)",
                    added=True,
                    default=(float(h), float(w)),
                    negative=False,
                ),
                Condition(
                    "aspect_ratio",
                    (1,),
                    "height / width (default: the image's)",
                    added=True,
                    default=(h / w,),
                    negative=False,
                ),
            ]
        return tuple(out)

    def forward(self, module, x, timestep, kw, added):
        # The pipeline always passes both keys (None where the config takes no sizes).
        added = {"resolution": None, "aspect_ratio": None, **added}
        return module(x, timestep=timestep, added_cond_kwargs=added, **kw).sample
