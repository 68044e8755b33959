"""Models from elsewhere as ``wgfm`` fields (the only place ``wgfm`` touches torch or diffusers).

* :func:`load_diffusers` — any diffusers pipeline or model directory as ``(field, process)``:
  ``model_index.json`` chooses the denoiser class and the registry of families
  (:mod:`wgfm.interop.denoisers`) how to call it; an unconditional ``UNet2DModel`` runs on the
  flax port (needs ``safetensors``, not torch), every family through :func:`torch_field`
  (:mod:`wgfm.interop.pipelines`).
* :func:`scheduler_map` — a diffusers scheduler as a wgfm process and the network's calling
  convention in its time: DDPM-family betas, flow matching (with ``shift``), EDM
  (:mod:`wgfm.interop.schedulers`).
* :func:`torch_field` — any PyTorch callable ``(x, t) -> y`` as a JAX field (jit, vmap, JVPs and
  VJPs through ``torch.func``, on its device and dtype); torch is imported only when called."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .diffusers import (
    DDPM_CIFAR10_32,
    DiffusersField,
    convert_state_dict,
    load_unet2d,
)
from .pipelines import TorchDiffusersField, load_pipeline, read_pipeline
from .schedulers import SchedulerMap, scheduler_betas, scheduler_map, scheduler_process

# The name users know: one function, under both names.
load_diffusers = load_pipeline

if TYPE_CHECKING:
    from .torch import TorchField, diffusers_unet_fn, torch_field

__all__ = [
    "DDPM_CIFAR10_32",
    "DiffusersField",
    "SchedulerMap",
    "TorchDiffusersField",
    "TorchField",
    "convert_state_dict",
    "diffusers_unet_fn",
    "load_diffusers",
    "load_pipeline",
    "read_pipeline",
    "load_unet2d",
    "scheduler_betas",
    "scheduler_map",
    "scheduler_process",
    "torch_field",
]


def __getattr__(name: str):
    # Lazy: importing wgfm.interop must not import torch.
    if name in ("torch_field", "TorchField", "diffusers_unet_fn", "contiguous_group_norms"):
        from . import torch as _torch

        return getattr(_torch, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
