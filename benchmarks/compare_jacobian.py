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
from ._harness import block, interleaved, ratio_stats, record, side_rows, write_results

BENCH = "jacobian_asymmetry"
WIDTH, DEPTH = 256, 3


CHUNK = 64  # samples per pass in the chunked variants (both frameworks)
FUNC = "torch.func vmap(jacfwd)"


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


def torch_impls(torch, model, t: float, tiny: bool = False) -> dict:
    """``{name: asymmetry function of a (B, D) tensor}``: ``torch.func`` ``vmap(jacfwd)`` (all
    samples at once, in chunks, and under ``torch.compile``) and the per-coordinate loop."""
    from torch.func import jacfwd, vmap

    def f(x):  # one sample
        return model(torch.cat([x, x.new_full((1,), t)]))

    def ratio(jac):
        return torch.linalg.matrix_norm(jac - jac.transpose(-1, -2)) / torch.linalg.matrix_norm(jac)

    def func_asym(x):
        with torch.no_grad():
            return ratio(vmap(jacfwd(f))(x))

    compiled = C.torch_compile(torch, lambda x: ratio(vmap(jacfwd(f))(x)), tiny=tiny)

    def func_compiled(x):
        with torch.no_grad():
            return compiled(x)

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

    return {
        FUNC: func_asym,
        f"torch.func vmap(jacfwd, chunk_size={CHUNK})": func_chunked,
        "torch per-coordinate loop": loop_asym,
        f"torch.compile of {FUNC}": func_compiled,
    }


def torch_sides(torch, params, x: np.ndarray, t: float, tiny: bool):
    """``(fns, values, extras)`` of the PyTorch sides, each warmed up: PyTorch's threads chosen
    on ``torch.func`` ``vmap(jacfwd)`` (the timed operation), the compiled side left out where
    it does not build (its compile seconds in its extras)."""
    model = C.mlp_torch(torch, params)
    xt = torch.from_numpy(x)
    fns, vals, extras = {}, {}, {}
    impls = torch_impls(torch, model, t, tiny)
    threads = C.threads_extra(*C.best_threads(torch, lambda: impls[FUNC](xt)))
    for name, f in impls.items():
        if name.startswith("torch.compile"):
            errors: dict[str, str] = {}
            compile_s = C.compiled_side(BENCH, name, lambda f=f: f(xt), errors)
            if compile_s is None:
                extras[FUNC]["torch_compile_error"] = errors[name]
                continue
            extras[name] = threads | {"torch_compile_s": compile_s}
        else:
            f(xt)  # warm-up
            extras[name] = dict(threads)
        vals[name] = f(xt).numpy()
        fns[name] = lambda f=f: f(xt)
    return fns, vals, extras


def wgfm_sides(params, x: np.ndarray, t: float) -> tuple[dict, dict, dict]:
    """``(fns, compile seconds, values)`` of wgfm's variants (the default first) and of a bare
    ``jax.jacfwd``, each compiled."""
    xj, batch = jnp.asarray(x), x.shape[0]
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
        fns[name] = lambda c=compiled: block(c(xj))
    plain = plain_jax_asymmetry_fn(C.mlp_jax(params), jnp.float32(t))
    vals["bare jax vmap(jacfwd)"] = np.asarray(plain(xj))
    fns["bare jax vmap(jacfwd)"] = lambda: block(plain(xj))
    return fns, compile_s, vals


def run_case(dim: int, batch: int, repeats: int, torch, peak: float, tiny: bool) -> list[dict]:
    t = 0.3
    params = C.mlp_params(dim, WIDTH, DEPTH)
    x = np.random.default_rng(1).standard_normal((batch, dim)).astype(np.float32)
    flops = batch * (dim + 1) * C.mlp_flops(dim, WIDTH, DEPTH)  # primal + D tangents
    fns, compile_s, vals = wgfm_sides(params, x, t)
    default = next(iter(fns))
    peers = {}
    if torch is not None:
        tfns, tvals, peers = torch_sides(torch, params, x, t, tiny)
        fns |= tfns
        vals |= tvals
    times = interleaved(fns, repeats)
    med = {name: float(np.median(ts)) for name, ts in times.items()}
    fastest = C.fastest_of(med, {"torch": list(peers)})
    extras = {}
    for name, ts in times.items():
        gf = flops / med[name] / 1e9
        ex: dict = {"gflops": gf, "peak_frac": gf / peak}
        if name != default:
            ex["max_abs_diff_vs_wgfm"] = float(np.max(np.abs(vals[name] - vals[default])))
        if not name.startswith("wgfm"):
            ex |= {f"wgfm_default_{k}": v for k, v in ratio_stats(ts, times[default]).items()}
        if name in peers:
            compile_s[name] = peers[name].pop("torch_compile_s", None)
            ex |= peers[name] | {"fastest_peer": fastest[name]}
        extras[name] = ex
    return side_rows(BENCH, f"D={dim}, B={batch}", times, repeats, extras, compile_s)


def run(quick: bool = False, *, tiny: bool = False) -> list[dict]:
    # The smoke test: one dimension (another is the same code on another program).
    dims = [2] if tiny else ([2, 64] if quick else [2, 16, 64, 256])
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
    for dim in dims:
        rows += run_case(dim, batch, repeats, torch, peak["peak_gflops"], tiny)
    return rows


if __name__ == "__main__":
    write_results(run(), Path("results/bench"), name=BENCH)
