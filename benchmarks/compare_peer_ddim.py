"""DDIM-50 against ``diffusers``: wgfm ``sample_ddim`` vs the ``DDIMScheduler`` loop (the
authors' sampler) on the same eps-network (MLP width 256, 3 SiLU layers, input ``[x, t]``;
identical float32 weights), the same prior draws and the same discrete sigmoid schedule
(``VPSigmoid().discrete_schedule(1000)``, handed to diffusers as ``trained_betas``; "leading"
spacing, ``eta = 0``, no clipping, final ``alphabar = 1``). diffusers passes the integer step
``k``; its network sees ``t_k``, the time wgfm's field is called with.

Interleaved rounds; speed-up as the median of per-round ratios with spread. Also recorded: a
bare jitted field evaluation of the batch times 50 (the floor for any 50-step sampler) and
the same network's 50 bare PyTorch calls (the floor for the diffusers loop). ``agree``: the
samples within ``AGREE`` of their scale (diffusers keeps its ``alphas_cumprod`` in float32).
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from wgfm.processes import VPSigmoid
from wgfm.samplers import sample_ddim

from . import _compare as C
from ._harness import block, interleaved, ratio_stats, record, time_call, write_results

BENCH = "peer_ddim"
STEPS, K = 50, 1000
AGREE = 1e-3


LOOP = "diffusers DDIMScheduler loop"
COMPILED = f"{LOOP}, torch.compile network"


def diffusers_loop(torch, params, x0: np.ndarray, wrap=None):
    """``() -> samples`` running the DDIMScheduler loop under ``torch.inference_mode``, and
    ``() -> None`` the bare net calls; ``wrap`` (such as ``torch.compile``) wraps the net."""
    from diffusers.schedulers.scheduling_ddim import DDIMScheduler

    t_grid, ab = VPSigmoid().discrete_schedule(K)
    betas = 1.0 - ab / np.concatenate([[1.0], ab[:-1]])
    sched = DDIMScheduler(
        num_train_timesteps=K,
        trained_betas=betas,
        clip_sample=False,
        set_alpha_to_one=True,
        prediction_type="epsilon",
        timestep_spacing="leading",
        steps_offset=0,
    )
    net = C.mlp_torch(torch, params)
    net = net if wrap is None else wrap(net)
    tg = torch.from_numpy(np.asarray(t_grid, np.float32))
    xt = torch.from_numpy(np.array(x0))
    n = xt.shape[0]

    def eps(x, k):
        return net(torch.cat([x, tg[k].reshape(1, 1).expand(n, 1)], 1))

    def loop():
        sched.set_timesteps(STEPS)
        x = xt
        with torch.inference_mode():
            for k in sched.timesteps:
                x = sched.step(eps(x, k), int(k), x, eta=0.0, return_dict=False)[0]
        return x

    def bare():
        with torch.inference_mode():
            for k in sched.timesteps:
                eps(xt, k)

    return loop, bare


def peer_sides(torch, params, x0: np.ndarray, tiny: bool) -> tuple[dict, dict]:
    """``(sides, extras by name)``: the diffusers loop (PyTorch's threads chosen on it, the timed
    operation), its network's 50 bare calls, and the loop with the network under
    ``torch.compile`` where that builds (its compile seconds in its extras)."""
    loop, bare = diffusers_loop(torch, params, x0)
    threads = C.threads_extra(*C.best_threads(torch, loop))
    sides = {LOOP: loop, "torch net alone, 50 calls": bare}
    extras: dict[str, dict] = {LOOP: dict(threads)}
    wrap = lambda net: C.torch_compile(torch, net, tiny=tiny)  # noqa: E731
    cloop, _ = diffusers_loop(torch, params, x0, wrap)
    errors: dict[str, str] = {}
    compile_s = C.compiled_side(BENCH, COMPILED, cloop, errors)
    if compile_s is not None:
        sides[COMPILED] = cloop
        extras[COMPILED] = threads | {"torch_compile_s": compile_s}
    else:
        extras[LOOP]["torch_compile_error"] = errors[COMPILED]
    return sides, extras


def run_case(dim: int, n: int, repeats: int, torch, tiny: bool = False) -> list[dict]:
    params = C.mlp_params(dim)
    field = C.mlp_jax(params)
    x0 = np.random.default_rng(dim + n).standard_normal((n, dim)).astype(np.float32)
    xj = jnp.asarray(x0)
    case = f"D={dim}, n={n}, {STEPS} steps"

    def wgfm():
        return block(sample_ddim(field, VPSigmoid(), xj, kind="eps", num_steps=STEPS).samples)

    first, med = time_call(wgfm, repeats=1, warmup=0)
    compile_s = max(first - med, 0.0)
    bare = jax.jit(jax.vmap(field, in_axes=(0, None)))
    tt = jnp.float32(0.5)
    block(bare(xj, tt))
    fns = {"wgfm sample_ddim": wgfm, "bare jit field eval": lambda: block(bare(xj, tt))}
    extras = {}
    if torch is not None:
        peers, extras = peer_sides(torch, params, x0, tiny)
        fns |= peers
    times = interleaved(fns, repeats)
    med = {k: float(np.median(v)) for k, v in times.items()}
    floor = STEPS * med["bare jit field eval"]
    rows = [
        record(
            BENCH,
            case,
            "wgfm sample_ddim",
            compile_s=compile_s,
            median_s=med["wgfm sample_ddim"],
            repeats=repeats,
            vs_50_bare_evals=med["wgfm sample_ddim"] / floor,
        ),
        record(
            BENCH, case, "50 x bare jit field eval", compile_s=None, median_s=floor, repeats=repeats
        ),
    ]
    if torch is None:
        return rows
    fastest = C.fastest_of(med, {"diffusers": list(extras)})
    ours = np.asarray(wgfm())
    for name, extra in extras.items():
        out = np.asarray(fns[name]())
        diff = float(np.max(np.abs(out - ours)))
        scale = 1.0 + float(np.max(np.abs(out)))
        rows.append(
            record(
                BENCH,
                case,
                name,
                compile_s=extra.pop("torch_compile_s", None),
                median_s=med[name],
                repeats=repeats,
                max_abs_diff_vs_wgfm=diff,
                agree=diff <= AGREE * scale,
                fastest_peer=fastest[name],
                **extra,
                **ratio_stats(times[name], times["wgfm sample_ddim"]),
            )
        )
    name = "torch net alone, 50 calls"
    rows.append(record(BENCH, case, name, compile_s=None, median_s=med[name], repeats=repeats))
    return rows


def run(quick: bool = False, *, tiny: bool = False) -> list[dict]:
    torch = C.torch_or_none(BENCH)
    if tiny:
        cases, repeats = [(2, 32)], 2
    else:
        cases, repeats = [(2, 10_000), (64, 1_000), (2, 1_000)], 3 if quick else 7
    return [r for d, n in cases for r in run_case(d, n, repeats, torch, tiny)]


if __name__ == "__main__":
    write_results(run(), Path("results/bench"), name=BENCH)
