"""Conservativity diagnostics on an MLP field: compile time apart from steady state.

Field: plain-JAX MLP ``[x, t] -> v`` (width 256, 3 hidden layers, SiLU). Cases:
exact Jacobian + asymmetry at D in {2, 16, 64, 256} (batch 512); 64x64 sub-Jacobian, probe
asymmetry (16 probes: 16 JVPs + 16 VJPs) and probe vs exact divergence at D = 784 and 3072.
Run ``python -m benchmarks.bench_diagnostics [--quick]``; results go to ``results/bench/``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp

from wgfm.diagnostics.jacobian import (
    asymmetry,
    divergence,
    jacobian,
    make_probes,
    probe_asymmetry,
    probe_divergence,
    sub_jacobian,
)

from ._compare import mlp_jax
from ._harness import record, time_jitted, write_results

BENCH = "diagnostics"
WIDTH, DEPTH = 256, 3


def mlp_field(dim: int, key):
    """Random MLP velocity field ``(x (dim,), t) -> (dim,)`` in plain JAX (float32)."""
    sizes = [dim + 1] + [WIDTH] * DEPTH + [dim]
    keys = jax.random.split(key, len(sizes) - 1)
    params = [
        (jax.random.normal(k, (a, b), jnp.float32) / jnp.sqrt(a), jnp.zeros(b, jnp.float32))
        for k, a, b in zip(keys, sizes[:-1], sizes[1:], strict=True)
    ]
    return mlp_jax(params)


def _row(case, impl, fn, args, repeats, batch, **extra):
    compile_s, med = time_jitted(fn, *args, repeats=repeats)
    return record(
        BENCH,
        case,
        impl,
        compile_s=compile_s,
        median_s=med,
        repeats=repeats,
        samples_per_s=batch / med,
        **extra,
    )


def run(quick: bool = False, *, tiny: bool = False) -> list[dict]:
    repeats = 1 if tiny else 3 if quick else 5
    key = jax.random.key(0)
    t = jnp.float32(0.3)
    rows = []
    batch = 8 if tiny else 64 if quick else 512
    # The smoke test: one dimension per loop (each is the same code on another program).
    for dim in [2] if tiny else [2, 16, 64] if quick else [2, 16, 64, 256]:
        f = mlp_field(dim, key)
        xs = jax.random.normal(key, (batch, dim), jnp.float32)
        fn = jax.jit(jax.vmap(lambda x, f=f: asymmetry(jacobian(f, x, t)).ratio))
        rows.append(_row(f"D={dim}, B={batch}", "jacobian+asymmetry", fn, (xs,), repeats, batch))

    big_batch = 2 if tiny else 8 if quick else 64
    for dim in [128] if tiny else [784, 3072]:
        f = mlp_field(dim, key)
        xs = jax.random.normal(key, (big_batch, dim), jnp.float32)
        idx = jax.vmap(lambda k, d=dim: jax.random.choice(k, d, (64,), replace=False))(
            jax.random.split(key, big_batch)
        )
        case = f"D={dim}, B={big_batch}"
        sub = jax.jit(jax.vmap(lambda x, i, f=f: asymmetry(sub_jacobian(f, x, t, i)).ratio))
        rows.append(_row(case, "sub_jacobian 64x64+asymmetry", sub, (xs, idx), repeats, big_batch))
        keys = jax.random.split(key, big_batch)
        pa = jax.jit(
            jax.vmap(lambda x, k, f=f: probe_asymmetry(f, x, t, key=k, num_probes=16).stats.ratio)
        )
        rows.append(_row(case, "probe_asymmetry K=16", pa, (xs, keys), repeats, big_batch))
        probes = make_probes(key, 16, (dim,), dtype=jnp.float32)
        pd = jax.jit(jax.vmap(lambda x, f=f, p=probes: probe_divergence(f, x, t, p)))
        rows.append(_row(case, "probe_divergence K=16", pd, (xs,), repeats, big_batch))
        ed = jax.jit(jax.vmap(lambda x, f=f: divergence(f, x, t, chunk_size=256)))
        rows.append(_row(case, "exact divergence (chunk 256)", ed, (xs,), repeats, big_batch))
    return rows


if __name__ == "__main__":
    quick = "--quick" in sys.argv
    out = write_results(
        run(quick=quick), Path("results/bench"), "diagnostics_quick" if quick else "diagnostics"
    )
    print(out.read_text())
