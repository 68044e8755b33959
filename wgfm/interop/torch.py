"""Any PyTorch callable as a JAX field: ``jax.pure_callback`` for values, ``torch.func.jvp``
for tangents (``jax.custom_jvp``) and ``torch.func.vjp`` as their transpose, so ``jit``,
``vmap``, ``jacfwd``, ``jacrev``, ``grad`` and every diagnostic run on a model nobody ported.

The callable takes a *batch*: ``fn(x (N, *shape), t (N,)) -> (N, *shape)`` (``batched=False``:
one sample ``fn(x (*shape), t ()) -> (*shape)``, vectorised with ``torch.func.vmap``). ``t`` is
passed through unchanged: map ``wgfm`` time to the model's own inside ``fn``.

Device and dtype: the ``torch.nn.Module`` found on ``fn`` (``fn`` itself, the module of a bound
method such as ``unet.forward``, the ``unet`` of :func:`diffusers_unet_fn`, or a module among a
``functools.partial``'s arguments) is moved once, by :func:`torch_field`, to its ``device``
(default: the accelerator when one is present) and ``dtype`` (default: the module's own).
Inputs reach ``fn`` as tensors of that dtype on that device (``t`` in float32 when the dtype is
a half precision: a diffusers timestep such as 299 is not a bfloat16 number); without a module
and a ``dtype``, in the JAX input's own dtype. Outputs, tangents and cotangents come back in the
JAX input's dtype, so the estimators' arithmetic stays in float32.

Under ``vmap`` the callback receives every batch at once (``vmap_method="expand_dims"``, and
the same broadcasting in the batching rules of the JVP and VJP primitives). For the tangents of
``jacfwd``/``sub_jacobian`` and the cotangents of ``jacrev``/probe VJPs (many tangents, one
primal) the host splits the batch axes into primal axes (where ``x`` or ``t`` vary) and
tangent-only axes, and runs one ``torch.func.vmap``-ed ``jvp`` (or pullback of one
``torch.func.vjp``) per chunk of ``chunk_size`` tangents over the primals, so the primal pass
is not repeated per tangent (or, for ops without functorch batching rules, one plain ``jvp``
with each primal repeated per tangent, or one pullback call per cotangent: see
``vmap_tangents``). Second derivatives are not available.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax.numpy as jnp
import torch
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .torch_ad import Spec, torch_call
from .torch_device import (
    as_torch_dtype,
    check_dtype_on_device,
    module_dtype,
    place_module,
    reinitialised,
    resolve_device,
)

__all__ = [
    "TorchField",
    "TorchModuleField",
    "as_torch_dtype",
    "backend_name",
    "contiguous_group_norms",
    "diffusers_unet_fn",
    "module_field",
    "place_module",
    "reinitialised",
    "resolve_device",
    "torch_field",
]

from ..pretrained import AbstractPretrainedField, torch_seed
from ..processes import AbstractProcess


class TorchField(eqx.Module):
    """A PyTorch callable as a ``wgfm`` field ``(x (*shape), t ()) -> (*shape)`` (module docstring);
    build it with :func:`torch_field`.

    Attributes:
        fn: the batched PyTorch callable ``(x (N, *shape), t (N,)) -> (N, *shape)``.
        chunk_size: samples per PyTorch JVP or VJP call.
        vmap_tangents: how tangents at one primal are pushed (:func:`torch_field`).
        dtype: the dtype of the tensors passed to ``fn``; None: the JAX input's.
        device: the device they are put on (where ``fn``'s module was placed).
    """

    fn: Callable = eqx.field(static=True)
    chunk_size: int = eqx.field(static=True, default=64)
    vmap_tangents: bool | None = eqx.field(static=True, default=None)
    # The dtype of the tensors passed to ``fn``; None: the JAX input's dtype (module docstring).
    dtype: torch.dtype | None = eqx.field(static=True, default=None)
    # The device the tensors passed to ``fn`` are put on (where its module was placed).
    device: torch.device = eqx.field(static=True, default=torch.device("cpu"))

    def __check_init__(self):
        if int(self.chunk_size) < 1:
            raise ValueError(f"`chunk_size` must be a positive integer, got {self.chunk_size!r}.")

    def __call__(self, x: Float[ArrayLike, "*shape"], t: Float[ArrayLike, ""]) -> Array:
        x = jnp.asarray(x)
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(f"`x` must be a floating array, got dtype {x.dtype}.")
        t = jnp.asarray(t, x.dtype)
        if t.ndim != 0:
            raise ValueError(f"`t` must be a scalar (vmap outside), got shape {t.shape}.")
        spec = Spec(self.fn, self.chunk_size, self.vmap_tangents, self.dtype, self.device)
        return torch_call(spec, x, t)


def torch_field(
    fn: Callable,
    *,
    batched: bool = True,
    chunk_size: int = 64,
    vmap_tangents: bool | None = None,
    dtype=None,
    device=None,
) -> TorchField:
    """A PyTorch callable ``fn(x, t) -> y`` as a JAX field: values by callback, JVPs and VJPs by
    ``torch.func`` (module docstring).

    ``dtype`` and ``device`` say where the ``torch.nn.Module`` found on ``fn`` runs and in which
    dtype its weights and activations are; it is moved there once, here
    (:func:`place_module`). Inputs are cast from the JAX dtype to ``dtype`` on ``device``;
    results come back in the JAX dtype, so the estimators' arithmetic stays in float32 whatever
    the network's precision. Without a module on ``fn`` the weights cannot be moved: ``fn`` gets
    inputs of ``dtype`` on ``device`` and must match them. Example, a diffusers UNet2DModel in
    bfloat16 on the GPU: ``torch_field(diffusers_unet_fn(unet), dtype="bfloat16")``.

    Args:
        fn: ``(x (N, *shape), t (N,)) -> (N, *shape)`` in PyTorch, or one sample
            ``(x (*shape), t ()) -> (*shape)`` with ``batched=False``.
        batched: whether ``fn`` takes a batch (False: vectorised with ``torch.func.vmap``).
        chunk_size: samples per PyTorch JVP or VJP call (memory).
        vmap_tangents: tangents at one primal: True pushes them through one primal pass with
            ``torch.func.vmap`` over ``jvp``; False repeats the primal once per tangent along
            ``fn``'s batch axis (works for any batched model); None tries the first and falls
            back to the second for good if ``fn``'s ops lack batching rules.
        dtype: ``"bfloat16"``, ``"float16"``, ``"float32"`` or a ``torch.dtype``
            (:func:`as_torch_dtype`); None keeps the module's (no module: the JAX input's).
        device: ``"cuda"``, ``"mps"``, ``"cpu"`` (:func:`resolve_device`); None: the
            accelerator when present.

    Returns:
        The :class:`TorchField`.

    Raises:
        ValueError: ``fn`` not callable, an unknown dtype or device, or a dtype the device does
            not support.
    """
    if not callable(fn):
        raise ValueError(f"`fn` must be callable, got {type(fn).__name__}.")
    dtype = as_torch_dtype(dtype)
    module = _find_module(fn)
    dev = resolve_device(device, module)
    check_dtype_on_device(dtype, dev)
    if module is not None:
        place_module(module, dev, dtype)
        dtype = module_dtype(module) if dtype is None else dtype
    if not batched:
        fn = torch.func.vmap(fn)
    vmap = None if vmap_tangents is None else bool(vmap_tangents)
    return TorchField(fn, int(chunk_size), vmap, dtype, dev)


class TorchModuleField(AbstractPretrainedField):
    """A batched ``torch.nn.Module`` ``(x (N, *shape), t (N,)) -> (N, *shape)`` as a field of
    ``kind`` in the time of ``process`` (through :func:`torch_field`), keeping the module for
    its untrained copy and its ``sample_shape`` attribute, if any. Build it with
    :func:`module_field`."""

    net: TorchField
    module: torch.nn.Module = eqx.field(static=True)
    kind: str = eqx.field(static=True)
    process: AbstractProcess
    notes: tuple[str, ...] = eqx.field(static=True, default=())
    latent: Any = eqx.field(static=True, default=None)
    conditioning: Any = eqx.field(static=True, default=None)  # the module conditions itself
    host_callback: bool = eqx.field(static=True, default=True)
    untrained_description: str = eqx.field(
        static=True,
        default="the same architecture freshly initialised by PyTorch (every submodule's "
        "reset_parameters, seeded from the diagnosis key, on the model's device in its dtype)",
    )

    @property
    def backend(self) -> str:
        return backend_name(self.net)

    @property
    def sample_shape(self) -> tuple[int, ...] | None:
        shape = getattr(self.module, "sample_shape", None)
        return None if shape is None else tuple(int(v) for v in shape)

    @property
    def cls(self) -> str:
        return type(self.module).__name__

    def __call__(self, x: Float[ArrayLike, "*shape"], t: Float[ArrayLike, ""]) -> Array:
        return self.net(x, t)

    def untrained(
        self, *, key: PRNGKeyArray, sample_shape: tuple[int, ...] = ()
    ) -> TorchModuleField:
        """The untrained control: :func:`reinitialised` (the module's ``reset_parameters`` under
        ``torch.manual_seed`` of a seed drawn from ``key``, on its device and in its dtype)."""
        fresh = reinitialised(self.module, torch_seed(key))
        return module_field(
            fresh, self.kind, self.process, device=self.net.device, dtype=self.net.dtype
        )


def module_field(
    module: torch.nn.Module, kind: str, process: AbstractProcess, *, device=None, dtype=None
) -> TorchModuleField:
    """:class:`TorchModuleField` of a batched ``module`` predicting ``kind`` in the time of
    ``process``, placed on ``device`` in ``dtype`` (:func:`torch_field`)."""
    field = torch_field(module, device=device, dtype=dtype)
    return TorchModuleField(field, module, kind, process)


def backend_name(net: TorchField) -> str:
    """The one-line description of a PyTorch field's backend, for reports."""
    dtype = str(net.dtype).removeprefix("torch.") if net.dtype is not None else "the input dtype"
    return f"PyTorch on {net.device} in {dtype} (torch_field: torch.func JVPs and VJPs)"


def _find_module(fn) -> torch.nn.Module | None:
    """The ``torch.nn.Module`` found on ``fn`` (the callable itself, a bound method's object, a
    ``functools.partial``'s function or arguments), or None when there is none."""
    seen = [fn, getattr(fn, "__self__", None)]
    if isinstance(fn, functools.partial):
        seen += [fn.func, getattr(fn.func, "__self__", None), *fn.args, *fn.keywords.values()]
    return next((obj for obj in seen if isinstance(obj, torch.nn.Module)), None)


_HOOKED: weakref.WeakSet = weakref.WeakSet()  # GroupNorms already made contiguous


def diffusers_unet_fn(unet, num_train_timesteps: int = 1000) -> Callable:
    """A diffusers ``UNet2DModel`` in wgfm's DDPM time convention, for :func:`torch_field`:
    ``fn(x, t) = unet(x, t K - 1).sample`` (:mod:`wgfm.interop.diffusers`).

    Adds a pre-hook to each of ``unet``'s GroupNorms making its input contiguous (a no-op
    otherwise): PyTorch's forward-mode AD of ``group_norm`` fails on the transposed tensors of
    diffusers' attention blocks.

    Args:
        unet: the ``diffusers.UNet2DModel``.
        num_train_timesteps: ``K``, the scheduler's training steps.

    Returns:
        ``fn(x (N, C, H, W), t (N,)) -> (N, C, H, W)``, a ``functools.partial`` that keeps the
        unet findable (:func:`torch_field` takes its device and dtype).
    """
    contiguous_group_norms(unet)
    # A partial (not a lambda) keeps the unet findable: torch_field takes its parameter dtype.
    return functools.partial(_unet_call, unet, int(num_train_timesteps))


def contiguous_group_norms(module) -> None:
    """Make every GroupNorm of ``module`` take a contiguous input (a pre-hook; a no-op on
    contiguous tensors, added once): PyTorch's forward-mode AD of ``group_norm`` fails on the
    transposed tensors of diffusers' attention blocks."""
    for mod in module.modules():
        if isinstance(mod, torch.nn.GroupNorm) and mod not in _HOOKED:
            mod.register_forward_pre_hook(lambda _, args: (args[0].contiguous(), *args[1:]))
            _HOOKED.add(mod)


def _unet_call(unet, k: int, x, t):
    return unet(x, t * k - 1).sample
