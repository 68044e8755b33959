"""Likelihood against ``flow_matching``'s ``ODESolver.compute_likelihood``: wgfm
``log_likelihood`` with the exact trace and with Hutchinson (one Rademacher probe, the estimator
and variance of ``exact_divergence=False``) vs ``compute_likelihood(exact_divergence=True /
False)``, on the same MLP velocity (width 256, 3 SiLU layers; identical float32 weights), the
same data and equal ``rtol = atol``, standard normal prior at ``t = 1``.

flow_matching runs time from noise (0) to data (1); wgfm from data (``t_start = 0``) to the
prior (``t_end = 1``). Its velocity ``u(x, t) = -v(x, 1 - t)`` is the same ODE reversed, so both
compute the same ``log p(x)``. The sides run interleaved in one process; the speed-up is the
median of per-round ratios with its spread. ``agree``: exact results within ``AGREE`` (relative),
Hutchinson means within 5 standard errors of the exact mean. The Hutchinson rows' std and
agreement pool ``DRAWS`` probe draws per point (the timed call's and further ones): from one
draw of a few points (n = 2 at D = 784) the std varies between draws by an order of magnitude,
and at n = 64 by about 15%, more than the two sides differ.
"""

from __future__ import annotations

import math
from pathlib import Path

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

from wgfm.processes import VP
from wgfm.transport import log_likelihood

from . import _compare as C
from ._harness import block, interleaved, ratio_stats, side_rows, time_call, write_results

BENCH = "peer_likelihood"
TOL = 1e-5
AGREE = 1e-3
DRAWS = 16  # probe draws per point behind each Hutchinson row's std and agreement


def _normal_logpdf(z):
    return -0.5 * jnp.sum(z**2) - 0.5 * z.size * math.log(2 * math.pi)


def wgfm_sides(field, x, dim: int, draw: int = 0) -> dict:
    """wgfm's sides; ``draw`` picks the Hutchinson probes (the timed calls use draw 0)."""

    def solve(num_probes=None, solver=None):
        return log_likelihood(
            field,
            VP(),
            x,
            num_probes=num_probes,
            key=jax.random.fold_in(jax.random.key(dim), draw),
            solver=solver,
            rtol=TOL,
            atol=TOL,
            t_start=0.0,
            t_end=1.0,
            prior_log_density=_normal_logpdf,
        )

    return {
        "wgfm log_likelihood exact (Dopri5, default)": lambda: solve(),
        "wgfm log_likelihood exact (Tsit5)": lambda: solve(solver=diffrax.Tsit5()),
        "wgfm log_likelihood Hutchinson K=1": lambda: solve(num_probes=1),
    }


def fm_sides(torch, params, x: np.ndarray, count: dict, exact: bool = True) -> dict:
    try:
        from flow_matching.solver import ODESolver
        from flow_matching.utils import ModelWrapper
    except ImportError:
        return {}
    net = C.mlp_torch(torch, params)
    xt, d = torch.from_numpy(np.array(x)), x.shape[1]

    class Reversed(ModelWrapper):  # u(x, t) = -v(x, 1 - t)
        def forward(self, x, t, **extras):
            count["n"] += 1
            s = (1.0 - t).reshape(1, 1).expand(x.shape[0], 1)
            return -self.model(torch.cat([x, s], 1))

    solver = ODESolver(velocity_model=Reversed(net))

    def log_p0(z):
        return -0.5 * (z**2).sum(1) - 0.5 * d * math.log(2 * math.pi)

    def side(exact: bool):
        return lambda: solver.compute_likelihood(
            x_1=xt,
            log_p0=log_p0,
            step_size=None,
            method="dopri5",
            atol=TOL,
            rtol=TOL,
            time_grid=torch.tensor([1.0, 0.0]),
            exact_divergence=exact,
        )[1].detach()

    out = {"flow_matching compute_likelihood exact_divergence=False": side(False)}
    if exact:
        out["flow_matching compute_likelihood exact_divergence=True"] = side(True)
    return out


def run_case(
    dim: int, n: int, repeats: int, torch, fm_exact: bool = True, draws: int = DRAWS
) -> list[dict]:
    params = C.mlp_params(dim)
    field = C.mlp_jax(params)
    x = np.random.default_rng(dim + n).standard_normal((n, dim)).astype(np.float32)
    case = f"D={dim}, n={n}, rtol=atol={TOL:g}"
    ws = wgfm_sides(field, jnp.asarray(x), dim)
    compile_s, outs, nfe = {}, {}, {}
    for name, fn in ws.items():
        first, med = time_call(lambda fn=fn: block(fn().log_likelihood), repeats=1, warmup=0)
        compile_s[name] = max(first - med, 0.0)
        res = fn()
        outs[name] = np.asarray(res.log_likelihood)
        nfe[name] = int(np.max(np.asarray(res.stats.nfe)))
    count = {"n": 0}
    peers = {} if torch is None else fm_sides(torch, params, x, count, fm_exact)
    threads: dict = {}
    hutch_peer = "flow_matching compute_likelihood exact_divergence=False"
    if hutch_peer in peers:  # PyTorch's threads chosen on a timed solve (the exact one is slow)
        threads = C.threads_extra(*C.best_threads(torch, peers[hutch_peer]))
    for name, fn in peers.items():
        count["n"] = 0
        outs[name] = np.asarray(fn())  # also the warm-up
        nfe[name] = count["n"]
    fns = {k: (lambda fn=fn: block(fn().log_likelihood)) for k, fn in ws.items()} | peers
    times = interleaved(fns, repeats)
    exact = outs["wgfm log_likelihood exact (Dopri5, default)"]
    scale = 1.0 + float(np.max(np.abs(exact)))
    more = _hutchinson_draws(field, x, dim, peers, reps=draws - 1)
    extras = {}
    for name in fns:
        hutch = "Hutchinson" in name or "False" in name
        resid = outs[name] - exact
        extra = {"nfe": nfe[name]} if name in nfe else {}
        if hutch:  # same estimator and probe law on both sides, so the same variance
            # Over `draws` probe draws per point: one draw of n points gives a std that differs
            # between draws by more than the two sides differ (at n = 2 by 10x).
            pooled = (np.stack([outs[name], *more[name]]) - exact).ravel()
            std = float(np.std(pooled))
            se = std / math.sqrt(pooled.size)
            extra |= {
                "hutchinson_std": std,
                "hutchinson_std_se": std / math.sqrt(2 * (pooled.size - 1)),
                "hutchinson_residuals": int(pooled.size),
                "agree": abs(float(np.mean(pooled))) <= 5 * se + AGREE * scale,
            }
        else:
            extra |= {
                "max_abs_diff_vs_wgfm": float(np.max(np.abs(resid))),
                "agree": float(np.max(np.abs(resid))) <= AGREE * scale,
            }
        if name in peers:
            extra |= threads
            base = "wgfm log_likelihood Hutchinson K=1" if hutch else next(iter(ws))
            extra |= ratio_stats(times[name], times[base])
            if not hutch:
                alt = ratio_stats(times[name], times["wgfm log_likelihood exact (Tsit5)"])
                extra |= {f"tsit5_{k}": v for k, v in alt.items()}
        extras[name] = extra
    return side_rows(BENCH, case, times, repeats, extras, compile_s)


def _hutchinson_draws(field, x, dim: int, peers: dict, reps: int) -> dict:
    """``reps`` further Hutchinson estimates at the same points beyond the timed call's:
    wgfm's with other keys, flow_matching's with fresh probes (it draws them from PyTorch's
    generator at each call)."""
    name = "wgfm log_likelihood Hutchinson K=1"
    out = {
        name: [
            np.asarray(wgfm_sides(field, jnp.asarray(x), dim, r + 1)[name]().log_likelihood)
            for r in range(reps)
        ]
    }
    for peer, fn in peers.items():
        if "False" in peer:
            out[peer] = [np.asarray(fn()) for _ in range(reps)]
    return out


def run(quick: bool = False, *, tiny: bool = False) -> list[dict]:
    torch = C.torch_or_none(BENCH)
    if tiny:
        cases, repeats = [(2, 16)], 2
    elif quick:
        cases, repeats = [(2, 1_000), (64, 64), (784, 2)], 3
    else:
        cases, repeats = [(2, 1_000), (64, 256), (784, 16)], 5
    # flow_matching's exact divergence at D = 784 (784 backward passes per NFE) takes minutes
    # per solve here: full runs only.
    draws = 2 if tiny else DRAWS
    return [
        r for d, n in cases for r in run_case(d, n, repeats, torch, not (quick and d > 256), draws)
    ]


if __name__ == "__main__":
    write_results(run(), Path("results/bench"), name=BENCH)
