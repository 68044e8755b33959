"""Probability-flow sampling against the tools flow-matching researchers run:
``wgfm.transport.sample_ode`` vs ``torchdiffeq.odeint(method="dopri5")`` and
``flow_matching``'s ``ODESolver.sample`` (which calls torchdiffeq), on the same MLP velocity
(width 256, 3 SiLU layers, input ``[x, t]``; identical float32 weights), the same prior draws
and equal ``rtol = atol``, integrating from ``t = 1`` to ``t = 0``.

The sides run in one process, interleaved (the order reversed every other round); the speed-up
is the median of the per-round ratios with its spread. Recorded beside it: NFE of every side,
each side's final error against a tight float64 reference solve (Dopri8, 1e-10), the difference
to wgfm's Dopri5 (``agree``: within ``AGREE`` of the samples' scale), wgfm's time per NFE
against a bare jitted field evaluation of the same batch, and that evaluation's FLOP rate as a
fraction of the matmul peak measured in the same run. A work-precision sweep (Dopri5, Tsit5,
Bosh3, PI controllers, torchdiffeq over tolerances) backs the choice of the default solver.
"""

from __future__ import annotations

from pathlib import Path

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

from wgfm import gmm
from wgfm.processes import VP
from wgfm.transport import sample_ode

from . import _compare as C
from ._harness import block, interleaved, ratio_stats, record, time_call, write_results
from ._summary import DEFAULT_SOLVER

BENCH = "peer_sampling"
TOL = 1e-5
AGREE = 1e-3  # relative to 1 + max |x|: float32 solves at tolerance 1e-5 differ by ~1e-5..1e-4
BARE = "bare jit field eval"
SOLVERS = {"Dopri5": diffrax.Dopri5, "Tsit5": diffrax.Tsit5, "Bosh3": diffrax.Bosh3}


def case_inputs(dim: int, n: int) -> tuple[list, np.ndarray, np.ndarray]:
    """``(params, x0, reference)`` of a case: the MLP's weights, the prior draws and the
    float64 reference solve, computed once per ``(dim, n)`` (the timed case and the
    work-precision sweep share them)."""
    if (dim, n) not in _CASES:
        params = C.mlp_params(dim)
        x0 = np.random.default_rng(dim + n).standard_normal((n, dim)).astype(np.float32)
        _CASES[dim, n] = (params, x0, reference(params, x0))
    return _CASES[dim, n]


_CASES: dict[tuple[int, int], tuple[list, np.ndarray, np.ndarray]] = {}


def reference(params, x0: np.ndarray) -> np.ndarray:
    """The same ODE in float64 with Dopri8 at 1e-10."""
    with jax.enable_x64(True):
        p64 = [(w.astype(np.float64), b.astype(np.float64)) for w, b in params]
        out = sample_ode(
            C.mlp_jax(p64),
            VP(),
            jnp.asarray(x0, jnp.float64),
            solver=diffrax.Dopri8(),
            rtol=1e-10,
            atol=1e-10,
            t_start=1.0,
            t_end=0.0,
            max_steps=100_000,
        ).samples
        return np.asarray(out)


COMPILED = ", torch.compile network"  # suffix of the sides whose network is torch.compile-d


def torch_sides(torch, params, x0: np.ndarray, tol: float, wrap=None, label: str = ""):
    """``({name: solve() -> samples}, nfe counter)`` for torchdiffeq and flow_matching, each
    under ``torch.inference_mode`` on one batched network call per evaluation; ``wrap`` (such
    as :func:`_compare.torch_compile`) wraps the network, ``label`` is added to the names."""
    from torchdiffeq import odeint

    net = C.mlp_torch(torch, params)
    net = net if wrap is None else wrap(net)
    xt = torch.from_numpy(np.array(x0))
    grid = torch.tensor([1.0, 0.0])
    count = {"n": 0}

    def vf(t, x):
        count["n"] += 1
        return net(torch.cat([x, t.reshape(1, 1).expand(x.shape[0], 1)], 1))

    def tdq():
        with torch.inference_mode():
            return odeint(vf, xt, grid, method="dopri5", rtol=tol, atol=tol)[-1]

    sides = {f"torchdiffeq odeint dopri5{label}": tdq}
    try:
        from flow_matching.solver import ODESolver
        from flow_matching.utils import ModelWrapper
    except ImportError:
        return sides, count

    class Wrapped(ModelWrapper):
        def forward(self, x, t, **extras):
            return vf(t, x)

    solver = ODESolver(velocity_model=Wrapped(net))

    def fm():
        with torch.inference_mode():
            return solver.sample(
                x_init=xt, step_size=None, method="dopri5", time_grid=grid, atol=tol, rtol=tol
            )

    sides[f"flow_matching ODESolver.sample dopri5{label}"] = fm
    return sides, count


def peer_sides(torch, params, x0: np.ndarray, tiny: bool):
    """Every PyTorch side at ``TOL``: ``(sides, {name: its nfe counter}, extras by name)``.
    PyTorch's threads are chosen on torchdiffeq's eager solve (the timed operation); the sides
    with the network under ``torch.compile`` are added where it builds (compile seconds in
    their extras)."""
    sides, count = torch_sides(torch, params, x0, TOL)
    counts = dict.fromkeys(sides, count)
    threads = C.threads_extra(*C.best_threads(torch, sides["torchdiffeq odeint dopri5"]))
    extras: dict[str, dict] = {name: dict(threads) for name in sides}
    wrap = lambda net: C.torch_compile(torch, net, tiny=tiny)  # noqa: E731
    compiled, ccount = torch_sides(torch, params, x0, TOL, wrap, COMPILED)
    errors: dict[str, str] = {}
    for name, fn in compiled.items():
        compile_s = C.compiled_side(BENCH, name, fn, errors)
        if compile_s is not None:
            sides[name], counts[name] = fn, ccount
            extras[name] = threads | {"torch_compile_s": compile_s}
    for name, err in errors.items():
        extras[name.removesuffix(COMPILED)]["torch_compile_error"] = err
    return sides, counts, extras


def run_case(
    dim: int, n: int, repeats: int, peak: float, torch, solvers=tuple(SOLVERS), tiny=False
) -> list[dict]:
    params, x0, ref = case_inputs(dim, n)
    field = C.mlp_jax(params)
    xj = jnp.asarray(x0)
    scale = 1.0 + float(np.max(np.abs(ref)))
    case = f"D={dim}, n={n}, rtol=atol={TOL:g}"

    def wgfm(solver):
        return lambda: block(
            sample_ode(field, VP(), xj, solver=solver(), rtol=TOL, atol=TOL, t_start=1.0, t_end=0.0)
        )

    sides = {f"wgfm sample_ode {s}": wgfm(SOLVERS[s]) for s in solvers}
    compile_s = {}
    for name, fn in sides.items():
        first, med = time_call(fn, repeats=1, warmup=0)
        compile_s[name] = max(first - med, 0.0)
    bare = jax.jit(jax.vmap(field, in_axes=(0, None)))
    tt = jnp.float32(0.5)
    block(bare(xj, tt))
    sides[BARE] = lambda: block(bare(xj, tt))
    peers, counts, extras = ({}, {}, {}) if torch is None else peer_sides(torch, params, x0, tiny)
    for fn in peers.values():
        fn()  # warm-up (first-call allocations)
    times = interleaved({**sides, **peers}, repeats)
    med = {k: float(np.median(v)) for k, v in times.items()}
    eval_s = med[BARE]
    gflops = C.mlp_flops(dim) * n / eval_s / 1e9
    rate = {"field_gflops": gflops, "field_frac_of_peak": gflops / peak}
    rows = [record(BENCH, case, BARE, compile_s=None, median_s=eval_s, repeats=repeats, **rate)]
    outs = {}
    default = f"wgfm sample_ode {DEFAULT_SOLVER}"
    for name in solvers:
        impl = f"wgfm sample_ode {name}"
        res = sample_ode(
            field, VP(), xj, solver=SOLVERS[name](), rtol=TOL, atol=TOL, t_start=1.0, t_end=0.0
        )
        outs[impl], nfe = np.asarray(res.samples), int(np.max(np.asarray(res.stats.nfe)))
        per_nfe = med[impl] / nfe
        rows.append(
            record(
                BENCH,
                case,
                impl + (" (default)" if impl == default else ""),
                compile_s=compile_s[impl],
                median_s=med[impl],
                repeats=repeats,
                nfe=nfe,
                per_nfe_vs_bare_eval=per_nfe / eval_s,
                max_err_vs_ref=_err(outs[impl], ref),
            )
        )
    tools = {t: [p for p in peers if p.startswith(t)] for t in ("torchdiffeq", "flow_matching")}
    fastest = C.fastest_of(med, {t: names for t, names in tools.items() if names})
    for impl, fn in peers.items():
        count = counts[impl]
        count["n"] = 0
        out = np.asarray(fn())
        diff = float(np.max(np.abs(out - outs["wgfm sample_ode Dopri5"])))
        rows.append(
            record(
                BENCH,
                case,
                impl,
                compile_s=extras[impl].pop("torch_compile_s", None),
                median_s=med[impl],
                repeats=repeats,
                nfe=count["n"],
                max_err_vs_ref=_err(out, ref),
                max_abs_diff_vs_wgfm=diff,
                agree=diff <= AGREE * scale,
                fastest_peer=fastest[impl],
                **extras[impl],
                **ratio_stats(times[impl], times[default]),
                **{
                    f"tsit5_{k}": v
                    for k, v in ratio_stats(times[impl], times["wgfm sample_ode Tsit5"]).items()
                },
            )
        )
    return rows


def _err(x: np.ndarray, ref: np.ndarray) -> float:
    return float(np.max(np.linalg.norm(x - ref, axis=1)))


# Work-precision: each solver and controller over tolerances, NFE against final error. "PI" is
# diffrax's suggested PI controller (pcoeff 0.4, icoeff 0.3); the default is Dopri5 with the
# plain I controller. Compared at equal *error* (not equal tolerance: solvers' error estimates
# differ in scale), interpolating NFE log-log between tolerances (benchmarks/_summary.py).
WP_SIDES = {
    "Tsit5": (diffrax.Tsit5, {}),
    "Dopri5": (diffrax.Dopri5, {}),
    "Bosh3": (diffrax.Bosh3, {}),
    "Tsit5 PI": (diffrax.Tsit5, dict(pcoeff=0.4, icoeff=0.3)),
    "Dopri5 PI": (diffrax.Dopri5, dict(pcoeff=0.4, icoeff=0.3)),
}


def work_precision(dim: int, n: int, tols, torch=None, sides=tuple(WP_SIDES)) -> list[dict]:
    """NFE and final error (against the float64 Dopri8 reference) of each of :data:`WP_SIDES`
    and of ``torchdiffeq`` dopri5 over ``tols``: one compile per wgfm side (array tolerances)."""
    params, x0, ref = case_inputs(dim, n)
    field = C.mlp_jax(params)
    case = f"D={dim}, n={n}"
    rows = _wgfm_work_precision(
        case,
        ref,
        tols,
        sides,
        lambda cls, ctrl: sample_ode(
            field,
            VP(),
            jnp.asarray(x0),
            solver=cls(),
            stepsize_controller=ctrl,
            t_start=1.0,
            t_end=0.0,
            strict=False,
        ),
    )
    if torch is not None:
        for tol in tols:
            sides, count = torch_sides(torch, params, x0, tol)
            fn = sides["torchdiffeq odeint dopri5"]
            count["n"] = 0
            _, med = time_call(fn, repeats=1, warmup=0)
            nfe = count["n"] // 2  # time_call ran it twice
            out = np.asarray(fn())
            rows.append(
                record(
                    "pf_solver_choice",
                    case,
                    "torchdiffeq dopri5",
                    compile_s=None,
                    median_s=med,
                    repeats=1,
                    tol=tol,
                    nfe=nfe,
                    max_err_vs_ref=_err(out, ref),
                )
            )
    return rows


def work_precision_gmm(name: str, mix, process, n: int, tols, sides=tuple(WP_SIDES)) -> list[dict]:
    """The same sweep (wgfm sides only) on the exact GMM velocity from the prior at ``t_max``
    to ``t_min``: the stiff end a trained network's field does not show at random weights."""
    x = np.asarray(process.prior_sample((n, mix.means.shape[1]), key=jax.random.key(0)))
    with jax.enable_x64(True):
        mix64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), mix)
        ref = np.asarray(
            sample_ode(
                gmm.velocity_field(mix64, process),
                process,
                jnp.asarray(x, jnp.float64),
                solver=diffrax.Dopri8(),
                rtol=1e-11,
                atol=1e-11,
                max_steps=100_000,
            ).samples
        )
    field = gmm.velocity_field(mix, process)
    return _wgfm_work_precision(
        f"GMM {name}, n={n}",
        ref,
        tols,
        sides,
        lambda cls, ctrl: sample_ode(
            field,
            process,
            jnp.asarray(x),
            solver=cls(),
            stepsize_controller=ctrl,
            strict=False,
            max_steps=20_000,
        ),
    )


def _wgfm_work_precision(case: str, ref: np.ndarray, tols, sides, solve) -> list[dict]:
    """One ``pf_solver_choice`` row per entry ``sides`` of :data:`WP_SIDES` and tolerance, from
    ``solve(solver_class, controller)``: its time, NFE and final error against ``ref``."""
    rows = []
    for impl in sides:
        cls, pid = WP_SIDES[impl]
        for tol in tols:
            ctrl = diffrax.PIDController(rtol=tol, atol=tol, **pid)
            _, med = time_call(
                lambda cls=cls, ctrl=ctrl: block(solve(cls, ctrl)), repeats=1, warmup=0
            )
            res = solve(cls, ctrl)
            rows.append(
                record(
                    "pf_solver_choice",
                    case,
                    impl,
                    compile_s=None,
                    median_s=med,
                    repeats=1,
                    tol=tol,
                    nfe=int(np.max(np.asarray(res.stats.nfe))),
                    max_err_vs_ref=_err(np.asarray(res.samples), ref),
                )
            )
    return rows


def run(quick: bool = False, *, tiny: bool = False) -> list[dict]:
    torch = C.torch_or_none(BENCH)
    solvers, sides = tuple(SOLVERS), tuple(WP_SIDES)
    gmm_sides = sides
    if tiny:
        cases, repeats, wp = [(2, 64)], 2, [(2, 64, (1e-3, 1e-4))]
        # Each solver and controller is its own program: the smoke test keeps the two solvers
        # the summary compares and one PI controller (every code path; the rest is diffrax's),
        # and on the mixture (the same sweep's code on another field) the default alone.
        solvers, sides, gmm_sides = (
            ("Dopri5", "Tsit5"),
            ("Tsit5", "Dopri5", "Dopri5 PI"),
            ("Dopri5",),
        )
    elif quick:
        wp = [(2, 1_000, (1e-3, 1e-4, 1e-5, 1e-6)), (64, 256, (1e-3, 1e-4, 1e-5, 1e-6))]
        cases, repeats = [(2, 10_000), (64, 1_000), (2, 1_000)], 3
    else:
        wp = [(d, 1_000, (1e-3, 1e-4, 1e-5, 1e-6)) for d in (2, 64)]
        cases, repeats = [(2, 10_000), (64, 1_000), (2, 1_000)], 7
    peak = C.run_peak()["peak_gflops"]
    rows = [r for d, n in cases for r in run_case(d, n, repeats, peak, torch, solvers, tiny)]
    rows += [r for d, n, tols in wp for r in work_precision(d, n, tols, torch, sides)]
    mixtures = {"ring8 2-D VP": (gmm.ring(), VP())}
    if not tiny:
        mixtures["random 10-D VP"] = (gmm.random_mixture(10, 6, key=jax.random.key(3)), VP())
    tols = (1e-3, 1e-4) if tiny else (1e-3, 1e-4, 1e-5, 1e-6)
    n_gmm = 32 if tiny else 500
    return rows + [
        r
        for k, (m, p) in mixtures.items()
        for r in work_precision_gmm(k, m, p, n_gmm, tols, gmm_sides)
    ]


if __name__ == "__main__":
    write_results(run(), Path("results/bench"), name=BENCH)
