"""FLUX.1: ``FluxTransformer2DModel`` on 2x2-packed latents with the position ids its pipeline
builds, the timestep as sigma (the pipeline's ``timestep / 1000``), and for FLUX.1-dev the
distilled ``guidance`` embedding (a condition, not classifier-free guidance)."""

from __future__ import annotations

from .base import AbstractDenoiser, Condition
from .sd3 import joint_text

# FluxPipeline's default_sample_size: 1024-pixel images, 128 x 128 latents.
DEFAULT_SIZE = 128
DEFAULT_GUIDANCE = 3.5  # FluxPipeline's default guidance_scale


def pack(x):
    """``(N, C, H, W)`` latents as ``(N, H/2 W/2, 4 C)`` tokens, as ``FluxPipeline._pack_latents``."""
    n, c, h, w = x.shape
    x = x.reshape(n, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(n, (h // 2) * (w // 2), c * 4)


def unpack(tokens, h: int, w: int):
    """The inverse of :func:`pack`."""
    n, _, c4 = tokens.shape
    x = tokens.reshape(n, h // 2, w // 2, c4 // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(n, c4 // 4, h, w)


def image_ids(h: int, w: int, dtype):
    """Position ids ``(h/2 w/2, 3)`` of the packed tokens: (0, row, column)."""
    import torch

    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1] = torch.arange(h // 2)[:, None]
    ids[..., 2] = torch.arange(w // 2)[None, :]
    return ids.reshape(-1, 3).to(dtype)


class Flux(AbstractDenoiser):
    name = "FLUX.1"

    prompt_names = ("encoder_hidden_states", "pooled_projections")

    def encode_prompt(self, pipe, prompt, negative, guided):
        # No classifier-free guidance (load refuses guidance_scale): the negative is unused.
        pe, pooled, _ = pipe.encode_prompt(prompt, None, device="cpu")
        return (pe, pooled), None

    def state_channels(self, config: dict) -> int:
        return int(config["in_channels"]) // 4

    def output_channels(self, config: dict) -> int:
        return int(config.get("out_channels") or config["in_channels"]) // 4

    def default_size(self, config: dict):
        return DEFAULT_SIZE

    def patch_size(self, config: dict) -> int:
        return 2

    def conditions(self, config, module, shape, pixels):
        out = list(joint_text(config, "T5 hidden states", "CLIP's pooled embedding"))
        if config.get("guidance_embeds"):
            out.append(
                Condition(
                    "guidance",
                    (),
                    "FLUX.1-dev's distilled guidance scale, an input of the network, not "
                    f"classifier-free guidance (default {DEFAULT_GUIDANCE:g})",
                    default=(DEFAULT_GUIDANCE,),
                    negative=False,
                )
            )
        return tuple(out)

    def forward(self, module, x, timestep, kw, added):
        import torch

        h, w = x.shape[2:]
        ehs = kw["encoder_hidden_states"]
        txt_ids = torch.zeros(ehs.shape[1], 3, dtype=x.dtype)
        out = module(
            pack(x),
            timestep=timestep / 1000,
            img_ids=image_ids(h, w, x.dtype),
            txt_ids=txt_ids,
            **kw,
        ).sample
        return unpack(out, h, w)
