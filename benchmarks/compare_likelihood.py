"""Likelihood by the instantaneous change of variables with the exact Gaussian-mixture velocity:
``wgfm.transport.log_likelihood`` with the exact trace vs Hutchinson (K = 1, 4, 16) vs a
per-coordinate loop, error against the closed-form ``log p_{t_min}`` of the mixture and time.

The per-coordinate loop is the method of the authors' and most peers' PyTorch code
(``for i in range(D): grad(v[:, i].sum(), x)[:, i]`` with the graph retained), written here in
JAX: one VJP per coordinate in a ``lax.fori_loop`` after a single forward pass, inside the same
diffrax solve (Dopri5, wgfm's default, PID, one step sequence for the batch) so only the
divergence differs. Every side runs interleaved with the others; speed-ups are medians of
per-round ratios against ``log_likelihood``'s default (exact trace, joint steps).
"""

from __future__ import annotations

import math
from pathlib import Path

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from scipy.integrate import solve_ivp

from wgfm.processes import VP
from wgfm.transport import log_likelihood

from . import _compare as C
from ._harness import block, ratio_stats, side_rows, warm_interleaved, write_results

BENCH = "likelihood"
TOL = 1e-5


@eqx.filter_jit
def loop_log_likelihood(field, process, prior, x, rtol, atol):
    """Same ODE as ``log_likelihood(per_sample=False)``, divergence by a per-coordinate loop."""
    d = x.shape[1]

    def vf(t, y, args):
        xs, _ = y
        vs, vjp = jax.vjp(lambda z: jax.vmap(field, in_axes=(0, None))(z, t), xs)

        def body(i, acc):  # row i of every sample's Jacobian, keep its diagonal entry
            cot = jnp.zeros_like(xs).at[:, i].set(1.0)
            return acc + vjp(cot)[0][:, i]

        return vs, jax.lax.fori_loop(0, d, body, jnp.zeros(xs.shape[0], xs.dtype))

    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(vf),
        diffrax.Dopri5(),
        process.t_min,
        process.t_max,
        None,
        (x, jnp.zeros(x.shape[0], x.dtype)),
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        max_steps=4096,
    )
    assert sol.ys is not None
    latents, delta = sol.ys[0][-1], sol.ys[1][-1]
    return jax.vmap(prior)(latents) + delta, sol.stats["num_steps"]


# ---------------------------------------------------------------------------------------------
# The peers' method: PyTorch autograd, one backward pass per coordinate, inside SciPy's RK45 on
# the host (score_sde's likelihood driver, with the per-coordinate divergence of the authors'
# code in place of Hutchinson's estimate).


def vp_coefficients_host(process: VP, t: float) -> tuple[float, float, float, float]:
    """``(alpha, sigma, a, b)`` of the linear VP at ``t`` in Python floats (``v = a x + b s``)."""
    bmin, bmax = float(process.beta_min), float(process.beta_max)
    big_b = bmin * t + 0.5 * (bmax - bmin) * t * t
    beta = bmin + (bmax - bmin) * t
    return math.exp(-0.5 * big_b), math.sqrt(-math.expm1(-big_b)), -0.5 * beta, -0.5 * beta


def torch_mixture_velocity(torch, mix, process: VP):
    """``gmm.velocity_field`` in PyTorch (float64): ``(x (n, D), t float) -> (n, D)``."""
    w = torch.from_numpy(np.array(mix.weights, np.float64))
    mu = torch.from_numpy(np.array(mix.means, np.float64))
    cov = torch.from_numpy(np.array(mix.covs, np.float64))
    eye = torch.eye(mu.shape[1], dtype=torch.float64)

    def velocity(x, t: float):
        al, sg, a, b = vp_coefficients_host(process, t)
        chol = torch.linalg.cholesky(al**2 * cov + sg**2 * eye)
        prec = torch.cholesky_inverse(chol)
        logdet = 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
        diff = x[:, None, :] - al * mu[None]  # (n, K, D)
        pd = torch.einsum("kij,nkj->nki", prec, diff)
        logits = torch.log(w) - 0.5 * ((diff * pd).sum(-1) + logdet)
        score = -(torch.softmax(logits, dim=1)[..., None] * pd).sum(1)
        return a * x + b * score

    return velocity


def loop_divergence(torch, velocity, xs, t: float):
    """``(v, div v)`` at ``xs (n, D)``: ``D`` autograd backward passes (the peers' code)."""
    xs = xs.requires_grad_(True)
    v = velocity(xs, t)
    div = torch.zeros(xs.shape[0], dtype=torch.float64)
    d = xs.shape[1]
    for i in range(d):
        (g,) = torch.autograd.grad(v[:, i].sum(), xs, retain_graph=i < d - 1)
        div += g[:, i]
    return v.detach(), div


def func_divergence(torch, velocity, xs, t: float):
    """``(v, div v)`` at ``xs (n, D)``: the trace of ``torch.func.vmap(jacfwd)`` per sample
    (PyTorch's batched Jacobian: ``D`` tangents in one forward-mode pass)."""
    from torch.func import jacfwd, vmap

    with torch.no_grad():
        jac = vmap(jacfwd(lambda y: velocity(y[None], t)[0]))(xs)
        return velocity(xs, t), torch.diagonal(jac, dim1=-2, dim2=-1).sum(-1)


def torch_loop_log_likelihood(
    torch, velocity, prior, x: np.ndarray, t0: float, t1: float, divergence=loop_divergence
):
    """``log p(x)`` by SciPy RK45 (``rtol = atol = TOL``) over ``[x, delta]``, the divergence
    by ``divergence`` (:func:`loop_divergence`: ``D`` autograd backward passes per evaluation,
    or :func:`func_divergence`). Returns ``(log p, nfe)``."""
    n, d = x.shape

    def rhs(t, y):
        v, div = divergence(torch, velocity, torch.from_numpy(y[: n * d].reshape(n, d)), t)
        return np.concatenate([v.numpy().reshape(-1), div.numpy()])

    y0 = np.concatenate([x.reshape(-1), np.zeros(n)])
    sol = solve_ivp(rhs, (t0, t1), y0, method="RK45", rtol=TOL, atol=TOL)
    latents, delta = sol.y[: n * d, -1].reshape(n, d), sol.y[n * d :, -1]
    return np.asarray(jax.vmap(prior)(jnp.asarray(latents))) + delta, int(sol.nfev)


PEERS = "torch per-coordinate autograd loop in scipy RK45 (peers)"
FUNC = "torch.func vmap(jacfwd) trace in scipy RK45"


def torch_sides(torch, mix, process: VP, field, prior, x: np.ndarray, fns, res, extras) -> None:
    """Add the PyTorch sides to ``fns`` (their results to ``res``, NFE and threads to
    ``extras``): the peers' per-coordinate loop, on which PyTorch's threads are chosen (the
    timed operation), and the divergence by ``torch.func`` (its fastest batched Jacobian)."""
    vel = torch_mixture_velocity(torch, mix, process)
    ref = np.asarray(jax.vmap(field, in_axes=(0, None))(x[:4], 0.3))
    port_diff = float(np.max(np.abs(vel(torch.from_numpy(x[:4]), 0.3).numpy() - ref)))
    t0, t1 = float(process.t_min), float(process.t_max)
    sides = {
        name: lambda div=div: torch_loop_log_likelihood(torch, vel, prior, x, t0, t1, div)
        for name, div in ((PEERS, loop_divergence), (FUNC, func_divergence))
    }
    threads = C.threads_extra(*C.best_threads(torch, sides[PEERS], calls=1))
    for name, solve in sides.items():
        fns[name] = solve
        res[name], nfe = solve()
        extras[name] = {"nfe": nfe, "torch_port_max_diff": port_diff} | threads


def run_case(
    dim: int, n: int, repeats: int, with_loop: bool, probes=(1, 4, 16), both_steppings=True
) -> list[dict]:
    process, key, mix, field, oracle_diff = C.oracle_case(dim)
    t0 = process.t_min
    marg = mix.marginal(process, t0)
    x = marg.sample(n, key=jax.random.fold_in(key, 1))
    oracle = np.asarray(jax.vmap(marg.log_density)(x))
    case = f"D={dim}, n={n}"
    # The exact p_{t_max} as the prior, so that errors measure the solve and the divergence only
    # (N(0, I) differs from p_1 by ~alpha_1^2 |mu|^2, ~0.03 nats at D = 16).
    prior = mix.marginal(process, process.t_max).log_density

    def err(ll):
        e = np.abs(np.asarray(ll) - oracle)
        return {"mean_abs_err": float(e.mean()), "max_abs_err": float(e.max())}

    fns, res, extras = {}, {}, {}
    for name, k in [("exact trace", None)] + [(f"Hutchinson K={k}", k) for k in probes]:
        # Joint steps first: with the exact trace that is log_likelihood's default
        # configuration, which every speed-up divides by.
        for per_sample in (False, True) if k is None and both_steppings else (k is not None,):

            def solve(k=k, per_sample=per_sample):
                return log_likelihood(
                    field,
                    process,
                    x,
                    num_probes=k,
                    key=None if k is None else jax.random.key(7),
                    rtol=TOL,
                    atol=TOL,
                    per_sample=per_sample,
                    prior_log_density=prior,
                )

            label = f"wgfm {name} ({'per-sample' if per_sample else 'joint'} steps)"
            fns[label] = lambda solve=solve: block(solve().log_likelihood)
            r = solve()
            res[label] = r.log_likelihood
            extras[label] = {
                "nfe": int(np.max(np.asarray(r.stats.nfe))),
                "field_vs_gmm_oracle": oracle_diff,
            }
    default = next(iter(fns))
    if with_loop:
        rt, at = jnp.float64(TOL), jnp.float64(TOL)
        label = "per-coordinate VJP loop (joint steps)"
        loop = lambda: loop_log_likelihood(field, process, prior, x, rt, at)  # noqa: E731
        fns[label] = lambda: block(loop())
        ll, steps = loop()
        res[label], extras[label] = ll, {"num_steps": int(steps)}
        torch = C.torch_or_none(BENCH)
        if torch is not None:
            torch_sides(torch, mix, process, field, prior, np.array(x), fns, res, extras)
    compile_s, times = warm_interleaved(fns, repeats)
    peers = [p for p in (PEERS, FUNC) if p in times]
    fastest = C.fastest_of({p: float(np.median(times[p])) for p in peers}, {"torch": peers})
    for label, ts in times.items():
        extras[label] |= err(res[label])
        if not label.startswith("wgfm"):
            extras[label] |= {
                f"wgfm_exact_{k}": v for k, v in ratio_stats(ts, times[default]).items()
            }
        if label in fastest:
            extras[label]["fastest_peer"] = fastest[label]
    # JAX's sides have compile times; the PyTorch ones run eagerly.
    jax_compile_s = {k: v for k, v in compile_s.items() if not k.startswith("torch")}
    return side_rows(BENCH, case, times, repeats, extras, jax_compile_s)


def run(quick: bool = False, *, tiny: bool = False) -> list[dict]:
    probes = (1,) if tiny else (1, 16) if quick else (1, 4, 16)
    if tiny:
        cases, repeats = [(2, 8)], 1
    elif quick:
        cases, repeats = [(2, 64), (64, 16)], 3
    else:
        cases, repeats = [(2, 256), (16, 128), (64, 64), (256, 8)], 2
    with jax.enable_x64(True):
        # The smoke test times the exact trace with joint steps only (per-sample steps are the
        # same call with per_sample=True, which the Hutchinson rows run): one program fewer.
        return [r for d, n in cases for r in run_case(d, n, repeats, True, probes, not tiny)]


if __name__ == "__main__":
    write_results(run(), Path("results/bench"), name=BENCH)
