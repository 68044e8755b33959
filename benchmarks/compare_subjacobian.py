"""64x64 sub-Jacobian of a small U-Net on images: ``wgfm.diagnostics.sub_jacobian`` (jit, vmap
over images) vs PyTorch one-hot JVPs on identical weights: ``torch.func.vmap`` over ``jvp`` at one
primal per chunk of tangents, per image and with a second ``vmap`` over the images (as wgfm
batches them), chunks of 16 and of all K, eager and ``torch.compile``-d (the fastest of these is
the one the target reads), and the authors' method (the image repeated once per tangent, chunks
of 16) as a further row. PyTorch's thread count (JAX's cores or 1) is chosen on the batched
sub-Jacobian itself and recorded with both times. The sides run interleaved; each
speed-up is the median of per-round ratios against wgfm's default configuration.

The U-Net is defined here in both frameworks (NCHW, torch weight layout, ported from the same
numpy arrays) so that the weights are provably identical: two 3x3 convs, a stride-2 down conv,
a bottleneck, nearest-neighbour upsampling, a skip concatenation and a 3x3 output conv, SiLU,
time added as a per-channel bias. wgfm's flax U-Net has GroupNorm and attention whose exact
torch twins would be more code than the benchmark itself.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from . import _compare as C
from ._harness import block, interleaved, ratio_stats, side_rows, write_results

BENCH = "sub_jacobian_64"
# (name, in, out, stride) of the 3x3 convs; "up" is preceded by a 2x nearest upsample and
# followed by a concat with "c1"'s output.
LAYERS = [
    ("c1", None, "w", 1),
    ("down", "w", "2w", 2),
    ("mid", "2w", "2w", 1),
    ("up", "2w", "w", 1),
    ("out", "2w", None, 1),
]


def unet_params(
    channels: int, width: int, seed: int = 0
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    size = {None: channels, "w": width, "2w": 2 * width}
    out = {}
    for name, cin, cout, _ in LAYERS:
        i, o = size[cin], size[cout]
        w = rng.standard_normal((o, i, 3, 3)) * np.sqrt(2.0 / (9 * i))
        out[name] = (w.astype(np.float32), (0.1 * rng.standard_normal(o)).astype(np.float32))
    out["temb"] = (
        0.5 * rng.standard_normal((2 * width, 1)).astype(np.float32),
        np.zeros(2 * width, np.float32),
    )
    return out


def unet_jax(params):
    """The U-Net as a wgfm field ``(x (C, H, W), t) -> (C, H, W)``. Inside, it runs in NHWC
    with HWIO kernels, XLA:CPU's native convolution layout (NCHW costs ~25% more here); the
    transposes at the ends keep inputs, outputs and Jacobian indices identical to PyTorch's."""
    p = {
        k: (
            jnp.asarray(np.transpose(w, (2, 3, 1, 0))) if k != "temb" else jnp.asarray(w),
            jnp.asarray(b),
        )
        for k, (w, b) in params.items()
    }

    def conv(h, name, stride):
        w, b = p[name]
        y = jax.lax.conv_general_dilated(
            h, w, (stride, stride), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        return y + b

    def field(x, t):
        h = jnp.transpose(x, (1, 2, 0))[None]
        h1 = jax.nn.silu(conv(h, "c1", 1))
        h2 = jax.nn.silu(conv(h1, "down", 2))
        h2 = h2 + p["temb"][0][:, 0] * t
        h3 = jax.nn.silu(conv(h2, "mid", 1))
        up = jnp.repeat(jnp.repeat(h3, 2, axis=1), 2, axis=2)
        h4 = jax.nn.silu(conv(up, "up", 1))
        out = conv(jnp.concatenate([h4, h1], axis=-1), "out", 1)[0]
        return jnp.transpose(out, (2, 0, 1))

    return field


def unet_torch(torch, params):
    """The same U-Net in PyTorch, batched: ``f(x (N, C, H, W), t (N,)) -> (N, C, H, W)``."""
    F = torch.nn.functional
    p = {k: (torch.from_numpy(w), torch.from_numpy(b)) for k, (w, b) in params.items()}

    def conv(h, name, stride):
        w, b = p[name]
        return F.conv2d(h, w, b, stride=stride, padding=1)

    def f(h, t):
        h1 = F.silu(conv(h, "c1", 1))
        h2 = F.silu(conv(h1, "down", 2))
        h2 = h2 + (t[:, None] * p["temb"][0][:, 0])[:, :, None, None]
        h3 = F.silu(conv(h2, "mid", 1))
        h4 = F.silu(conv(F.interpolate(h3, scale_factor=2, mode="nearest"), "up", 1))
        return conv(torch.cat([h4, h1], dim=1), "out", 1)

    return f


def wgfm_subjac_fn(field, t, chunk_size: int | None = None):
    """``(xs, idxs) -> (n, K, K)``: all images and tangents at once (``chunk_size=None``), or
    images one at a time with ``chunk_size`` tangents per pass, as the authors chunk (the
    working set then stays in cache: ~1.8x faster at 32x32, width 32)."""
    from wgfm.diagnostics import sub_jacobian

    if chunk_size is None:
        return jax.jit(jax.vmap(lambda x, i: sub_jacobian(field, x, t, i)))
    one = lambda xi: sub_jacobian(field, xi[0], t, xi[1], chunk_size=chunk_size)  # noqa: E731
    return jax.jit(lambda xs, idxs: jax.lax.map(one, (xs, idxs)))


def run(quick: bool = False, *, tiny: bool = False) -> list[dict]:
    channels, size, width = (3, 8, 4) if tiny else (3, 16, 16) if quick else (3, 32, 32)
    n_img, k = (2, 8) if tiny else (4, 64) if quick else (16, 64)
    repeats = 1 if tiny else 5
    rng = np.random.default_rng(0)
    params = unet_params(channels, width)
    xs = rng.standard_normal((n_img, channels, size, size)).astype(np.float32)
    d = channels * size * size
    idxs = np.stack([rng.choice(d, k, replace=False) for _ in range(n_img)]).astype(np.int32)
    t = 0.5
    case = f"{n_img} images {channels}x{size}x{size}, width {width}, K={k}"
    args = (jnp.asarray(xs), jnp.asarray(idxs))
    fns, compile_s, vals = {}, {}, {}
    # The first is sub_jacobian's default (all tangents at once, vmap over images): every
    # speed-up divides by it; the authors' chunking is an extra row.
    variants = [(None, "default: all at once")]
    variants += [(16, "one image, chunks of 16")] if k > 16 else []
    for chunk, how in variants:
        name = f"wgfm sub_jacobian ({how})"
        t0 = time.perf_counter()
        compiled = wgfm_subjac_fn(unet_jax(params), jnp.float32(t), chunk).lower(*args).compile()
        compile_s[name] = time.perf_counter() - t0
        vals[name] = np.asarray(compiled(*args))
        fns[name] = lambda c=compiled: block(c(*args))
    default = next(iter(fns))
    torch = C.torch_or_none(BENCH)
    peers: list[str] = []
    threads, tried, compile_err = 0, {}, None
    if torch is not None:
        f = unet_torch(torch, params)
        txs, tidx = torch.from_numpy(xs), torch.from_numpy(idxs.astype(np.int64))
        # PyTorch's fastest formulation is torch.func.vmap over jvp at one primal per chunk;
        # which chunk, and whether the images go through a second vmap as wgfm's do, depends
        # on the network, so each is timed and the fastest is the one the target reads.
        chunks = sorted({min(16, k), k})
        sides = [
            (c, True, False, f"torch.func vmap(jvp), one primal per {c} tangents") for c in chunks
        ]
        sides += [
            (c, True, True, f"torch.func vmap(vmap(jvp)) over images, {c} tangents per pass")
            for c in chunks
        ]
        sides += [
            (
                min(16, k),
                False,
                False,
                f"torch one-hot JVPs, image repeated per tangent, chunks of {min(16, k)} "
                "(authors' method)",
            )
        ]
        # Threads chosen on the operation timed: the images batched, all tangents at once.
        threads, tried = C.best_threads(
            torch,
            lambda: C.torch_subjac(
                torch, f, txs, tidx, t, chunk=k, vmap_tangents=True, vmap_images=True
            ),
        )
        for chunk, vm, vi, name in sides:
            call = lambda chunk=chunk, vm=vm, vi=vi: C.torch_subjac(  # noqa: E731
                torch, f, txs, tidx, t, chunk=chunk, vmap_tangents=vm, vmap_images=vi
            )
            vals[name] = call().numpy()  # warm-up (and the value compared)
            fns[name] = call
            peers.append(name)
        if not tiny:  # inductor's build takes longer than the whole smoke test
            name = f"torch.compile of vmap(vmap(jvp)) over images, {k} tangents per pass"
            call, compile_s[name], compile_err = _torch_compiled(torch, f, txs, tidx, t, k)
            if call is not None:
                vals[name] = call().numpy()
                fns[name] = call
                peers.append(name)
    times = interleaved(fns, repeats)
    ref = vals[default]
    meds = {n: float(np.median(ts)) for n, ts in times.items()}
    fastest = min(peers, key=meds.__getitem__) if peers else None
    extras = {}
    for name, ts in times.items():
        ex: dict = {}
        if name != default:
            ex["rel_diff_vs_wgfm"] = float(np.max(np.abs(vals[name] - ref)) / np.max(np.abs(ref)))
        if name in peers:
            ex |= {f"wgfm_default_{k}": v for k, v in ratio_stats(ts, times[default]).items()}
            ex["fastest_peer"] = name == fastest
            ex["authors_method"] = "authors'" in name
            ex |= C.threads_extra(threads, tried)
        if name == default and compile_err is not None:
            ex["torch_compile_error"] = compile_err
        extras[name] = ex
    return side_rows(BENCH, case, times, repeats, extras, compile_s)


def _torch_compiled(torch, f, txs, tidx, t, k):
    """``(call, compile seconds, None)`` for ``torch.compile`` of the batched ``vmap(vmap(jvp))``
    sub-Jacobian, or ``(None, None, error)`` where inductor cannot build it here."""
    fn = torch.compile(
        lambda a, b: C.torch_subjac(
            torch, f, a, b, t, chunk=k, vmap_tangents=True, vmap_images=True
        )
    )
    t0 = time.perf_counter()
    try:
        fn(txs, tidx)
    except Exception as err:  # no C++ toolchain, an op dynamo cannot trace, ...
        print(f"[{BENCH}] torch.compile failed: {type(err).__name__}: {err}"[:300])
        return None, None, f"{type(err).__name__}: {err}"[:300]
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    fn(txs, tidx)
    return (lambda: fn(txs, tidx)), max(first - (time.perf_counter() - t0), 0.0), None


if __name__ == "__main__":
    write_results(run(), Path("results/bench"), name=BENCH)
