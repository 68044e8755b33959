"""A pretrained-model workload: the ``google/ddpm-cifar10-32`` U-Net (35.7 M parameters, random
weights) as diffusers builds it, loaded by ``wgfm.interop.load_diffusers`` into the flax port,
beside diffusers in PyTorch on the identical weights and beside ``wgfm.interop.torch_field``
wrapping the same PyTorch module.

Two measurements: a batched forward pass, and the 64 x 64 sub-Jacobian of the paper's
differential test (``wgfm.diagnostics.sub_jacobian``; PyTorch: one-hot JVPs with
``torch.func.vmap`` over ``torch.func.jvp`` at one primal per chunk, and with the image repeated
once per tangent, the authors' method, as a further row). Both sides sweep the tangents per
pass (16, 32, all K); the port's default (all K) is every speed-up's denominator, and the
fastest PyTorch row also records its ratio to the port's fastest chunk. PyTorch's threads (JAX's
cores or 1) are chosen on each timed operation: the forward pass for the forward rows, the JVPs
for the sub-Jacobian rows. The sides run interleaved; speed-ups are medians of per-round ratios against the port's
default configuration. The port's field takes ``(H, W, C)``; it is wrapped to ``(C, H, W)`` so
every implementation differentiates the same coordinates. Agreement is recorded as the largest
difference relative to the largest entry.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from wgfm.interop import DDPM_CIFAR10_32

from . import _compare as C
from ._harness import block, interleaved, ratio_stats, side_rows, write_results

BENCH = "diffusers_unet"
CIFAR_UNET: dict[str, Any] = DDPM_CIFAR10_32
TINY_UNET = dict(
    CIFAR_UNET,
    block_out_channels=[16, 32],
    down_block_types=["DownBlock2D", "AttnDownBlock2D"],
    up_block_types=["AttnUpBlock2D", "UpBlock2D"],
    layers_per_block=1,
    norm_num_groups=4,
    sample_size=8,
)
CHUNKS = (16, 32)  # tangents per pass swept on both sides, besides all K at once
T = 0.5  # wgfm time; diffusers timestep 0.5 K - 1 = 499


def _unet(torch, config: dict):
    from diffusers.models.unets.unet_2d import UNet2DModel

    torch.manual_seed(0)
    return UNet2DModel(**config).eval()


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
    from wgfm.interop import diffusers_unet_fn, load_diffusers

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
    fn = diffusers_unet_fn(unet)
    xs = rng.standard_normal((n_fwd, c, size, size)).astype(np.float32)
    rows = _forward_rows(torch, port, fn, f"{case}, forward, batch {n_fwd}", xs, repeats, n_params)
    xs = rng.standard_normal((n_img, c, size, size)).astype(np.float32)
    d = c * size * size
    idxs = np.stack([rng.choice(d, k, replace=False) for _ in range(n_img)]).astype(np.int32)
    scase = f"{case}, {k}x{k} sub-Jacobian, {n_img} image(s)"
    return rows + _subjacobian_rows(torch, port, fn, scase, xs, idxs, repeats)


def _forward_rows(torch, port, fn, case: str, xs, repeats: int, n_params: int) -> list[dict]:
    """The forward pass on the batch ``xs`` (NCHW): the port (jit, vmap) against diffusers in
    PyTorch (``no_grad``; its threads chosen on it), interleaved."""
    n_fwd = len(xs)
    fwd = jax.jit(jax.vmap(port, in_axes=(0, None)))
    x_hwc = jnp.asarray(xs.transpose(0, 2, 3, 1))
    t0 = time.perf_counter()
    fwd_c = fwd.lower(x_hwc, jnp.float32(T)).compile()
    fwd_compile = time.perf_counter() - t0
    ref = np.asarray(fwd_c(x_hwc, jnp.float32(T))).transpose(0, 3, 1, 2)
    xt, tt = torch.from_numpy(xs), torch.full((n_fwd,), T)

    def torch_fwd():
        with torch.no_grad():
            return fn(xt, tt)

    threads, tried = C.best_threads(torch, torch_fwd)
    port_name, torch_name = "wgfm flax port (jit, vmap)", "diffusers PyTorch (no_grad)"
    got = torch_fwd().numpy()
    times = interleaved(
        {port_name: lambda: block(fwd_c(x_hwc, jnp.float32(T))), torch_name: torch_fwd}, repeats
    )
    extras = {
        port_name: {"params": n_params},
        torch_name: C.threads_extra(threads, tried)
        | {"rel_diff_vs_wgfm": _rel(got, ref)}
        | _speedups(times[torch_name], times[port_name]),
    }
    return side_rows(BENCH, case, times, repeats, extras, {port_name: fwd_compile})


def _subjacobian_rows(torch, port, fn, scase: str, xs, idxs, repeats: int) -> list[dict]:
    """The ``K x K`` sub-Jacobians at ``xs`` (NCHW) on the coordinates ``idxs``: the port at
    each chunk of tangents and through ``torch_field``, against PyTorch's ``vmap(jvp)`` at each
    chunk and the authors' repeated image, every side interleaved."""
    from wgfm.diagnostics import sub_jacobian
    from wgfm.interop import torch_field

    k = idxs.shape[1]
    args = (jnp.asarray(xs), jnp.asarray(idxs))
    vals: dict[str, np.ndarray] = {}
    chw = lambda x, t: jnp.transpose(port(jnp.transpose(x, (1, 2, 0)), t), (2, 0, 1))  # noqa: E731

    def subjac(field, chunk):
        one = lambda xi: sub_jacobian(field, xi[0], T, xi[1], chunk_size=chunk)  # noqa: E731
        return jax.jit(lambda a, b: jax.lax.map(one, (a, b)))

    fns, compile_s = {}, {}
    # sub_jacobian's default (all K tangents in one pass) first: every speed-up divides by it.
    # Chunks of 16 (the authors') and 32, and torch_field, are extra rows.
    chunks = [c for c in CHUNKS if c < k]
    wgfm_sides: list[tuple[Any, int | None, str]] = [
        (chw, None, f"wgfm flax port, sub_jacobian (default: all {k} tangents at once)")
    ]
    wgfm_sides += [(chw, c, f"wgfm flax port, sub_jacobian (chunks of {c})") for c in chunks]
    wgfm_sides.append(
        (torch_field(fn, chunk_size=16), None, "wgfm torch_field (callback), sub_jacobian")
    )
    for field, chunk, name in wgfm_sides:
        t0 = time.perf_counter()
        compiled = subjac(field, chunk).lower(*args).compile()
        compile_s[name] = time.perf_counter() - t0
        vals[name] = np.asarray(compiled(*args))
        fns[name] = lambda c=compiled: block(c(*args))
    default = next(iter(fns))
    ports = [name for _, _, name in wgfm_sides if "flax port" in name]
    targs = (torch.from_numpy(xs), torch.from_numpy(idxs.astype(np.int64)))
    # PyTorch's fastest formulation: vmap over jvp, one primal pass per chunk of tangents, the
    # chunk swept (all K the last); the authors' method (the image repeated per tangent) a row.
    peers = {
        f"diffusers PyTorch, torch.func vmap(jvp), one primal per {c} tangents": (c, True)
        for c in [*chunks, k]
    }
    authors = min(16, k)
    peers[
        f"diffusers PyTorch, one-hot JVPs, image repeated per tangent, chunks of {authors} "
        "(authors' method)"
    ] = (authors, False)
    # Threads chosen on the JVPs themselves (all K tangents per pass), a warm-up and one timed
    # call at each count: a call of the full U-Net's sub-Jacobian takes seconds.
    jvp_threads, jvp_tried = C.best_threads(
        torch,
        lambda: C.torch_subjac(torch, fn, *targs, T, chunk=k, vmap_tangents=True),
        calls=1,
    )
    for name, (chunk, vm) in peers.items():
        call = lambda c=chunk, vm=vm: C.torch_subjac(  # noqa: E731
            torch, fn, *targs, T, chunk=c, vmap_tangents=vm
        )
        vals[name] = call().numpy()  # warm-up (and the value compared)
        fns[name] = call
    times = interleaved(fns, repeats)
    meds = {n: float(np.median(ts)) for n, ts in times.items()}
    fastest = min(peers, key=meds.__getitem__)
    fastest_port = min(ports, key=meds.__getitem__)
    ref = vals[default]
    extras = {}
    for name, ts in times.items():
        ex: dict = {} if name == default else {"rel_diff_vs_wgfm": _rel(vals[name], ref)}
        if name != default:
            ex |= _speedups(ts, times[default])
        if name in ports:
            ex["fastest_port"] = name == fastest_port
        if name in peers:
            ex |= C.threads_extra(jvp_threads, jvp_tried) | {
                "fastest_peer": name == fastest,
                "authors_method": not peers[name][1],
            }
        if name == fastest:  # each side at its fastest chunk
            r = ratio_stats(ts, times[fastest_port])
            ex |= {f"fastest_vs_fastest_{key}": v for key, v in r.items()}
        extras[name] = ex
    return side_rows(BENCH, scase, times, repeats, extras, compile_s)


def _speedups(slow, fast) -> dict:
    """``wgfm_default_speedup`` (median of per-round ratios) and its spread."""
    return {f"wgfm_default_{k}": v for k, v in ratio_stats(slow, fast).items()}


if __name__ == "__main__":
    import sys

    reps = int(sys.argv[sys.argv.index("--repeats") + 1]) if "--repeats" in sys.argv else None
    rows = run(quick="--quick" in sys.argv, tiny="--tiny" in sys.argv, repeats=reps)
    print(json.dumps(rows, indent=1))
    write_results(rows, Path("results/bench"), name=BENCH)
