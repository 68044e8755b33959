"""Exact Jacobian asymmetry ``||J - J^T||_F / ||J||_F`` of an MLP field, batch of samples:
``wgfm`` (jit + vmap of ``diagnostics.jacobian``) vs ``torch.func`` (``vmap(jacfwd)``) vs a
per-coordinate autograd loop (one backward pass per output coordinate, the authors' method).

Same weights and inputs in both frameworks (float32). Achieved FLOP rates are reported as a
fraction of a float32 matmul peak measured in the same process.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from . import _compare as C
from ._harness import block, interleaved, ratio_stats, record, write_results

BENCH = "jacobian_asymmetry"
WIDTH, DEPTH = 256, 3


CHUNK = 64  # samples per pass in the chunked variants (both frameworks)


def wgfm_asymmetry_fn(field, t, batch_size: int | None = None, **jac_kwargs):
    """Batched exact asymmetry ratio with wgfm's public diagnostics: one ``vmap`` over the
    batch, or ``jax.lax.map(batch_size=...)`` so each pass's tangents (batch x D x width
    floats per layer) stay in cache (D = 64, batch 512: 33 MB per layer at once)."""
    from wgfm.diagnostics import asymmetry, jacobian

    one = lambda x: asymmetry(jacobian(field, x, t, **jac_kwargs)).ratio  # noqa: E731
    if batch_size is None:
        return jax.jit(jax.vmap(one))
    return jax.jit(lambda xs: jax.lax.map(one, xs, batch_size=batch_size))


def plain_jax_asymmetry_fn(field, t):
    """The same with a bare ``jax.jacfwd`` (no checks): what wgfm's wrapper costs."""

    def one(x):
        jac = jax.jacfwd(lambda y: field(y, t))(x)
        return jnp.linalg.norm(jac - jac.T) / jnp.linalg.norm(jac)

    return jax.jit(jax.vmap(one))


def torch_impls(torch, model, t: float):
    """``(torch.func, torch.func chunked, per-coordinate loop)`` asymmetry functions of a
    ``(B, D)`` tensor."""
    from torch.func import jacfwd, vmap

    def f(x):  # one sample
        return model(torch.cat([x, x.new_full((1,), t)]))

    def ratio(jac):
        return torch.linalg.matrix_norm(jac - jac.transpose(-1, -2)) / torch.linalg.matrix_norm(jac)

    def func_asym(x):
        with torch.no_grad():
            return ratio(vmap(jacfwd(f))(x))

    def func_chunked(x):
        with torch.no_grad():
            return ratio(vmap(jacfwd(f), chunk_size=CHUNK)(x))

    def loop_asym(x):
        x = x.detach().requires_grad_(True)
        y = model(torch.cat([x, x.new_full((x.shape[0], 1), t)], dim=1))
        rows = [
            torch.autograd.grad(y[:, i].sum(), x, retain_graph=i < x.shape[1] - 1)[0]
            for i in range(x.shape[1])
        ]
        return ratio(torch.stack(rows, dim=1)).detach()

    return func_asym, func_chunked, loop_asym


def run(quick: bool = False, *, tiny: bool = False) -> list[dict]:
    dims = [2, 8] if tiny else ([2, 64] if quick else [2, 16, 64, 256])
    batch = 16 if tiny else (128 if quick else 512)
    repeats = 2 if tiny else 5
    torch = C.torch_or_none(BENCH)
    peak = C.run_peak()
    # The run's shared peak (the denominator of every fraction of peak), recorded here once.
    rows = [
        record(
            BENCH,
            "matmul peak",
            "float32",
            compile_s=None,
            median_s=0.0,
            repeats=C.PEAK_REPEATS,
            **peak,
        )
    ]
    t = 0.3
    for dim in dims:
        params = C.mlp_params(dim, WIDTH, DEPTH)
        x = np.random.default_rng(1).standard_normal((batch, dim)).astype(np.float32)
        flops = batch * (dim + 1) * C.mlp_flops(dim, WIDTH, DEPTH)  # primal + D tangents
        case = f"D={dim}, B={batch}"

        def extra(s, ref=None, val=None, flops=flops):
            gf = flops / s / 1e9
            out = {"gflops": gf, "peak_frac": gf / peak["peak_gflops"]}
            if ref is not None:
                out["max_abs_diff_vs_wgfm"] = float(np.max(np.abs(np.asarray(val) - ref)))
            return out

        xj = jnp.asarray(x)
        fns, compile_s, vals = {}, {}, {}
        variants = [(None, "default: vmap of jacobian", {})]
        variants += [(CHUNK, f"{CHUNK} samples per pass", {})] if batch > CHUNK else []
        # All D tangents in one pass: what the default did before it chose a chunk itself.
        variants += [(None, "vmap, chunk_size=None", {"chunk_size": None})]
        for bs, how, kw in variants:
            fn = wgfm_asymmetry_fn(C.mlp_jax(params), jnp.float32(t), bs, **kw)
            name = f"wgfm jacobian + asymmetry ({how})"
            t0 = time.perf_counter()
            compiled = fn.lower(xj).compile()
            compile_s[name] = time.perf_counter() - t0
            vals[name] = np.asarray(compiled(xj))
            fns[name] = lambda c=compiled, xj=xj: block(c(xj))
        default = next(iter(fns))
        ref = vals[default]
        plain = plain_jax_asymmetry_fn(C.mlp_jax(params), jnp.float32(t))
        vals["bare jax vmap(jacfwd)"] = np.asarray(plain(xj))
        fns["bare jax vmap(jacfwd)"] = lambda plain=plain, xj=xj: block(plain(xj))
        if torch is not None:
            model = C.mlp_torch(torch, params)
            xt = torch.from_numpy(x)
            names = (
                "torch.func vmap(jacfwd)",
                f"torch.func vmap(jacfwd, chunk_size={CHUNK})",
                "torch per-coordinate loop",
            )
            for name, f in zip(names, torch_impls(torch, model, t), strict=True):
                for _ in range(2):  # warm-up
                    vals[name] = f(xt).numpy()
                fns[name] = lambda f=f, xt=xt: f(xt)
        times = interleaved(fns, repeats)
        for name, ts in times.items():
            m = float(np.median(ts))
            ex = extra(m, None if name == default else ref, vals[name])
            if not name.startswith("wgfm"):
                ex |= {f"wgfm_default_{k}": v for k, v in ratio_stats(ts, times[default]).items()}
            rows.append(
                record(
                    BENCH,
                    case,
                    name,
                    compile_s=compile_s.get(name),
                    median_s=m,
                    repeats=repeats,
                    **ex,
                )
            )
    return rows


if __name__ == "__main__":
    write_results(run(), Path("results/bench"), name=BENCH)
