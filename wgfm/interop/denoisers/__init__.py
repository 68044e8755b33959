"""The denoiser families ``wgfm`` reads, one module each, and their registry.

:func:`family_for` picks the family of a diffusers denoiser class and config; the CLI help
(:func:`supported`), the error for an unsupported class and the table in
``docs/diagnose_your_model.md`` (:func:`table`) are written from :data:`FAMILIES`. Adding a
family is one module with an :class:`~.base.AbstractDenoiser` and its line here."""

from __future__ import annotations

from .base import DESCRIPTIONS, AbstractDenoiser, Condition
from .dit import DiT
from .flux import Flux
from .kandinsky import Kandinsky22
from .pixart import PixArt
from .sana import Sana
from .sd3 import SD3
from .sdxl import SDXL
from .stable_diffusion import StableDiffusion
from .unet import UNet2D

# Order matters where classes are shared: the first family whose accepts() holds reads it.
FAMILIES: tuple[AbstractDenoiser, ...] = (
    UNet2D(),
    StableDiffusion(),
    SDXL(),
    Kandinsky22(),
    DiT(),
    PixArt(),
    SD3(),
    Flux(),
    Sana(),
)

# Classes that load but define no field wgfm reads, and why.
REFUSED = {
    "UVit2DModel": "a masked-token model over discrete VQ codes (aMUSEd): it predicts token "
    "logits, not eps, x0 or a velocity, so it has no score to diagnose",
}
# Video denoisers: their samples are (F, H, W, C), which no family reads.
VIDEO = (
    "UNet3DConditionModel",
    "UNetSpatioTemporalConditionModel",
    "CogVideoXTransformer3DModel",
    "LTXVideoTransformer3DModel",
    "HunyuanVideoTransformer3DModel",
    "WanTransformer3DModel",
    "MochiTransformer3DModel",
)


def supported() -> tuple[str, ...]:
    """The denoiser classes some family reads, each once, in registry order."""
    return tuple(dict.fromkeys(c for f in FAMILIES for c in f.classes))


def supported_line() -> str:
    """The families and their classes in one line (the CLI's ``--model`` help)."""
    names = ", ".join(f.name for f in FAMILIES)
    return f"{names}; classes {', '.join(supported())}"


def family_for(cls: str, config: dict, where: str) -> AbstractDenoiser:
    """The family reading a ``cls`` denoiser with ``config``; a one-line ValueError naming the
    class and the reason otherwise (``where``: the directory, for the message)."""
    if cls in REFUSED:
        raise ValueError(f"{where}: {cls} is {REFUSED[cls]}.")
    if cls in VIDEO:
        raise ValueError(
            f"{where}: the denoiser class {cls!r} is not supported: it denoises videos, and video "
            "samples (F, H, W, C) are not supported."
        )
    mine = [f for f in FAMILIES if cls in f.classes]
    if not mine:
        raise ValueError(
            f"{where}: the denoiser class {cls!r} is not supported (the supported classes: "
            f"{', '.join(supported())})."
        )
    family = next((f for f in mine if f.accepts({"_class_name": cls, **config})), None)
    reason = (
        mine[0].refusal(config) or "no family reads its config"
        if family is None
        else family.refusal(config)
    )
    if reason:
        raise ValueError(f"{where}: {cls} is not supported: {reason}.")
    assert family is not None
    return family


def table() -> str:
    """The supported families as a markdown table, from ``families.toml`` (README.md and
    ``docs/diagnose_your_model.md``)."""
    rows = [
        "| family | classes | e.g. | conditions (per sample) | state | timestep | output | "
        "guidance |",
        "|---|---|---|---|---|---|---|---|",
    ]
    guidance = {
        "class": "class labels: (1 + w) F(c) - w F(null)",
        "text": "F(null) + w (F(c) - F(null))",
        "none": "none (FLUX.1-dev: the `guidance` condition)",
    }
    for f in FAMILIES:
        a = f.about
        cells = (f.name, ", ".join(f.classes), a["examples"], a["needs"], a["state"])
        cells += (a["timestep"], a["output"])
        rows.append("| " + " | ".join((*cells, guidance[f.guidance])) + " |")
    return "\n".join(rows) + "\n"


__all__ = [
    "DESCRIPTIONS",
    "FAMILIES",
    "REFUSED",
    "AbstractDenoiser",
    "Condition",
    "family_for",
    "supported",
    "supported_line",
    "table",
]
