"""Models from elsewhere as ``wgfm`` fields (the only place ``wgfm`` touches torch or diffusers).

* :func:`load_diffusers` — a ``diffusers`` ``UNet2DModel`` directory (or pipeline) as a flax
  field plus its :class:`wgfm.processes.DiscreteVP` process; needs ``safetensors``, not torch.
* :func:`torch_field` — any PyTorch callable ``(x, t) -> y`` as a JAX field (jit, vmap and
  forward-mode AD through ``torch.func``); torch is imported only when it is called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .diffusers import (
    DDPM_CIFAR10_32,
    DiffusersField,
    convert_state_dict,
    load_diffusers,
    load_unet2d,
)
from .schedulers import SchedulerMap, scheduler_betas, scheduler_map, scheduler_process

if TYPE_CHECKING:
    from .torch import TorchField, diffusers_unet_fn, torch_field

__all__ = [
    "DDPM_CIFAR10_32",
    "DiffusersField",
    "SchedulerMap",
    "TorchField",
    "convert_state_dict",
    "diffusers_unet_fn",
    "load_diffusers",
    "load_unet2d",
    "scheduler_betas",
    "scheduler_map",
    "scheduler_process",
    "torch_field",
]


def __getattr__(name: str):
    # Lazy: importing wgfm.interop must not import torch.
    if name in ("torch_field", "TorchField", "diffusers_unet_fn"):
        from . import torch as _torch

        return getattr(_torch, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
