"""Any PyTorch callable as a JAX field: ``jax.pure_callback`` for values, ``torch.func.jvp`` for
tangents (``jax.custom_jvp``), so ``jit``, ``vmap``, ``jacfwd`` and every JVP-based diagnostic run on
a model nobody ported. Reverse mode (``grad``, VJPs) is not available through a callback.

The callable takes a *batch*: ``fn(x (N, *shape), t (N,)) -> (N, *shape)`` (``batched=False``:
one sample ``fn(x (*shape), t ()) -> (*shape)``, vectorised with ``torch.func.vmap``). ``t`` is
passed through unchanged: map ``wgfm`` time to the model's own inside ``fn``.

Inputs reach ``fn`` as tensors of one dtype, chosen once by :func:`torch_field`: its ``dtype``
argument if given; otherwise the first floating parameter's dtype of the ``torch.nn.Module``
found on ``fn`` (``fn`` itself, the module of a bound method such as ``unet.forward``, the
``unet`` of :func:`diffusers_unet_fn`, or a module among a ``functools.partial``'s arguments);
otherwise the JAX input's own dtype. Outputs come back in the JAX input's dtype.

Under ``vmap`` the callback receives every batch at once (``vmap_method="expand_dims"``). For the
tangents of ``jacfwd``/``sub_jacobian`` (many tangents, one primal) the host splits the batch
axes into primal axes (where ``x`` or ``t`` vary) and tangent-only axes, and runs one
``torch.func.vmap``-ed ``jvp`` per chunk of ``chunk_size`` tangents over the primals, so the
primal pass is not repeated per tangent (or, for ops without functorch batching rules, one
plain ``jvp`` with each primal repeated per tangent: see ``vmap_tangents``).
"""

from __future__ import annotations

import copy
import functools
import math
import weakref
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import torch
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..pretrained import AbstractPretrainedField, torch_seed
from ..processes import AbstractProcess


class TorchField(eqx.Module):
    """A PyTorch callable as a ``wgfm`` field ``(x, t) -> array shaped like x`` (see module)."""

    fn: Callable = eqx.field(static=True)
    chunk_size: int = eqx.field(static=True, default=64)
    vmap_tangents: bool | None = eqx.field(static=True, default=None)
    # The dtype of the tensors passed to ``fn``; None: the JAX input's dtype (module docstring).
    dtype: torch.dtype | None = eqx.field(static=True, default=None)

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
        return _call(self.fn, self.chunk_size, self.vmap_tangents, self.dtype, x, t)


def torch_field(
    fn: Callable,
    *,
    batched: bool = True,
    chunk_size: int = 64,
    vmap_tangents: bool | None = None,
    dtype: torch.dtype | None = None,
) -> TorchField:
    """Wrap ``fn(x, t) -> y`` (PyTorch) as a JAX field; ``chunk_size`` bounds the samples per
    PyTorch JVP call (memory). Tangents at one primal: ``vmap_tangents=True`` pushes them through
    one primal pass with ``torch.func.vmap`` over ``jvp``; ``False`` repeats the primal once per
    tangent along ``fn``'s batch axis (works for any batched model); ``None`` tries the first
    and falls back to the second for good if ``fn``'s ops lack batching rules. ``dtype``: the
    floating dtype of the tensors ``fn`` receives; ``None`` takes the parameter dtype of the
    module found on ``fn``, else the JAX input's dtype (module docstring). Example, a diffusers
    UNet2DModel: ``torch_field(diffusers_unet_fn(unet))``."""
    if not callable(fn):
        raise ValueError(f"`fn` must be callable, got {type(fn).__name__}.")
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"`dtype` must be a floating torch.dtype or None, got {dtype!r}.")
    if dtype is None:
        dtype = _module_dtype(fn)
    if not batched:
        fn = torch.func.vmap(fn)
    vmap = None if vmap_tangents is None else bool(vmap_tangents)
    return TorchField(fn, int(chunk_size), vmap, dtype)


class TorchModuleField(AbstractPretrainedField):
    """A batched ``torch.nn.Module`` ``(x (N, *shape), t (N,)) -> (N, *shape)`` as a field of
    ``kind`` in the time of ``process`` (through :func:`torch_field`), keeping the module for
    its untrained copy and its ``sample_shape`` attribute, if any. Build it with
    :func:`module_field`."""

    net: TorchField
    module: torch.nn.Module = eqx.field(static=True)
    kind: str = eqx.field(static=True)
    process: AbstractProcess
    backend: str = eqx.field(
        static=True, default="PyTorch (torch_field: forward-mode JVPs, no VJP)"
    )
    notes: tuple[str, ...] = eqx.field(static=True, default=())
    latent: Any = eqx.field(static=True, default=None)
    conditioning: Any = eqx.field(static=True, default=None)  # the module conditions itself
    host_callback: bool = eqx.field(static=True, default=True)
    untrained_description: str = eqx.field(
        static=True,
        default="the same architecture freshly initialised by PyTorch (every submodule's "
        "reset_parameters, seeded from the diagnosis key)",
    )

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
        """The module deep-copied with every submodule's ``reset_parameters`` re-run under
        ``torch.manual_seed`` of a seed drawn from ``key``: the untrained control."""
        torch.manual_seed(torch_seed(key))
        fresh = copy.deepcopy(self.module)
        for m in fresh.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()  # pyright: ignore[reportCallIssue]
        return module_field(fresh, self.kind, self.process)


def module_field(module: torch.nn.Module, kind: str, process: AbstractProcess) -> TorchModuleField:
    """:class:`TorchModuleField` of a batched ``module`` predicting ``kind`` in the time of
    ``process``."""
    return TorchModuleField(torch_field(module), module, kind, process)


def _module_dtype(fn) -> torch.dtype | None:
    """The first floating parameter's dtype of the ``torch.nn.Module`` found on ``fn`` (the
    callable itself, a bound method's object, a ``functools.partial``'s function or arguments),
    or None when there is none."""
    seen = [fn, getattr(fn, "__self__", None)]
    if isinstance(fn, functools.partial):
        seen += [fn.func, getattr(fn.func, "__self__", None), *fn.args, *fn.keywords.values()]
    for obj in seen:
        if isinstance(obj, torch.nn.Module):
            for p in obj.parameters():
                if p.is_floating_point():
                    return p.dtype
    return None


_HOOKED: weakref.WeakSet = weakref.WeakSet()  # GroupNorms already made contiguous


def diffusers_unet_fn(unet, num_train_timesteps: int = 1000) -> Callable:
    """``fn(x (N, C, H, W), t (N,)) = unet(x, t K - 1).sample`` for :func:`torch_field`: a
    diffusers ``UNet2DModel`` in wgfm's DDPM time convention (``wgfm.interop.diffusers``).

    Adds a pre-hook to each of ``unet``'s GroupNorms making its input contiguous (a no-op
    otherwise): PyTorch's forward-mode AD of ``group_norm`` fails on the transposed tensors of
    diffusers' attention blocks."""
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


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1, 2, 3))
def _call(fn, chunk_size, vmap_tangents, dtype, x, t):
    out = jax.ShapeDtypeStruct(x.shape, x.dtype)
    host = functools.partial(_host_value, fn, dtype, x.ndim)
    return jax.pure_callback(host, out, x, t, vmap_method="expand_dims")


@_call.defjvp
def _call_jvp(fn, chunk_size, vmap_tangents, dtype, primals, tangents):
    x, t = primals
    dx, dt = tangents
    # The primal comes from its own callback: under jacfwd's vmap over tangents it must stay
    # unbatched, which a callback whose outputs are all batched cannot express (one extra
    # forward pass per primal, not per tangent).
    y = _call(fn, chunk_size, vmap_tangents, dtype, x, t)
    out = jax.ShapeDtypeStruct(x.shape, x.dtype)
    host = functools.partial(_host_jvp, fn, dtype, chunk_size, vmap_tangents, x.ndim)
    return y, jax.pure_callback(host, out, x, t, dx, dt, vmap_method="expand_dims")


def _torch_dtype(dtype: torch.dtype | None, x: np.ndarray) -> torch.dtype:
    """``dtype``, or the torch dtype of the JAX input ``x`` when it is None."""
    return dtype if dtype is not None else torch.from_numpy(np.zeros((), x.dtype)).dtype


def _host_value(fn, dtype, nd: int, x: np.ndarray, t: np.ndarray) -> np.ndarray:
    shape = x.shape[x.ndim - nd :]
    lead = np.broadcast_shapes(x.shape[: x.ndim - nd], t.shape)
    dtype = _torch_dtype(dtype, x)
    xs = _tensor(np.broadcast_to(x, lead + shape).reshape(-1, *shape), dtype)
    ts = _tensor(np.broadcast_to(t, lead).reshape(-1), dtype)
    with torch.no_grad():
        y = fn(xs, ts)
    return _to_numpy(y, x.dtype, "fn(x, t)", (xs.shape[0], *shape)).reshape(lead + shape)


def _host_jvp(fn, dtype, chunk_size: int, vmap_tangents: bool | None, nd: int, x, t, dx, dt):
    """Tangent outputs for every combination of batch axes (module docstring)."""
    shape = x.shape[x.ndim - nd :]
    k = max(x.ndim - nd, dx.ndim - nd, t.ndim, dt.ndim)
    lx, ldx = _pad(x.shape[: x.ndim - nd], k), _pad(dx.shape[: dx.ndim - nd], k)
    lt, ldt = _pad(t.shape, k), _pad(dt.shape, k)
    lead = np.broadcast_shapes(lx, lt, ldx, ldt)
    prim = [i for i in range(k) if lx[i] > 1 or lt[i] > 1 or lead[i] == 1]
    tang = [i for i in range(k) if i not in prim]
    perm = prim + tang
    lp, ltg = tuple(lead[i] for i in prim), tuple(lead[i] for i in tang)
    p, m = math.prod(lp), math.prod(ltg)
    first = tuple(slice(None) if i in prim else 0 for i in range(k))
    dtype = _torch_dtype(dtype, x)

    def as_torch(a, full, take_first):
        a = np.broadcast_to(a.reshape(full), lead + full[k:])
        a = a[first] if take_first else np.transpose(a, perm + list(range(k, a.ndim)))
        rows = (p,) if take_first else (p, m)
        return _tensor(a.reshape(*rows, *full[k:]), dtype)

    xs, ts = as_torch(x, lx + shape, True), as_torch(t, lt, True)
    dxs, dts = as_torch(dx, ldx + shape, False), as_torch(dt, ldt, False)
    step = max(1, chunk_size // p)
    dys = []
    # PyTorch's fused CPU attention kernels have no forward-mode AD; the math backend does.
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        for c in range(0, m, step):
            dx_c, dt_c = dxs[:, c : c + step], dts[:, c : c + step]
            dys.append(_jvp_chunk(fn, xs, ts, dx_c, dt_c, vmap_tangents))
    dy = _to_numpy(torch.cat(dys, dim=1), x.dtype, "the JVP of fn", (p, m, *shape))
    inv = list(np.argsort(perm)) + list(range(k, k + len(shape)))
    return np.ascontiguousarray(np.transpose(dy.reshape(lp + ltg + shape), inv))


# Callables whose ops lack functorch batching rules under jvp (auto mode falls back for them).
_NO_VMAP: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _jvp_chunk(fn, xs, ts, dx, dt, vmap_tangents: bool | None) -> torch.Tensor:
    """Tangents ``dx (P, M, *shape)``, ``dt (P, M)`` at primals ``xs (P, *shape)``, ``ts (P,)``."""
    p, m = dt.shape
    if vmap_tangents is None:  # auto: vmap unless it already failed for this fn
        if _NO_VMAP.get(fn, False):
            vmap_tangents = False
        else:
            try:
                return _jvp_chunk(fn, xs, ts, dx, dt, True)
            except (RuntimeError, NotImplementedError):
                _NO_VMAP[fn] = True
                vmap_tangents = False
    if vmap_tangents:  # the primal pass runs once; tangent-major contiguous for batching rules
        one = lambda d, e: torch.func.jvp(fn, (xs, ts), (d, e))[1]  # noqa: E731
        out = torch.func.vmap(one)(dx.transpose(0, 1).contiguous(), dt.transpose(0, 1).contiguous())
        return out.transpose(0, 1)
    # Each primal repeated once per tangent along the model's own batch axis: one plain
    # forward-mode pass, for models whose ops lack functorch batching rules under jvp.
    rep = lambda a: a.repeat_interleave(m, dim=0)  # noqa: E731  (a copy: make_dual needs one)
    flat = lambda a: a.reshape(p * m, *a.shape[2:])  # noqa: E731
    out = torch.func.jvp(fn, (rep(xs), rep(ts)), (flat(dx), flat(dt)))[1]
    return out.reshape(p, m, *out.shape[1:])


def _tensor(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    # A copy: callback inputs are read-only views that torch must not alias.
    return torch.from_numpy(np.array(a, copy=True)).to(dtype)


def _pad(shape: tuple[int, ...], k: int) -> tuple[int, ...]:
    return (1,) * (k - len(shape)) + tuple(shape)


def _to_numpy(y, dtype, what: str, want: tuple[int, ...]) -> np.ndarray:
    if not isinstance(y, torch.Tensor):
        raise ValueError(f"{what} must return a torch.Tensor, got {type(y).__name__}.")
    if tuple(y.shape) != tuple(want):
        raise ValueError(f"{what} must return shape {tuple(want)} (like x), got {tuple(y.shape)}.")
    return y.detach().cpu().numpy().astype(dtype, copy=False)
