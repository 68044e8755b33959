"""The host side of a :func:`wgfm.interop.torch_field`: NumPy arrays from JAX's callbacks to
tensors on the model's device and dtype, one batched ``torch.func`` call per chunk (values,
JVPs, VJPs), and back to NumPy in JAX's dtype."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import weakref
from collections.abc import Callable

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel


@dataclasses.dataclass(frozen=True)
class Spec:
    """The static arguments of the host calls (hashable: ``fn`` by identity)."""

    fn: Callable
    chunk_size: int
    vmap_tangents: bool | None
    dtype: torch.dtype | None
    device: torch.device


def _torch_dtype(dtype: torch.dtype | None, x: np.ndarray) -> torch.dtype:
    """``dtype``, or the torch dtype of the JAX input ``x`` when it is None."""
    return dtype if dtype is not None else torch.from_numpy(np.zeros((), x.dtype)).dtype


def _time_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype ``t`` reaches ``fn`` in: ``dtype``, but float32 for half precision, where a
    diffusers timestep such as 299 would round to 300 (bfloat16 keeps 8 significant bits)."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def host_value(spec: Spec, nd: int, x: np.ndarray, t: np.ndarray) -> np.ndarray:
    shape = x.shape[x.ndim - nd :]
    lead = np.broadcast_shapes(x.shape[: x.ndim - nd], t.shape)
    dtype, dev = _torch_dtype(spec.dtype, x), spec.device
    xs = _tensor(np.broadcast_to(x, lead + shape).reshape(-1, *shape), dtype, dev)
    ts = _tensor(np.broadcast_to(t, lead).reshape(-1), _time_dtype(dtype), dev)
    with torch.no_grad(), _dtype_errors(dtype):
        y = spec.fn(xs, ts)
    return _to_numpy(y, x.dtype, "fn(x, t)", (xs.shape[0], *shape)).reshape(lead + shape)


class _Axes:
    """The leading axes of a host call split into primal axes (where ``x`` or ``t`` vary: one
    forward pass each) and tangent-only axes (where only the tangents or cotangents vary: pushed
    through the same primal pass), flattened to ``(P, *event)`` primals and ``(P, M, *event)``
    tangents, and back."""

    def __init__(self, nd: int, primals, tangents):
        self.k = max(a.ndim - r for a, r in [*primals, *tangents])
        pl = [pad(a.shape[: a.ndim - r], self.k) for a, r in primals]
        tl = [pad(a.shape[: a.ndim - r], self.k) for a, r in tangents]
        self.lead = tuple(np.broadcast_shapes(*pl, *tl))
        self.prim = [i for i in range(self.k) if any(s[i] > 1 for s in pl) or self.lead[i] == 1]
        self.perm = self.prim + [i for i in range(self.k) if i not in self.prim]
        self.lp = tuple(self.lead[i] for i in self.prim)
        self.ltg = tuple(self.lead[i] for i in self.perm[len(self.prim) :])
        self.p, self.m = math.prod(self.lp), math.prod(self.ltg)

    def _full(self, a: np.ndarray, r: int) -> np.ndarray:
        ev = a.shape[a.ndim - r :]
        return np.broadcast_to(a.reshape(pad(a.shape[: a.ndim - r], self.k) + ev), self.lead + ev)

    def primal(self, a: np.ndarray, r: int, dtype, dev) -> torch.Tensor:
        first = tuple(slice(None) if i in self.prim else 0 for i in range(self.k))
        a = self._full(a, r)[first]
        return _tensor(a.reshape(self.p, *a.shape[len(self.prim) :]), dtype, dev)

    def tangent(self, a: np.ndarray, r: int, dtype, dev) -> torch.Tensor:
        a = np.transpose(self._full(a, r), self.perm + list(range(self.k, self.k + r)))
        return _tensor(a.reshape(self.p, self.m, *a.shape[self.k :]), dtype, dev)

    def back(self, y: np.ndarray, r: int) -> np.ndarray:
        """``y (P, M, *event)`` to ``lead + event``."""
        ev = y.shape[2:]
        inv = list(np.argsort(self.perm)) + list(range(self.k, self.k + r))
        return np.transpose(y.reshape(self.lp + self.ltg + ev), inv).copy()  # C order, 0-d kept


def host_jvp(spec: Spec, nd: int, x, t, dx, dt):
    """Tangent outputs for every combination of batch axes (module docstring)."""
    ax = _Axes(nd, [(x, nd), (t, 0)], [(dx, nd), (dt, 0)])
    dtype, dev = _torch_dtype(spec.dtype, x), spec.device
    tdtype = _time_dtype(dtype)
    xs, ts = ax.primal(x, nd, dtype, dev), ax.primal(t, 0, tdtype, dev)
    dxs, dts = ax.tangent(dx, nd, dtype, dev), ax.tangent(dt, 0, tdtype, dev)
    step = max(1, spec.chunk_size // ax.p)
    dys = []
    # PyTorch's fused CPU attention kernels have no forward-mode AD; the math backend does.
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), _dtype_errors(dtype):
        for c in range(0, ax.m, step):
            dx_c, dt_c = dxs[:, c : c + step], dts[:, c : c + step]
            dys.append(_jvp_chunk(spec.fn, xs, ts, dx_c, dt_c, spec.vmap_tangents))
    shape = (ax.p, ax.m, *x.shape[x.ndim - nd :])
    return ax.back(_to_numpy(torch.cat(dys, dim=1), x.dtype, "the JVP of fn", shape), nd)


def host_vjp(spec: Spec, nd: int, x, t, ct):
    """``(ct^T dy/dx, ct^T dy/dt)`` for every combination of batch axes: one
    ``torch.func.vjp`` per chunk of primals, its pullback applied to the cotangents of each."""
    ax = _Axes(nd, [(x, nd), (t, 0)], [(ct, nd)])
    dtype, dev = _torch_dtype(spec.dtype, x), spec.device
    xs, ts = ax.primal(x, nd, dtype, dev), ax.primal(t, 0, _time_dtype(dtype), dev)
    cts = ax.tangent(ct, nd, dtype, dev)
    step = max(1, spec.chunk_size // ax.p)
    gxs, gts = [], []
    # The math attention backend, as for the JVP: the pullback is then vmapped over cotangents.
    with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH), _dtype_errors(dtype):
        pull = torch.func.vjp(spec.fn, xs, ts)[1]
        for c in range(0, ax.m, step):
            gx, gt = _vjp_chunk(spec.fn, pull, cts[:, c : c + step], spec.vmap_tangents)
            gxs.append(gx)
            gts.append(gt)
    shape = x.shape[x.ndim - nd :]
    gx = _to_numpy(torch.cat(gxs, 1), x.dtype, "the VJP of fn", (ax.p, ax.m, *shape))
    gt = _to_numpy(torch.cat(gts, 1), t.dtype, "the VJP of fn in t", (ax.p, ax.m))
    return ax.back(gx, nd), ax.back(gt, 0)


# Callables whose ops lack functorch batching rules under jvp / vjp (auto falls back for them).
_NO_VMAP: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_NO_VMAP_VJP: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _vjp_chunk(fn, pull, ct, vmap_tangents: bool | None):
    """``pull`` (a ``torch.func.vjp`` pullback at ``P`` primals) of cotangents ``ct (P, M,
    *shape)``: ``(gx (P, M, *shape), gt (P, M))``."""
    m = ct.shape[1]
    if m == 1:
        gx, gt = pull(ct[:, 0])
        return gx[:, None], gt[:, None]
    if vmap_tangents is None:  # auto: vmap unless it already failed for this fn
        if _NO_VMAP_VJP.get(fn, False):
            vmap_tangents = False
        else:
            try:
                return _vjp_chunk(fn, pull, ct, True)
            except (RuntimeError, NotImplementedError):
                _NO_VMAP_VJP[fn] = True
                vmap_tangents = False
    if vmap_tangents:  # one batched backward pass through the graph of the P primals
        gx, gt = torch.func.vmap(pull)(ct.transpose(0, 1).contiguous())
        return gx.transpose(0, 1), gt.transpose(0, 1)
    # One backward pass per cotangent through the same graph (ops without batching rules).
    outs = [pull(ct[:, j]) for j in range(m)]
    return torch.stack([o[0] for o in outs], 1), torch.stack([o[1] for o in outs], 1)


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


def _tensor(a: np.ndarray, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    # A copy: callback inputs are read-only views that torch must not alias.
    return torch.from_numpy(np.array(a, copy=True)).to(device=device, dtype=dtype)


@contextlib.contextmanager
def _dtype_errors(dtype: torch.dtype):
    """PyTorch's dtype-mismatch errors inside ``fn`` as a ValueError naming both dtypes: the
    one torch_field feeds (``dtype``) and the one ``fn``'s weights have (in torch's message)."""
    try:
        yield
    except RuntimeError as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if not re.search(r"dtype|scalar type|type \(|same type|BFloat16|Half|Double", msg):
            raise
        raise ValueError(
            f"`dtype`: fn was given {dtype} inputs and its weights have another dtype "
            f"(PyTorch: {msg}). Pass dtype= equal to the weights' dtype, or give torch_field "
            "the module (or a partial over it) so that it moves the weights to `dtype`."
        ) from e


def pad(shape: tuple[int, ...], k: int) -> tuple[int, ...]:
    return (1,) * (k - len(shape)) + tuple(shape)


def _to_numpy(y, dtype, what: str, want: tuple[int, ...]) -> np.ndarray:
    if not isinstance(y, torch.Tensor):
        raise ValueError(f"{what} must return a torch.Tensor, got {type(y).__name__}.")
    if tuple(y.shape) != tuple(want):
        raise ValueError(f"{what} must return shape {tuple(want)} (like x), got {tuple(y.shape)}.")
    y = y.detach()
    if y.dtype in (torch.bfloat16, torch.float16):  # numpy has no bfloat16: via float32
        y = y.float()
    return y.cpu().numpy().astype(dtype, copy=False)
