"""Models from elsewhere as ``wgfm`` fields (the only place ``wgfm`` touches torch or diffusers).

* :func:`load_diffusers` — any diffusers pipeline or model directory as ``(field, process)``:
  ``model_index.json`` chooses the denoiser class and the registry of families
  (:mod:`wgfm.interop.denoisers`) how to call it; an unconditional ``UNet2DModel`` runs on the
  flax port (needs ``safetensors``, not torch), every family through :func:`torch_field`
  (:mod:`wgfm.interop.pipelines`).
* :func:`load_model` — a model by spec, a diffusers directory or ``package.module:function``
  (:mod:`wgfm.interop.load`), as ``(field, process)``.
* :func:`scheduler_map` — a diffusers scheduler as a wgfm process and the network's calling
  convention in its time: DDPM-family betas, flow matching (with ``shift``), EDM
  (:mod:`wgfm.interop.schedulers`).
* :func:`torch_field` — any PyTorch callable ``(x, t) -> y`` as a JAX field (jit, vmap, JVPs and
  VJPs through ``torch.func``, on its device and dtype); torch is imported only when called."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .diffusers import DDPM_CIFAR10_32, DiffusersField, convert_state_dict, load_unet2d
    from .load import is_callable_spec, load_callable, load_model, model_fingerprint
    from .pipelines import TorchDiffusersField, load_pipeline, read_pipeline
    from .schedulers import SchedulerMap, scheduler_betas, scheduler_map, scheduler_process
    from .torch import TorchField, diffusers_unet_fn, torch_field

    load_diffusers = load_pipeline

# Each public name's module, imported on first use (PEP 562): importing wgfm.interop, or a
# light part of it such as the family registry (the CLI's help), loads neither the flax port
# nor torch.
_HOMES = {
    "diffusers": ("DDPM_CIFAR10_32", "DiffusersField", "convert_state_dict", "load_unet2d"),
    "load": ("is_callable_spec", "load_callable", "load_model", "model_fingerprint"),
    "pipelines": ("TorchDiffusersField", "load_pipeline", "read_pipeline"),
    "schedulers": ("SchedulerMap", "scheduler_betas", "scheduler_map", "scheduler_process"),
    "torch": ("torch_field", "TorchField", "diffusers_unet_fn", "contiguous_group_norms"),
}
_HOME = {name: module for module, names in _HOMES.items() for name in names}

__all__ = [
    "DDPM_CIFAR10_32",
    "DiffusersField",
    "SchedulerMap",
    "TorchDiffusersField",
    "TorchField",
    "convert_state_dict",
    "diffusers_unet_fn",
    "is_callable_spec",
    "load_callable",
    "load_model",
    "model_fingerprint",
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
    import importlib

    if name == "load_diffusers":  # the name users know: load_pipeline under both names
        name = "load_pipeline"
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
