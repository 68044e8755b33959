"""A pretrained-model workload: the ``google/ddpm-cifar10-32`` U-Net (35.7 M parameters, random
weights) as diffusers builds it, loaded by ``wgfm.interop.load_diffusers`` into the flax port,
beside diffusers in PyTorch on the identical weights and beside ``wgfm.interop.torch_field``
wrapping the same PyTorch module.

Two measurements: a batched forward pass, and the 64 x 64 sub-Jacobian of the paper's
differential test (``wgfm.diagnostics.sub_jacobian``; PyTorch: one-hot JVPs with
``torch.func.jvp``, 16 tangents per pass with the image repeated along the batch axis, the
authors' method). The port's field takes ``(H, W, C)``; it is wrapped to ``(C, H, W)`` so every
implementation differentiates the same coordinates. Agreement is recorded as the largest
difference relative to the largest entry.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from wgfm.interop import DDPM_CIFAR10_32

from . import _compare as C
from ._harness import record, time_call, time_jitted, write_results

BENCH = "diffusers_unet"
CIFAR_UNET: dict[str, Any] = DDPM_CIFAR10_32
TINY_UNET = dict(
    CIFAR_UNET, block_out_channels=[16, 32], down_block_types=["DownBlock2D", "AttnDownBlock2D"],
    up_block_types=["AttnUpBlock2D", "UpBlock2D"], layers_per_block=1, norm_num_groups=4,
    sample_size=8,
)  # fmt: skip
T = 0.5  # wgfm time; diffusers timestep 0.5 K - 1 = 499


def _unet(torch, config: dict):
    import diffusers

    torch.manual_seed(0)
    return diffusers.UNet2DModel(**config).eval()


def _torch_subjac(torch, fn, xs, idxs, t: float, chunk: int = 16):
    """One-hot JVPs through ``fn`` (batched, NCHW), ``chunk`` tangents per pass, per image."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    out = []
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        for x, idx in zip(xs, idxs, strict=True):
            d, cols = x.numel(), []
            for c in range(0, len(idx), chunk):
                sel = idx[c : c + chunk]
                tang = torch.zeros(len(sel), d)
                tang[torch.arange(len(sel)), sel] = 1.0
                rep = x.expand(len(sel), *x.shape).contiguous()
                ts = torch.full((len(sel),), t)
                jv = torch.func.jvp(fn, (rep, ts), (tang.reshape(rep.shape), torch.zeros_like(ts)))
                cols.append(jv[1].reshape(len(sel), d)[:, idx])
            out.append(torch.cat(cols).T)
    return torch.stack(out)


def _best_threads(torch, call) -> int:
    """PyTorch's faster thread count for ``call``: all cores, or 1 (on a shared machine OpenMP
    barriers can make all-core runs 100x slower); it stays set for the rest of the run."""
    import os
    import time

    best = (float("inf"), 1)
    for n in sorted({os.cpu_count() or 1, 1}, reverse=True):
        torch.set_num_threads(n)
        call()
        t0 = time.perf_counter()
        call()
        best = min(best, (time.perf_counter() - t0, n))
    torch.set_num_threads(best[1])
    return best[1]


def _rel(a, ref) -> float:
    return float(np.max(np.abs(np.asarray(a) - np.asarray(ref))) / np.max(np.abs(ref)))


def run(quick: bool = False, *, tiny: bool = False, repeats: int | None = None) -> list[dict]:
    torch = C.torch_or_none(BENCH)
    if torch is None:
        return []
    try:
        import diffusers  # noqa: F401
    except ImportError:
        print(f"[{BENCH}] diffusers is not installed: skipped.")
        return []
    from wgfm.diagnostics import sub_jacobian
    from wgfm.interop import diffusers_unet_fn, load_diffusers, torch_field

    config = TINY_UNET if tiny else CIFAR_UNET
    n_fwd, n_img, k = (2, 1, 8) if tiny else (4, 1, 64) if quick else (16, 2, 64)
    repeats = repeats or (1 if tiny else 3)
    unet = _unet(torch, config)
    with tempfile.TemporaryDirectory() as d:
        unet.save_pretrained(d)
        port, _ = load_diffusers(d, scheduler_config={})
    n_params = sum(p.numel() for p in unet.parameters())
    size, c = int(config["sample_size"]), int(config["in_channels"])
    case = f"UNet2DModel {n_params / 1e6:.1f}M params, {c}x{size}x{size}"
    rng = np.random.default_rng(0)
    rows = []

    # Forward pass on a batch.
    xs = rng.standard_normal((n_fwd, c, size, size)).astype(np.float32)
    fwd = jax.jit(jax.vmap(port, in_axes=(0, None)))
    x_hwc = jnp.asarray(xs.transpose(0, 2, 3, 1))
    compile_s, med = time_jitted(fwd, x_hwc, jnp.float32(T), repeats=repeats)
    ref = np.asarray(fwd(x_hwc, jnp.float32(T))).transpose(0, 3, 1, 2)
    fcase = f"{case}, forward, batch {n_fwd}"
    rows.append(record(BENCH, fcase, "wgfm flax port (jit, vmap)", compile_s=compile_s,
                       median_s=med, repeats=repeats, params=n_params))  # fmt: skip
    fn = diffusers_unet_fn(unet)
    xt, tt = torch.from_numpy(xs), torch.full((n_fwd,), T)
    with torch.no_grad():
        threads = _best_threads(torch, lambda: fn(xt, tt))
        first, med_t = time_call(lambda: fn(xt, tt), repeats=repeats)
        err = _rel(fn(xt, tt).numpy(), ref)
    rows.append(record(BENCH, fcase, "diffusers PyTorch (no_grad)", compile_s=None,
                       median_s=med_t, repeats=repeats, first_call_s=first, torch_threads=threads,
                       wgfm_speedup=med_t / med, rel_diff_vs_wgfm=err))  # fmt: skip

    # 64 x 64 sub-Jacobian.
    xs = rng.standard_normal((n_img, c, size, size)).astype(np.float32)
    d = c * size * size
    idxs = np.stack([rng.choice(d, k, replace=False) for _ in range(n_img)]).astype(np.int32)
    args = (jnp.asarray(xs), jnp.asarray(idxs))
    scase = f"{case}, {k}x{k} sub-Jacobian, {n_img} image(s)"
    chw = lambda x, t: jnp.transpose(port(jnp.transpose(x, (1, 2, 0)), t), (2, 0, 1))  # noqa: E731
    tf = torch_field(fn, chunk_size=16)

    def subjac(field, chunk):
        one = lambda xi: sub_jacobian(field, xi[0], T, xi[1], chunk_size=chunk)  # noqa: E731
        return jax.jit(lambda a, b: jax.lax.map(one, (a, b)))

    # The port's two chunkings (all K tangents in one pass, or 16 at a time as the authors);
    # the comparisons are against the faster one.
    ref, meds = None, []
    for chunk in [None] + ([16] if k > 16 else []):
        port_fn = subjac(chw, chunk)
        compile_s, med = time_jitted(port_fn, *args, repeats=repeats)
        val = np.asarray(port_fn(*args))
        extra = {} if ref is None else {"rel_diff_vs_wgfm": _rel(val, ref)}
        ref = val if ref is None else ref
        how = f"all {k} tangents at once" if chunk is None else f"chunks of {chunk}"
        rows.append(record(BENCH, scase, f"wgfm flax port, sub_jacobian ({how})",
                           compile_s=compile_s, median_s=med, repeats=repeats, **extra))  # fmt: skip
        meds.append(med)
    med = min(meds)
    targs = (torch.from_numpy(xs), torch.from_numpy(idxs.astype(np.int64)))
    first, med_t = time_call(lambda: _torch_subjac(torch, fn, *targs, T), repeats=repeats)
    err = _rel(_torch_subjac(torch, fn, *targs, T).numpy(), ref)
    rows.append(record(BENCH, scase, "diffusers PyTorch, torch.func.jvp (chunks of 16)",
                       compile_s=None, median_s=med_t, repeats=repeats, first_call_s=first,
                       torch_threads=threads, wgfm_speedup=med_t / med,
                       rel_diff_vs_wgfm=err))  # fmt: skip
    cb_fn = subjac(tf, None)
    compile_s, med_cb = time_jitted(cb_fn, *args, repeats=repeats)
    err = _rel(cb_fn(*args), ref)
    rows.append(record(BENCH, scase, "wgfm torch_field (callback), sub_jacobian",
                       compile_s=compile_s, median_s=med_cb, repeats=repeats,
                       wgfm_speedup=med_cb / med, vs_pytorch=med_cb / med_t,
                       rel_diff_vs_wgfm=err))  # fmt: skip
    return rows


if __name__ == "__main__":
    import sys

    reps = int(sys.argv[sys.argv.index("--repeats") + 1]) if "--repeats" in sys.argv else None
    rows = run(quick="--quick" in sys.argv, tiny="--tiny" in sys.argv, repeats=reps)
    print(json.dumps(rows, indent=1))
    write_results(rows, Path("results/bench"), name=BENCH)
