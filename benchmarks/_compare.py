"""Helpers shared by the ``compare_*`` benchmarks: optional PyTorch, identical MLP weights in both
frameworks, a matmul peak measured in the same process, and a trace counter.

PyTorch is optional (the ``bench`` extra); :func:`torch_or_none` returns ``None`` with a message
when it is absent, and the comparisons that need it are skipped.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._harness import block, steady_times

TORCH_MISSING = (
    "PyTorch is not installed: skipping the torch comparisons "
    '(install the bench extra: pip install -e ".[bench]").'
)


def torch_or_none(what: str) -> Any:
    """Import torch (threads matched to the cores JAX uses, or to ``OMP_NUM_THREADS`` where
    that is set) or print why ``what`` is skipped."""
    try:
        import torch
    except ImportError:
        print(f"[{what}] {TORCH_MISSING}", file=sys.stderr)
        return None
    threads = os.environ.get("OMP_NUM_THREADS", "")
    torch.set_num_threads(int(threads) if threads.isdigit() and int(threads) > 0 else jax_cores())
    return torch


# ---------------------------------------------------------------------------------------------
# A plain MLP field (x, t) -> R^D with the same weights in JAX and PyTorch.


def mlp_params(
    dim: int, width: int = 256, depth: int = 3, seed: int = 0, dtype=np.float32
) -> list[tuple[np.ndarray, np.ndarray]]:
    """He-initialised ``[(W, b)]`` for input ``[x, t]`` (D+1), ``depth`` hidden layers, output D.
    ``W`` is ``(in, out)``."""
    rng = np.random.default_rng(seed)
    sizes = [dim + 1] + [width] * depth + [dim]
    return [
        (
            (rng.standard_normal((i, o)) * np.sqrt(2.0 / i)).astype(dtype),
            (0.1 * rng.standard_normal(o)).astype(dtype),
        )
        for i, o in zip(sizes[:-1], sizes[1:], strict=True)
    ]


def mlp_jax(params):
    """The MLP as a wgfm field ``(x (D,), t) -> (D,)`` closed over ``params`` (SiLU)."""
    ps = [(jnp.asarray(w), jnp.asarray(b)) for w, b in params]

    def field(x, t):
        h = jnp.concatenate([x, jnp.reshape(t, (1,)).astype(x.dtype)])
        for w, b in ps[:-1]:
            h = jax.nn.silu(h @ w + b)
        w, b = ps[-1]
        return h @ w + b

    return field


def mlp_torch(torch, params):
    """The same MLP as a ``torch.nn.Sequential`` taking ``[x, t]`` rows."""
    layers = []
    for i, (w, b) in enumerate(params):
        lin = torch.nn.Linear(*w.shape)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(w.T)))
            lin.bias.copy_(torch.from_numpy(b))
        layers.append(lin)
        if i < len(params) - 1:
            layers.append(torch.nn.SiLU())
    return torch.nn.Sequential(*layers)


def mlp_flops(dim: int, width: int = 256, depth: int = 3) -> int:
    """Multiply-add FLOPs (2 per MAC) of one forward pass of :func:`mlp_params`'s MLP."""
    sizes = [dim + 1] + [width] * depth + [dim]
    return sum(2 * i * o for i, o in zip(sizes[:-1], sizes[1:], strict=True))


# ---------------------------------------------------------------------------------------------


def jax_cores() -> int:
    """The cores XLA:CPU's thread pool runs on (the process's CPU affinity)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def best_threads(torch, call, calls: int = 2) -> tuple[int, dict[str, float]]:
    """``(threads, {threads: median seconds})``: PyTorch's faster thread count for ``call``, the
    operation the module then times (a warm-up and the median of ``calls`` calls at each):
    JAX's cores (what the JAX side uses), or 1 (on a shared machine OpenMP barriers can make
    all-core runs slower). It stays set for the rest of the module; both times go in its rows."""
    tried: dict[str, float] = {}
    for n in sorted({jax_cores(), 1}, reverse=True):
        torch.set_num_threads(n)
        call()
        tried[str(n)] = statistics.median(steady_times(call, calls))
    best = min(tried, key=tried.__getitem__)
    torch.set_num_threads(int(best))
    return int(best), tried


def threads_extra(threads: int, tried: dict[str, float]) -> dict[str, float | int]:
    """:func:`best_threads`' choice as record extras: the count and the time at each."""
    return {"torch_threads": threads} | {f"torch_s_at_{n}_threads": s for n, s in tried.items()}


def torch_compile(torch, fn, *, tiny: bool = False):
    """``torch.compile(fn)`` with inductor; in the smoke test (``tiny``) with dynamo's graph
    capture alone (``backend="eager"``): the same capture of the same calls, without the code
    generation, which takes longer on 2 cores than the whole smoke test."""
    return torch.compile(fn, backend="eager" if tiny else "inductor")


def compiled_side(
    what: str, name: str, call: Callable[[], Any], errors: dict[str, str] | None = None
) -> float | None:
    """Build a ``torch.compile``-d side by calling it twice: its compile seconds (the first
    call's excess over the second), or ``None`` with the error printed (``[what] name
    unavailable here: ...``) and kept in ``errors[name]`` when it cannot build here (no C++
    toolchain, an op inductor lacks, ...); the caller then leaves the side out and records
    the error in the row of its eager form (``torch_compile_error``)."""
    try:
        t0 = time.perf_counter()
        call()
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        call()
        return max(first - (time.perf_counter() - t0), 0.0)
    except Exception as err:
        msg = f"{type(err).__name__}: {err}"[:300]
        print(f"[{what}] {name} unavailable here: {msg}", file=sys.stderr)
        if errors is not None:
            errors[name] = msg
        return None


def fastest_of(med: dict[str, float], groups: dict[str, list[str]]) -> dict[str, bool]:
    """``{name: is the fastest of its group}`` for every name in ``groups``' lists, from the
    median seconds ``med``: the flag (``fastest_peer``) a target reads so that it is never met
    against a slower formulation of the peer only."""
    out = {}
    for names in filter(None, groups.values()):
        best = min(names, key=med.__getitem__)
        out |= {n: n == best for n in names}
    return out


PEAK_REPEATS = 7


def matmul_peak(n: int = 1024, repeats: int = PEAK_REPEATS) -> dict[str, float]:
    """Best achieved float32 GFLOP/s of an ``n x n`` matmul in JAX and (when present) torch: the
    machine's practical peak, measured in the same process as the benchmarks (best of
    ``repeats``, since a peak is a best case)."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    mm = jax.jit(lambda x: x @ x)
    out = {"jax_gflops": 2 * n**3 / _best(lambda: block(mm(a)), repeats) / 1e9}
    try:
        import torch

        b = torch.from_numpy(np.array(a))
        out["torch_gflops"] = 2 * n**3 / _best(lambda: b @ b, repeats) / 1e9
    except ImportError:
        pass
    out["peak_gflops"] = max(out.values())
    return out


_PEAK: dict[str, float] = {}


def run_peak() -> dict[str, float]:
    """The run's one matmul peak (:func:`matmul_peak`, both frameworks), measured on first use
    and shared by every module in the process, so that all fractions of peak have one
    denominator (separate measurements on a loaded host differ by more than the effects)."""
    if not _PEAK:
        _PEAK.update(matmul_peak())
    return dict(_PEAK)


def _best(fn, repeats: int) -> float:
    fn()
    return min(steady_times(fn, repeats))


class TraceCounter:
    """Wrap a field; ``count`` goes up each time JAX traces it (Python runs only while tracing)."""

    def __init__(self, field):
        self.field, self.count = field, 0

    def __call__(self, x, t):
        if isinstance(x, jax.core.Tracer):  # pyright: ignore[reportAttributeAccessIssue]
            self.count += 1
        return self.field(x, t)


def sync_torch(out):
    """PyTorch CPU ops are synchronous; kept for symmetry with :func:`block`."""
    return out


def oracle_case(dim: int):
    """``(process, key, mixture, velocity field, check)`` in float64: the 8-mode ring in 2D, a
    random 4-component mixture otherwise; ``check`` is :func:`oracle_max_diff` of the field."""
    from wgfm import gmm
    from wgfm.processes import VP

    process, key = VP(), jax.random.key(dim)
    mix = gmm.ring() if dim == 2 else gmm.random_mixture(dim, 4, key=key)
    mix = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), mix)
    field = gmm.velocity_field(mix, process)
    return process, key, mix, field, oracle_max_diff(field, mix, process, dim)


def oracle_max_diff(field, mixture, process, dim: int, n: int = 8) -> float:
    """Max relative difference, on ``n`` points at 3 times (float64 expected), between ``field``
    and the WGF velocity computed from ``mixture.marginal(process, t).score`` (the Cholesky
    path): an independent check of the eigendecomposition-based ``gmm.velocity_field``."""
    x = 2 * jax.random.normal(jax.random.key(3), (n, dim), jnp.float64)
    worst = 0.0
    for t in (0.01, 0.3, 1.0):
        a, b = process.velocity_coefficients(t)
        ref = jax.vmap(lambda y, a=a, b=b, t=t: a * y + b * mixture.marginal(process, t).score(y))(
            x
        )
        got = eqx.filter_vmap(field, in_axes=(0, None))(x, t)
        worst = max(worst, float(jnp.max(jnp.abs(got - ref)) / (1 + jnp.max(jnp.abs(ref)))))
    return worst


def torch_subjac(
    torch, fn, xs, idxs, t: float, *, chunk: int, vmap_tangents: bool, vmap_images: bool = False
):
    """``(n, K, K)`` sub-Jacobians ``J[idx][:, idx]`` of a batched PyTorch field
    ``fn(x (N, C, H, W), t (N,))`` at each image ``xs[i]``, from one-hot JVPs, ``chunk`` tangents
    per pass.

    ``vmap_tangents=True`` is ``torch.func.vmap`` over ``torch.func.jvp`` at one primal per chunk
    (the primal pass runs once per chunk: PyTorch's own recipe for Jacobian columns, what
    ``torch.func.jacfwd`` does); with ``vmap_images=True`` a second ``vmap`` batches the images
    as well (one pass per chunk for all of them, as wgfm's ``vmap`` over images does).
    ``vmap_tangents=False`` repeats the image once per tangent along the batch axis (one primal
    pass per tangent), the paper authors' method."""
    from torch.func import jvp, vmap
    from torch.nn.attention import SDPBackend, sdpa_kernel

    # PyTorch's fused CPU attention kernels have no forward-mode AD; the math backend does.
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        if vmap_images:
            return _subjac_all_images(torch, fn, xs, idxs, t, chunk, jvp, vmap)
        out = []
        for x, idx in zip(xs, idxs, strict=True):
            d, cols = x.numel(), []
            for c in range(0, len(idx), chunk):
                tang = _one_hot(torch, idx[c : c + chunk], x)
                if vmap_tangents:
                    ts = torch.full((1,), t)
                    one = lambda v, x=x, ts=ts: jvp(  # noqa: E731
                        lambda y: fn(y[None], ts)[0], (x,), (v,)
                    )[1]
                    jv = vmap(one)(tang)
                else:
                    n = len(tang)
                    rep = x.expand(n, *x.shape).contiguous()
                    ts = torch.full((n,), t)
                    jv = jvp(fn, (rep, ts), (tang, torch.zeros_like(ts)))[1]
                cols.append(jv.reshape(len(tang), d)[:, idx])
            out.append(torch.cat(cols).T)
        return torch.stack(out)


def _one_hot(torch, sel, x):
    """``(len(sel), *x.shape)`` one-hot tangents at the flat coordinates ``sel`` of ``x``."""
    tang = torch.zeros(len(sel), x.numel())
    tang[torch.arange(len(sel)), sel] = 1.0
    return tang.reshape(len(sel), *x.shape)


def _subjac_all_images(torch, fn, xs, idxs, t, chunk, jvp, vmap):
    """:func:`torch_subjac` with ``vmap`` over images outside ``vmap`` over tangents."""
    n, d = xs.shape[0], xs[0].numel()
    ts = torch.full((1,), t)

    def one(x, v):  # one image, one tangent
        return jvp(lambda y: fn(y[None], ts)[0], (x,), (v,))[1]

    per_image = vmap(vmap(one, in_dims=(None, 0)), in_dims=(0, 0))
    cols = []
    for c in range(0, idxs.shape[1], chunk):
        tang = torch.stack(
            [_one_hot(torch, idx[c : c + chunk], x) for x, idx in zip(xs, idxs, strict=True)]
        )
        jv = per_image(xs, tang).reshape(n, tang.shape[1], d)  # (n, chunk, D)
        cols.append(torch.gather(jv, 2, idxs[:, None, :].expand(-1, tang.shape[1], -1)))
    return torch.cat(cols, dim=1).transpose(1, 2)
