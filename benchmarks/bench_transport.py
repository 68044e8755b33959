"""Transport benchmarks: probability-flow sampling and likelihood with the oracle velocity.

Sampling: 10,000 particles in 2D and 1,000 in 64-D at rtol = atol = 1e-5 (per-sample vmap and
joint solves). Likelihood: exact divergence vs Hutchinson with K = 1, 4, 16 probes at
D in {2, 16, 64}. Compile time is reported apart from the steady state (``time_jitted`` on the
compiled core). Quick mode shrinks the sizes.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp

from benchmarks._harness import record, time_jitted, write_results
from wgfm import gmm, processes, transport

BENCH = "transport"


def _mixture(dim: int) -> gmm.GaussianMixture:
    return gmm.ring() if dim == 2 else gmm.random_mixture(dim, 4, key=jax.random.key(0))


def _sampling(dim: int, n: int, per_sample: bool, repeats: int) -> dict:
    process = processes.VP()
    field = gmm.velocity_field(_mixture(dim), process)
    x = process.prior_sample((n, dim), key=jax.random.key(1))
    solver, controller, adjoint, tol = transport._defaults(None, None, None, 1e-5, 1e-5)
    t0, t1 = jnp.asarray(process.t_max), jnp.asarray(process.t_min)
    jitted = jax.jit(
        lambda xx, tl: transport._sample_impl(
            field, xx, t0, t1, None, tl, None, solver, controller, adjoint, 4096, per_sample
        )
    )
    compile_s, median = time_jitted(jitted, x, tol, repeats=repeats)
    res = jitted(x, tol)
    nfe = res.stats.nfe
    return record(
        BENCH,
        f"sample D={dim} n={n}",
        "vmap per-sample" if per_sample else "joint",
        compile_s=compile_s,
        median_s=median,
        repeats=repeats,
        nfe_mean=float(jnp.mean(nfe)),
        nfe_max=int(jnp.max(nfe)),
        converged=bool(jnp.all(res.stats.ok)),
    )


def _likelihood(dim: int, n: int, num_probes: int | None, repeats: int) -> dict:
    process = processes.VP()
    mix = _mixture(dim)
    field = gmm.velocity_field(mix, process)
    x = mix.sample(n, key=jax.random.key(2))
    probes = None
    if num_probes is not None:
        from wgfm.diagnostics.jacobian import make_probes

        keys = jax.random.split(jax.random.key(3), n)
        probes = jax.vmap(lambda k: make_probes(k, num_probes, (dim,), kind="rademacher"))(keys)
    solver, controller, adjoint, tol = transport._defaults(None, None, None, 1e-5, 1e-5)
    t0, t1 = jnp.asarray(process.t_min), jnp.asarray(process.t_max)
    prior = process.prior_log_density
    jitted = jax.jit(
        lambda xx, pp, tl: transport._likelihood_impl(
            field, prior, xx, pp, t0, t1, tl, solver, controller, adjoint, 4096, None, False
        )
    )
    compile_s, median = time_jitted(jitted, x, probes, tol, repeats=repeats)
    res = jitted(x, probes, tol)
    ref = jax.vmap(lambda z: mix.marginal(process, process.t_min).log_density(z))(x)
    return record(
        BENCH,
        f"likelihood D={dim} n={n}",
        "exact" if num_probes is None else f"hutchinson K={num_probes}",
        compile_s=compile_s,
        median_s=median,
        repeats=repeats,
        nfe_mean=float(jnp.mean(res.stats.nfe)),
        abs_err_mean=float(jnp.mean(jnp.abs(res.log_likelihood - ref))),
    )


def run(quick: bool = False) -> list[dict]:
    repeats = 2 if quick else 3
    rows = []
    sizes = [(2, 1000), (64, 100)] if quick else [(2, 10_000), (64, 1_000)]
    for dim, n in sizes:
        for per_sample in (True, False):
            rows.append(_sampling(dim, n, per_sample, repeats))
    n_ll = 64 if quick else 256
    for dim in (2, 16, 64):
        for k in (None, 1, 4, 16):
            rows.append(_likelihood(dim, n_ll, k, repeats))
    return rows


if __name__ == "__main__":
    import sys

    quick = "--quick" in sys.argv
    path = write_results(run(quick=quick), Path("results/bench"), name=BENCH)
    print(path.read_text())
