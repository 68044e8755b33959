"""Probability-flow sampling with the exact Gaussian-mixture velocity: ``wgfm.transport.sample_ode``
(diffrax, jit) vs ``scipy.integrate.solve_ivp`` RK45 with a host callback per evaluation (the
score_sde method), both at ``rtol = atol = 1e-5``, float64, from the same prior draws. The sides
run interleaved; the speed-up is the median of per-round ratios against ``sample_ode``'s default
(Dopri5, joint steps).

Reported: wall time, NFE, time per evaluation against a bare jit-compiled evaluation of the
field on the same batch, and the error of the samples against a reference solve of the same
ODE (Dopri8, ``rtol = atol = 1e-10``).
"""

from __future__ import annotations

from pathlib import Path

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from scipy.integrate import solve_ivp

from wgfm.transport import sample_ode

from . import _compare as C
from ._harness import block, ratio_stats, record, time_call, warm_interleaved, write_results

BENCH = "pf_ode_sampling"
BARE = "bare jit field eval"
TOL = 1e-5


def _errors(samples, ref) -> dict[str, float]:
    err = np.linalg.norm(np.asarray(samples) - ref, axis=1)
    return {"max_err": float(err.max()), "rms_err": float(np.sqrt(np.mean(err**2)))}


def run_case(dim: int, n: int, repeats: int, both_steppings: bool = True) -> list[dict]:
    process, key, mix, field, oracle_diff = C.oracle_case(dim)
    x0 = process.prior_sample((n, dim), key=jax.random.fold_in(key, 1), dtype=jnp.float64)
    t0, t1 = float(process.t_max), float(process.t_min)
    case = f"{n} particles, D={dim}"

    ref = sample_ode(
        field,
        process,
        x0,
        solver=diffrax.Dopri8(),
        rtol=1e-10,
        atol=1e-10,
        per_sample=False,
        max_steps=100_000,
    ).samples
    ref = np.asarray(ref)

    # A bare jit-compiled evaluation of the same field on the same batch.
    bare = eqx.filter_jit(lambda f, x, t: jax.vmap(f, in_axes=(0, None))(x, t))
    tt = jnp.float64(0.5)
    _, eval_s = time_call(lambda: block(bare(field, x0, tt)), repeats=max(repeats, 5))
    bare_extra = {"field_vs_gmm_oracle": oracle_diff}
    rows = [record(BENCH, case, BARE, compile_s=None, median_s=eval_s, repeats=5, **bare_extra)]

    fns, res = {}, {}
    # Joint steps first: sample_ode's default configuration, which every speed-up divides by.
    for per_sample in (False, True) if both_steppings else (False,):

        def solve(per_sample=per_sample):
            return sample_ode(field, process, x0, rtol=TOL, atol=TOL, per_sample=per_sample)

        label = f"wgfm sample_ode, default Dopri5 ({'per-sample' if per_sample else 'joint'} steps)"
        fns[label] = lambda solve=solve: block(solve().samples)
        res[label] = solve()
    default = next(iter(fns))

    vj = jax.jit(jax.vmap(field, in_axes=(0, None)))

    def fun(t, y):
        return np.asarray(vj(y.reshape(n, dim), t)).reshape(-1)

    def scipy_solve():
        return solve_ivp(
            fun, (t0, t1), np.asarray(x0).reshape(-1), method="RK45", rtol=TOL, atol=TOL
        )

    peer = "scipy solve_ivp RK45 (host callback)"
    fns[peer] = scipy_solve
    sol = scipy_solve()
    compile_s, times = warm_interleaved(fns, repeats)
    for label, ts in times.items():
        med = float(np.median(ts))
        if label == peer:
            nfe, samples = int(sol.nfev), sol.y[:, -1].reshape(n, dim)
            ex = {f"wgfm_default_{k}": v for k, v in ratio_stats(ts, times[default]).items()}
        else:
            nfe, samples, ex = int(np.max(np.asarray(res[label].stats.nfe))), res[label].samples, {}
        rows.append(
            record(
                BENCH,
                case,
                label,
                compile_s=None if label == peer else compile_s[label],
                median_s=med,
                repeats=repeats,
                nfe=nfe,
                s_per_eval=med / nfe,
                per_eval_vs_bare=med / nfe / eval_s,
                **_errors(samples, ref),
                **ex,
            )
        )
    return rows


def run(quick: bool = False, *, tiny: bool = False) -> list[dict]:
    if tiny:
        cases, repeats = [(2, 50)], 1
    elif quick:
        cases, repeats = [(2, 2000), (64, 200)], 3
    else:
        cases, repeats = [(2, 10_000), (64, 1000)], 3
    with jax.enable_x64(True):
        return [r for dim, n in cases for r in run_case(dim, n, repeats, not tiny)]


if __name__ == "__main__":
    write_results(run(), Path("results/bench"), name=BENCH)
