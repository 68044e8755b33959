"""Transport benchmarks: probability-flow sampling and likelihood with the oracle velocity,
through the public API only (``wgfm.transport.sample_ode`` / ``log_likelihood``).

Sampling: 10,000 particles in 2D and 1,000 in 64-D at rtol = atol = 1e-5 (per-sample vmap and
joint solves). Likelihood: exact divergence vs Hutchinson with K = 1, 4, 16 probes at
D in {2, 16, 64}. The first call (trace + compile + run) is reported apart from the steady
state. Quick and tiny modes shrink the sizes.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp

from benchmarks._harness import block, record, time_call, write_results
from wgfm import gmm, processes, transport

BENCH = "transport"
TOL = 1e-5


def _mixture(dim: int) -> gmm.GaussianMixture:
    return gmm.ring() if dim == 2 else gmm.random_mixture(dim, 4, key=jax.random.key(0))


def _sampling(dim: int, n: int, per_sample: bool, repeats: int) -> dict:
    process = processes.VP()
    field = gmm.velocity_field(_mixture(dim), process)
    x = process.prior_sample((n, dim), key=jax.random.key(1))

    def solve():
        return transport.sample_ode(field, process, x, rtol=TOL, atol=TOL, per_sample=per_sample)

    first, median = time_call(lambda: block(solve().samples), repeats=repeats)
    res = solve()
    nfe = res.stats.nfe
    return record(
        BENCH,
        f"sample D={dim} n={n}",
        "vmap per-sample" if per_sample else "joint",
        compile_s=max(first - median, 0.0),
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
    key = None if num_probes is None else jax.random.key(3)

    def solve():
        return transport.log_likelihood(
            field, process, x, num_probes=num_probes, key=key, rtol=TOL, atol=TOL
        )

    first, median = time_call(lambda: block(solve().log_likelihood), repeats=repeats)
    res = solve()
    ref = jax.vmap(lambda z: mix.marginal(process, process.t_min).log_density(z))(x)
    return record(
        BENCH,
        f"likelihood D={dim} n={n}",
        "exact" if num_probes is None else f"hutchinson K={num_probes}",
        compile_s=max(first - median, 0.0),
        median_s=median,
        repeats=repeats,
        nfe_mean=float(jnp.mean(res.stats.nfe)),
        abs_err_mean=float(jnp.mean(jnp.abs(res.log_likelihood - ref))),
    )


def run(quick: bool = False, *, tiny: bool = False) -> list[dict]:
    repeats = 1 if tiny else 2 if quick else 3
    if tiny:
        sizes, n_ll, dims, probes = [(2, 32)], 8, (2,), (None, 1)
    elif quick:
        sizes, n_ll, dims, probes = [(2, 1000), (64, 100)], 64, (2, 16, 64), (None, 1, 4, 16)
    else:
        sizes, n_ll, dims, probes = [(2, 10_000), (64, 1_000)], 256, (2, 16, 64), (None, 1, 4, 16)
    rows = [_sampling(d, n, ps, repeats) for d, n in sizes for ps in (True, False)]
    rows += [_likelihood(d, n_ll, k, repeats) for d in dims for k in probes]
    return rows


if __name__ == "__main__":
    import sys

    quick = "--quick" in sys.argv
    path = write_results(run(quick=quick), Path("results/bench"), name=BENCH)
    print(path.read_text())
