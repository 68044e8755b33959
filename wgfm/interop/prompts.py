"""Prompts encoded with a pipeline's own tokenizers and text encoders (the ``wgfm[text]`` extra).

:func:`encode_prompts` loads the pipeline class of ``model_index.json`` with its text
components only (the denoiser, autoencoder and scheduler left out) and calls the pipeline's own
``encode_prompt``, so tokenisation, the hidden layer taken, pooling and the empty negative
prompt are the pipeline's; the family maps the outputs to its condition names
(:meth:`~wgfm.interop.denoisers.AbstractDenoiser.prompt_conditions`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .denoisers import AbstractDenoiser

# The components a prompt needs; everything else in model_index.json is left out.
TEXT_PARTS = ("tokenizer", "text_encoder")


def encode_prompts(
    root: Path | None,
    family: AbstractDenoiser,
    prompt: str,
    negative_prompt: str | None,
    guided: bool,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
    """``(condition, negative condition or None)`` of ``prompt`` (and ``negative_prompt``; with
    ``guided`` and none given, the empty prompt, as the pipelines do), one sample each."""
    if not family.prompt_names:
        raise ValueError(
            f"`prompt`: the {family.name} family is not encoded from a prompt here: give its "
            "conditions (--condition FILE.npz)."
        )
    if root is None or not (root / "model_index.json").is_file():
        raise ValueError("`prompt` needs a pipeline directory with model_index.json.")
    try:
        import diffusers
        import torch
        import transformers  # noqa: F401  (the pipelines' text encoders)
    except ImportError:
        raise ValueError(
            "`prompt` encodes with the pipeline's text encoders: install wgfm[text] "
            "(transformers) and wgfm[diffusers]."
        ) from None
    index = json.loads((root / "model_index.json").read_text())
    if not any(k.startswith("text_encoder") for k in index):
        raise ValueError(f"`prompt`: the pipeline at {str(root)!r} has no text encoder.")
    skip = {
        k: None
        for k, v in index.items()
        if not k.startswith("_") and not k.startswith(TEXT_PARTS) and isinstance(v, list)
    }
    pipe = getattr(diffusers, index["_class_name"]).from_pretrained(str(root), **skip)
    with torch.no_grad():
        cond, neg = family.prompt_conditions(pipe, prompt, negative_prompt, guided)
    as_np = lambda d: {k: v[0].float().numpy() for k, v in d.items()}  # noqa: E731
    return as_np(cond), (as_np(neg) if neg is not None else None)
