"""Class-conditional DiT: ``DiTTransformer2DModel`` and ``Transformer2DModel`` with
``norm_type="ada_norm_zero"`` (patched latents, a class label, a learned-sigma half)."""

from __future__ import annotations

from typing import Any

from .base import AbstractDenoiser, Condition


def label_conditions(module: Any) -> tuple[Condition, ...]:
    """The ``class_labels`` condition of a class-conditional module, or none: its default is
    the null class where the label embedding has one (``num_classes + 1`` rows), else it is
    required."""
    import torch
    from diffusers.models.embeddings import LabelEmbedding

    for m in module.modules():
        if isinstance(m, LabelEmbedding):
            n = int(m.num_classes)
            null = n if m.embedding_table.num_embeddings > n else None
            return (_labels(n, null),)
    emb = getattr(module, "class_embedding", None)
    if isinstance(emb, torch.nn.Embedding):
        return (_labels(int(emb.num_embeddings), None),)
    return ()


def _labels(n: int, null: int | None) -> Condition:
    doc = f"the class, an integer in [0, {n})" + (f"; {null}: the null class" if null else "")
    return Condition(
        "class_labels", (), doc, integer=True, default=None if null is None else (null,), limit=n
    )


class DiT(AbstractDenoiser):
    name = "DiT"

    def accepts(self, config: dict) -> bool:
        return config.get("norm_type") != "ada_norm_single"  # that is PixArt

    def conditions(self, config, module, shape, pixels):
        return label_conditions(module)
