"""Any diffusers pipeline or model directory as a ``wgfm`` field: ``model_index.json`` chooses.

:func:`read_pipeline` finds the denoiser (``unet/`` or ``transformer/``), its class, the
scheduler and the autoencoder of a pipeline directory, of one of its component directories
(``pipe/unet``: the sibling ``scheduler/`` and ``model_index.json`` one level up are used), or
of a bare model directory. :func:`load_pipeline` then picks the denoiser's family from the
registry (:mod:`wgfm.interop.denoisers`) and builds the field:

* an unconditional ``UNet2DModel`` on the flax port (:func:`wgfm.interop.diffusers.load_unet2d`)
  when the port supports its config;
* every other family through :func:`wgfm.interop.torch_field`
  (:class:`~wgfm.interop.torch_diffusers.TorchDiffusersField`: values by callback, JVPs and
  VJPs by ``torch.func``), with its conditions checked against the family's declaration
  (:mod:`wgfm.interop.conditioning`);
* anything else raises one line naming the class and the reason.

Both kinds of field take one sample ``(H, W, C)`` and a wgfm time, and carry ``kind``,
``process``, ``schedule``, ``sample_shape``, ``notes`` (what was diagnosed: conditioning, a
learned-variance half, the latent space) and ``latent`` (the pipeline's autoencoder, or None).
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from collections.abc import Mapping
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from jaxtyping import ArrayLike

from .conditioning import conditioning
from .denoisers import AbstractDenoiser, family_for
from .latents import (
    AUTOENCODER_CLASSES,
    Latent,
    decode_latents,
    encode_latents,
    pixel_shape,
    read_latent,
)
from .schedulers import FLOW_SCHEDULERS, SchedulerMap, scheduler_map
from .torch_diffusers import TorchDiffusersField, torch_net

__all__ = [
    "Latent",
    "PipelineDir",
    "TorchDiffusersField",
    "decode_latents",
    "encode_latents",
    "load_pipeline",
    "pixel_shape",
    "read_pipeline",
]

DENOISERS = ("unet", "transformer")


@dataclasses.dataclass(frozen=True)
class PipelineDir:
    """What :func:`read_pipeline` found."""

    denoiser: Path  # the denoiser's directory (config.json + weights)
    cls: str  # the denoiser's class
    config: dict  # its config.json
    scheduler_config: dict | None  # None: none found
    latent: Latent | None
    pipeline: str | None  # the pipeline class of model_index.json
    root: Path | None  # the pipeline directory


def read_pipeline(path: str | Path) -> PipelineDir:
    """The denoiser, scheduler and autoencoder of a diffusers directory (module docstring), read
    from its JSON files without loading any weights.

    Args:
        path: a pipeline directory (``model_index.json``), one of its component directories
            (``pipe/unet``: the siblings are used), or a bare model directory.

    Returns:
        The :class:`PipelineDir`: the denoiser's directory, class and config (with diffusers'
        class defaults filled in), the scheduler config or None, the latent autoencoder or None,
        the pipeline class and the pipeline directory.

    Raises:
        ValueError: not a directory, no denoiser config, a pipeline without a ``unet/`` or
            ``transformer/``, or invalid JSON.
    """
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"`path` {str(path)!r} is not a directory.")
    index_file = path / "model_index.json"
    root: Path | None = None
    if index_file.is_file():
        root = path
    elif (path / "config.json").is_file() and (
        (path.parent / "model_index.json").is_file()
        or (path.parent / "scheduler" / "scheduler_config.json").is_file()
    ):
        root = path.parent  # a component of a pipeline: keep its siblings
    index = (
        _read_json(root / "model_index.json")
        if root and (root / "model_index.json").is_file()
        else {}
    )
    if root is not None and root != path:
        denoiser = path
    elif root is not None:
        names = [n for n in DENOISERS if n in index or (root / n / "config.json").is_file()]
        if not names:
            listed = ", ".join(k for k in index if not k.startswith("_")) or "nothing"
            raise ValueError(
                f"`path` {str(path)!r}: the pipeline ({index.get('_class_name', '?')}) has no "
                f"unet/ or transformer/ denoiser (it lists {listed})."
            )
        denoiser = root / names[0]
    else:
        denoiser = next((path / n for n in DENOISERS if (path / n / "config.json").is_file()), path)
        root = path if denoiser != path else None
    if not (denoiser / "config.json").is_file():
        raise ValueError(f"`path` {str(path)!r} has no config.json (nor unet/config.json).")
    config = _read_json(denoiser / "config.json")
    cls = config.get("_class_name") or _index_class(index, denoiser.name) or "UNet2DModel"
    config = {**_class_defaults(cls), **config}
    sched = None
    for f in (
        *((root / "scheduler" / "scheduler_config.json",) if root else ()),
        path / "scheduler_config.json",
    ):
        if f.is_file():
            sched = _read_json(f)
            break
    latent = read_latent(root, index) if root is not None else None
    return PipelineDir(denoiser, cls, config, sched, latent, index.get("_class_name"), root)


def _class_defaults(cls: str) -> dict:
    """The keyword defaults of diffusers' ``cls``: a config.json may leave any of them out, and
    diffusers fills them in on load, so the adapters read the same values it does. Without
    diffusers (the flax port needs only safetensors) nothing is filled in."""
    import inspect

    try:
        import diffusers

        init = getattr(diffusers, cls).__init__
    except (ImportError, AttributeError):
        return {}
    return {
        k: p.default
        for k, p in inspect.signature(init).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


def _read_json(f: Path) -> dict:
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{str(f)!r} is not valid JSON ({e}).") from None


def _index_class(index: dict, name: str) -> str | None:
    entry = index.get(name)
    return entry[1] if isinstance(entry, list) and len(entry) == 2 else None


# ---------------------------------------------------------------------------------------------
# Loading


def load_pipeline(
    path: str | Path,
    *,
    dtype=jnp.float32,
    scheduler_config: dict | None = None,
    mu: float | None = None,
    backend: str = "auto",
    class_label: int | None = None,
    encoder_hidden_states: ArrayLike | None = None,
    variant: str | None = None,
    guidance_scale: float | None = None,
    condition: Mapping[str, ArrayLike] | None = None,
    negative_condition: Mapping[str, ArrayLike] | None = None,
    sample_size: int | tuple[int, int] | None = None,
    device=None,
    torch_dtype=None,
    prompt: str | None = None,
    negative_prompt: str | None = None,
):
    """``(field, process)`` of a diffusers pipeline or model directory (module docstring);
    exported as :func:`wgfm.interop.load_diffusers`.

    Use ``wgfm.as_field(process, field, kind=field.kind, to="score" | "velocity")`` for the
    score or the WGF velocity. ``guidance_scale`` ``w``: for class-conditional families the
    classifier-free-guided field ``(1 + w) F(x, c) - w F(x, null)`` with the null class
    (diffusers' ``guidance_scale`` is ``1 + w``); for text families the pipeline's own
    ``F(x, null) + w (F(x, c) - F(x, null))`` with ``negative_condition`` as the null one.

    Args:
        path: the directory (:func:`read_pipeline`).
        dtype: the field's inputs and outputs (and the flax port's parameters): float32 or
            float64.
        scheduler_config: the scheduler config; default the pipeline's ``scheduler/`` (also for
            ``pipe/unet``), and for a bare model directory without either diffusers'
            ``DDPMScheduler`` defaults (linear betas 1e-4..0.02, 1000 steps, epsilon), with a
            warning.
        mu: a dynamically shifted flow-matching scheduler's shift
            (:func:`~wgfm.interop.schedulers.scheduler_map`); default: the pipeline's own, from
            the image's token count.
        backend: ``"auto"`` (the flax port where it applies, else PyTorch), ``"flax"`` or
            ``"torch"``.
        class_label: short form of the ``class_labels`` condition (default: the null class
            where there is one).
        encoder_hidden_states: short form of that condition, shape ``(seq, dim)`` or
            ``(1, seq, dim)``.
        variant: weights such as ``diffusion_pytorch_model.fp16.safetensors`` (cast to
            ``dtype``).
        guidance_scale: ``w`` of the classifier-free-guided field (above), or None.
        condition: ``{name: array}``, the denoiser's own forward keywords (and
            ``added_cond_kwargs`` keys) for one sample, without a batch axis; the family
            declares the names and shapes (:mod:`wgfm.interop.denoisers`) and fills the
            pipeline's defaults.
        negative_condition: the null condition of text guidance, as ``condition``.
        sample_size: the latent height and width (default: the config's; FLUX: 128).
        device: where a PyTorch denoiser runs (``"cuda"``, ``"mps"``, ``"cpu"``; None: the
            accelerator when present).
        torch_dtype: a PyTorch denoiser's weights and activations (``"bfloat16"``,
            ``"float16"``, ``"float32"`` or a ``torch.dtype``; None: ``dtype``), loaded in that
            dtype and moved once (:func:`wgfm.interop.torch.place_module`).
        prompt: text conditions encoded by the pipeline's own tokenizers and text encoders
            (:mod:`wgfm.interop.prompts`, the ``wgfm[text]`` extra).
        negative_prompt: the null prompt of text guidance (with guidance and none given: the
            empty prompt).

    Returns:
        ``(field, process)``: a :class:`~wgfm.interop.diffusers.DiffusersField` (the flax
        port) or a :class:`~wgfm.interop.torch_diffusers.TorchDiffusersField`, each taking one
        sample ``(H, W, C)`` and a wgfm time and carrying ``kind``, ``process``, ``schedule``,
        ``sample_shape``, ``notes`` and ``latent``; and the wgfm process of its scheduler.

    Raises:
        ValueError: one line naming the class and the reason: an autoencoder, a family that is
            not supported, a scheduler that is not mapped, conditions that do not fit the
            family's declaration, or weights that cannot be loaded.
    """
    from .diffusers import DiffusersField, hwc_shape, load_unet2d

    if backend not in ("auto", "flax", "torch"):
        raise ValueError(f"`backend` must be 'auto', 'flax' or 'torch', got {backend!r}.")
    pd = read_pipeline(path)
    cls, config = pd.cls, pd.config
    where = f"`path` {str(path)!r}"
    if cls in AUTOENCODER_CLASSES:
        raise ValueError(
            f"{where} holds a {cls}, an autoencoder, not a denoiser: give the pipeline directory "
            "(its unet/ or transformer/ is the field)."
        )
    family = family_for(cls, config, where)
    channels = _state_channels(family, cls, config, pd.latent, where)
    size = sample_size if sample_size is not None else family.default_size(config)
    shape = hwc_shape(size, channels, cls)
    schedule, notes = _schedule(path, pd, family, shape, scheduler_config, mu)
    learned = family.output_channels(config) == 2 * channels
    notes += _output_notes(pd, channels, learned, schedule.prediction_type)
    given = _given(cls, condition, class_label, encoder_hidden_states)
    port_problem = None
    if _tries_the_port(cls, config, backend):
        port_problem = _port_problem(config)
        if port_problem is None or backend == "flax":
            if given or negative_condition or guidance_scale:
                raise ValueError(f"{cls} at {str(pd.denoiser)!r} is unconditional.")
            model, params, _ = load_unet2d(pd.denoiser, dtype=dtype, variant=variant)
            field = DiffusersField(model, params, schedule, learned, tuple(notes), pd.latent)
            return field, schedule.process
    elif backend == "flax":
        raise ValueError(
            f"the flax port is UNet2DModel only; {cls} needs backend 'torch' or 'auto'."
        )
    module = _load_module(pd, variant, dtype, torch_dtype)
    if prompt is not None:
        negative_condition = _prompt(
            pd, family, prompt, negative_prompt, guidance_scale, given, negative_condition, notes
        )
    elif negative_prompt is not None:
        raise ValueError("`negative_prompt` applies only with `prompt`.")
    cond, cond_notes = _conditioning(
        pd, family, module, shape, channels, learned, given, negative_condition, guidance_scale
    )
    notes += cond_notes
    if port_problem:
        notes.append(f"PyTorch, as the flax port does not support this config ({port_problem})")
    net = torch_net(module, family, cond, device, torch_dtype)
    field = TorchDiffusersField(
        net, schedule, shape, cls, tuple(notes), pd.latent, module, cond, family
    )
    return field, schedule.process


def _schedule(
    path, pd: PipelineDir, family: AbstractDenoiser, shape, scheduler_config: dict | None, mu
) -> tuple[SchedulerMap, list[str]]:
    """The denoiser's schedule: ``scheduler_config``, else the pipeline's, else diffusers'
    ``DDPMScheduler`` defaults with a warning; a dynamically shifted flow-matching scheduler
    takes ``mu`` or the pipeline's own for ``shape``'s token count, and a note says which."""
    if scheduler_config is None:
        scheduler_config = pd.scheduler_config
    if scheduler_config is None:
        warnings.warn(
            f"no scheduler in {str(path)!r}: using diffusers' DDPMScheduler defaults "
            "(linear betas 1e-4..0.02, 1000 steps, epsilon prediction).",
            stacklevel=3,  # the caller of load_pipeline
        )
        scheduler_config = {}
    notes = []
    if mu is None and _dynamic(scheduler_config):
        mu = pipeline_mu(scheduler_config, family.image_seq_len(pd.config, shape))
        notes.append(f"mu {mu:.4g}: the pipeline's shift for {shape[0]}x{shape[1]} latents")
    return scheduler_map(scheduler_config, mu=mu), notes


def _output_notes(pd: PipelineDir, channels: int, learned: bool, prediction: str) -> list[str]:
    """What the field is of the network's output (a learned-variance half) and in which space."""
    notes = []
    if learned:
        notes.append(
            f"learned variance: the network outputs {2 * channels} channels (prediction and "
            f"variance, Improved DDPM / ADM); the field is the first {channels}, the "
            f"{prediction} prediction"
        )
    if pd.latent is not None:
        notes.append(f"diagnosed in {pd.latent.describe()}")
    return notes


def _conditioning(
    pd: PipelineDir, family, module, shape, channels, learned, given, negative, guidance_scale
):
    """:func:`wgfm.interop.conditioning.conditioning` of the family's declared conditions for
    latents (or images) of ``shape`` ``(H, W, C)``, whose decoded images' size the family may
    need (SDXL's size conditions); its notes open with how the family reads the network."""
    f = 1 if pd.latent is None else pd.latent.factor()
    conds = family.conditions(pd.config, module, shape, (shape[0] * f, shape[1] * f))
    cond, notes = conditioning(
        family, pd.cls, conds, channels, learned, given, negative, guidance_scale
    )
    return cond, [family.reading(), *notes]


def _tries_the_port(cls: str, config: dict, backend: str) -> bool:
    """Whether the flax port is tried: an unconditional ``UNet2DModel``, backend not torch."""
    conditional = config.get("num_class_embeds") or config.get("class_embed_type")
    return cls == "UNet2DModel" and backend != "torch" and not conditional


def _port_problem(config: dict) -> str | None:
    """Why the flax port cannot build a ``UNet2DModel`` of ``config``, or None if it can."""
    from ..models import unet2d_from_config

    try:
        unet2d_from_config(config)
    except ValueError as e:
        return str(e)
    return None


def _prompt(pd, family, prompt, negative_prompt, guidance_scale, given, negative, notes):
    """Adds the encoded ``prompt`` to ``given``; returns the negative condition."""
    from .prompts import encode_prompts

    guided = bool(guidance_scale) and family.guidance == "text"
    cond, neg = encode_prompts(pd.root, family, prompt, negative_prompt, guided)
    both = sorted(set(cond) & set(given))
    if both:
        raise ValueError(f"`prompt` and `condition` both give {', '.join(both)}: give one.")
    if neg is not None and negative is not None:
        raise ValueError("give `negative_prompt` or `negative_condition`, not both.")
    given.update(cond)
    null = (
        ", the pipeline's default null condition (the empty prompt, or zeros where its config "
        "says force_zeros_for_empty_prompt)"
        if negative_prompt is None
        else f", negative prompt {negative_prompt!r} as the null condition"
    )
    notes.append(
        f"prompt {prompt!r}{null if guided else ''} encoded by the pipeline's own text encoders"
    )
    return negative if neg is None else neg


def _state_channels(
    family: AbstractDenoiser, cls: str, config: dict, latent: Latent | None, where: str
) -> int:
    """The state's channels; refuses a denoiser whose input carries more than its state."""
    c_in, c_out = family.state_channels(config), family.output_channels(config)
    if c_out not in (c_in, 2 * c_in):
        raise ValueError(
            f"{where}: {cls} is not supported: it takes {c_in} input channels and predicts "
            f"{c_out}, so its input carries more than the state (an inpainting model's mask and "
            "masked image, a depth model's depth): it is not a field of its state."
        )
    if latent is not None and latent.channels is not None and c_in != latent.channels:
        raise ValueError(
            f"{where}: {cls} is not supported: it takes {c_in} input channels but its "
            f"{latent.cls} has {latent.channels} latent channels (an inpainting or depth "
            "model's extra inputs): it is not a field of the latents."
        )
    return c_in


def _given(cls, condition, class_label, ehs) -> dict:
    """``condition`` with the short forms ``class_label`` and ``encoder_hidden_states``."""
    given = dict(condition or {})
    for name, value in (("class_labels", class_label), ("encoder_hidden_states", ehs)):
        if value is None:
            continue
        if name in given:
            raise ValueError(f"`condition` and a short form both give `{name}`: give one.")
        if name == "encoder_hidden_states":
            e = np.asarray(value, np.float32)
            e = e[0] if e.ndim == 3 and e.shape[0] == 1 else e
            if e.ndim != 2:
                raise ValueError(
                    "`encoder_hidden_states` must have shape (seq, dim) or (1, seq, dim), got "
                    f"{np.shape(value)}."
                )
            value = e
        given[name] = np.asarray(value)
    return given


def _dynamic(config: dict) -> bool:
    return config.get("_class_name") in FLOW_SCHEDULERS and bool(config.get("use_dynamic_shifting"))


def pipeline_mu(config: dict, image_seq_len: int) -> float:
    """The shift ``mu`` the FLUX and SD3 pipelines give a dynamically shifted scheduler: linear
    in the image's token count between ``(base_image_seq_len, base_shift)`` and
    ``(max_image_seq_len, max_shift)`` (their ``calculate_shift``)."""
    b0, b1 = int(config.get("base_image_seq_len", 256)), int(config.get("max_image_seq_len", 4096))
    s0, s1 = float(config.get("base_shift", 0.5)), float(config.get("max_shift", 1.15))
    m = (s1 - s0) / (b1 - b0)
    mu = image_seq_len * m + (s0 - m * b0)
    if not math.isfinite(mu):
        raise ValueError(f"the scheduler's dynamic shift is not finite for {image_seq_len} tokens.")
    return mu


def _load_module(pd: PipelineDir, variant: str | None, dtype, torch_dtype=None):
    try:
        import diffusers
        import torch
    except ImportError:
        raise ValueError(
            f"{pd.cls} runs on PyTorch: install wgfm[diffusers] (torch and diffusers; the flax "
            "port is UNet2DModel only)."
        ) from None
    tdtype = {jnp.dtype(jnp.float32): torch.float32, jnp.dtype(jnp.float64): torch.float64}.get(
        jnp.dtype(dtype)
    )
    if tdtype is None:
        raise ValueError(f"`dtype` must be float32 or float64, got {dtype!r}.")
    if torch_dtype is not None:
        from .torch import as_torch_dtype

        tdtype = as_torch_dtype(torch_dtype)  # loaded in it: no float32 copy first
    cls = getattr(diffusers, pd.cls)
    try:
        module = cls.from_pretrained(str(pd.denoiser), variant=variant, torch_dtype=tdtype)
    except OSError as e:
        raise ValueError(f"{pd.cls} at {str(pd.denoiser)!r} could not be loaded: {e}") from None
    return module.eval()
