"""Training-step throughput: ``wgfm.train.make_train_step`` (eps loss, VP process, global-norm
clipping + AdamW + EMA) vs the equivalent PyTorch loop with the same network, batch, loss,
optimiser and EMA, on CPU, eager and with ``torch.compile`` (where inductor builds here). Two
networks: the flax MLP (width 256, depth 3; weights ported to PyTorch), and a digits-sized
U-Net, diffusers' ``UNet2DModel`` (8x8x1, widths 32/64, attention at 4x4, as wgfm's
``unet-digits``) against its flax port ``wgfm.models.UNet2D`` with the PyTorch weights loaded
(``wgfm.interop.convert_state_dict``): the same network in both frameworks. The sides run interleaved, a
round of ``steps`` steps each; the speed-up is the median of per-round ratios with its spread.
wgfm's FLOP rate (XLA's cost analysis of the compiled step) is given against the matmul peak
measured in the same run.

The port is checked: both frameworks' predictions on one batch (``port_max_diff``).
"""

from __future__ import annotations

import functools
import importlib.util
import math
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from wgfm.models import get_model
from wgfm.processes import VP
from wgfm.train import TrainConfig, init_state, make_train_step, state_from_params

from . import _compare as C
from ._harness import block, interleaved, ratio_stats, record, write_results

BENCH = "train_step"
WIDTH, DEPTH = 256, 3
TINY_MLP = (64, 1)  # the smoke test's width and depth: the same code, a smaller program


def torch_mlp(torch, params, dim: int):
    """``wgfm.models.layers.MLP`` in PyTorch with the flax parameters copied in (its width and
    depth read from them)."""
    nn = torch.nn
    p = params["params"]
    width = p["Dense_0"]["kernel"].shape[1]
    depth = (sum(k.startswith("Dense_") for k in p) - 2) // 2  # input, (embed, hidden) x depth, out

    def lin(d):
        w = np.asarray(d["kernel"])
        m = nn.Linear(*w.shape)
        with torch.no_grad():
            m.weight.copy_(torch.from_numpy(np.ascontiguousarray(w.T)))
            m.bias.copy_(torch.from_numpy(np.array(d["bias"])))  # a writable copy
        return m

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.t0, self.t1 = lin(p["TimeMLP_0"]["dense_0"]), lin(p["TimeMLP_0"]["dense_1"])
            self.inp = lin(p["Dense_0"])
            self.emb = nn.ModuleList([lin(p[f"Dense_{1 + 2 * i}"]) for i in range(depth)])
            self.hid = nn.ModuleList([lin(p[f"Dense_{2 + 2 * i}"]) for i in range(depth)])
            self.out = lin(p[f"Dense_{1 + 2 * depth}"])

        def forward(self, x, t):
            half = width // 4  # TimeMLP(width // 2) embeds into width // 2 = 2 * half features
            freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, dtype=x.dtype) / (half - 1))
            a = 1000.0 * t[:, None] * freqs[None]
            e = self.t1(torch.nn.functional.silu(self.t0(torch.cat([a.sin(), a.cos()], -1))))
            h = self.inp(x)
            for le, lh in zip(self.emb, self.hid, strict=True):
                h = lh(torch.nn.functional.silu(h + le(e)))
            return self.out(torch.nn.functional.silu(h))

    return MLP()


# How PyTorch's AdamW and gradient clipping run: per-tensor Python loops (their CPU default),
# multi-tensor ``foreach`` kernels, or AdamW's single ``fused`` kernel (with foreach clipping).
OPTIM = {
    "for-loop": ({"foreach": False}, False),
    "foreach": ({"foreach": True}, True),
    "fused": ({"fused": True}, True),
}


def torch_loop(
    torch,
    model,
    config: TrainConfig,
    data,
    batch: int,
    reduce_dims=(-1,),
    optim: str = "fused",
    compile_step: bool = False,
):
    """The PyTorch step: stratified t, VP noising, eps loss (summed over ``reduce_dims``), clip,
    AdamW, EMA. ``optim`` picks the :data:`OPTIM` implementation of AdamW and clipping;
    ``compile_step`` wraps the whole step (loss, backward, clipping, optimiser, EMA) in
    ``torch.compile``."""
    opt_kw, clip_foreach = OPTIM[optim]
    opt = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay, **opt_kw
    )
    ema = [q.detach().clone() for q in model.parameters()]
    proc = VP()
    bmin, bmax, t_min = float(proc.beta_min), float(proc.beta_max), float(proc.t_min)
    data = torch.from_numpy(data)
    gen = torch.Generator().manual_seed(0)

    def step(indices):
        x0 = data[indices]
        t = t_min + (1 - t_min) * (torch.arange(batch) + torch.rand(batch, generator=gen)) / batch
        alpha = torch.exp(-0.5 * (bmin * t + 0.5 * (bmax - bmin) * t**2))
        alpha = alpha.reshape((-1,) + (1,) * (x0.ndim - 1))
        eps = torch.randn(x0.shape, generator=gen)
        xt = alpha * x0 + torch.sqrt(1 - alpha**2) * eps
        loss = ((model(xt, t) - eps) ** 2).sum(reduce_dims).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_norm, foreach=clip_foreach)
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema, list(model.parameters()), 1 - config.ema_decay)
        return loss

    return torch.compile(step) if compile_step else step


def run_case(
    dim: int,
    batch: int,
    steps: int,
    rounds: int,
    torch,
    peak: float,
    with_compile: bool = True,
    size: tuple[int, int] = (WIDTH, DEPTH),
) -> list[dict]:
    """The MLP (``size``: width, depth) step in both frameworks, from the same weights."""
    config = TrainConfig(steps=steps, batch_size=batch, warmup_steps=10, weight_decay=1e-4)
    model = get_model("mlp", width=size[0], depth=size[1])
    rng = np.random.default_rng(0)
    data = rng.standard_normal((8 * batch, dim)).astype(np.float32)
    idx = [rng.integers(0, len(data), batch).astype(np.int32) for _ in range(steps)]
    case = f"D={dim}, B={batch}, {steps} steps per round"

    state = init_state(model, config, (dim,), key=jax.random.key(0))
    params0 = state.params
    wgfm_steps, compile_s, flops = _wgfm_side(model, config, state, data, idx)
    dj = jnp.asarray(data)
    sides = {"wgfm make_train_step (jit)": wgfm_steps}
    port, torch_compile_s = None, {}
    if torch is not None:
        tm = torch_mlp(torch, params0, dim)
        xs, ts = data[:batch], np.linspace(0.01, 1, batch, dtype=np.float32)
        ref = np.asarray(_batched_apply(model, params0, dj[:batch], jnp.asarray(ts)))
        with torch.no_grad():
            got = tm(torch.from_numpy(xs), torch.from_numpy(ts)).numpy()
        port = float(np.max(np.abs(got - ref)) / np.max(np.abs(ref)))
        ti = [torch.from_numpy(i.astype(np.int64)) for i in idx]
        make = lambda net, **kw: torch_loop(torch, net, config, data, batch, **kw)  # noqa: E731
        net = lambda: torch_mlp(torch, params0, dim)  # noqa: E731
        threads, tried = _eager_sides(torch, sides, make, net, ti)
        if with_compile:
            torch_compile_s = _compiled_sides(torch, sides, make, net, ti)
    else:
        threads, tried = 0, {}
    times = interleaved(sides, rounds)
    compiles = {"wgfm make_train_step (jit)": compile_s} | torch_compile_s
    return _rows(case, times, steps, rounds, batch, flops, peak, compiles, port, threads, tried)


# diffusers' UNet2DModel shaped as wgfm's unet-digits: 8 -> 4 with attention at 4x4.
UNET_DIGITS: dict[str, Any] = dict(
    sample_size=8,
    in_channels=1,
    out_channels=1,
    block_out_channels=(32, 64),
    layers_per_block=1,
    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    norm_num_groups=8,
    attention_head_dim=None,
)
# The smoke test's U-Net: one level (no down- or upsampling) with attention in its blocks and
# the mid block. Its training step compiles in about half the time of the two-level one.
UNET_TINY: dict[str, Any] = UNET_DIGITS | dict(
    block_out_channels=(16,),
    down_block_types=("AttnDownBlock2D",),
    up_block_types=("AttnUpBlock2D",),
    norm_num_groups=4,
)


def run_unet_case(
    batch: int,
    steps: int,
    rounds: int,
    torch,
    peak: float,
    with_compile: bool = False,
    shape: dict[str, Any] = UNET_DIGITS,
) -> list[dict]:
    """The U-Net step (diffusers' ``UNet2DModel(**shape)``) in both frameworks, from the same
    (PyTorch) initial weights."""
    from diffusers.models.unets.unet_2d import UNet2DModel

    from wgfm.interop.diffusers import convert_state_dict
    from wgfm.models import Model
    from wgfm.models.unet2d import unet2d_from_config

    config = TrainConfig(steps=steps, batch_size=batch, warmup_steps=10, weight_decay=1e-4)
    torch.manual_seed(0)
    unet = UNet2DModel(**shape)
    net = unet2d_from_config(dict(unet.config))
    state_dict = {k: v.detach().numpy() for k, v in unet.state_dict().items()}
    params0 = convert_state_dict(state_dict, net)
    model = Model(net, "eps")
    rng = np.random.default_rng(0)
    data = rng.standard_normal((8 * batch, 8, 8, 1)).astype(np.float32)  # HWC, as wgfm
    idx = [rng.integers(0, len(data), batch).astype(np.int32) for _ in range(steps)]
    widths = ", ".join(map(str, shape["block_out_channels"]))
    case = f"UNet2DModel 8x8x1 ({widths}), B={batch}, {steps} steps per round"

    # No flax initialisation (compiling it costs more than the step): the state starts from the
    # converted weights.
    state = state_from_params(params0, config, key=jax.random.key(0))
    wgfm_steps, compile_s, flops = _wgfm_side(model, config, state, data, idx)
    dj = jnp.asarray(data)
    nchw = np.ascontiguousarray(data.transpose(0, 3, 1, 2))
    ts = np.linspace(0.01, 1, 4, dtype=np.float32)
    ref = np.asarray(_batched_apply(model, params0, dj[:4], jnp.asarray(ts)))
    with torch.no_grad():
        got = unet(torch.from_numpy(nchw[:4]), torch.from_numpy(ts)).sample.numpy()
    port = float(np.max(np.abs(got.transpose(0, 2, 3, 1) - ref)) / np.max(np.abs(ref)))

    class Wrapped(torch.nn.Module):  # (x, t) -> eps, as torch_loop calls it
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x, t):
            return self.m(x, t).sample

    ti = [torch.from_numpy(i.astype(np.int64)) for i in idx]
    make = lambda net, **kw: torch_loop(  # noqa: E731
        torch, net, config, nchw, batch, reduce_dims=(1, 2, 3), **kw
    )

    def fresh():  # a copy of the same initial weights for each PyTorch side
        copy = UNet2DModel(**shape)
        copy.load_state_dict(unet.state_dict())
        return Wrapped(copy)

    sides = {"wgfm make_train_step (jit)": wgfm_steps}
    threads, tried = _eager_sides(torch, sides, make, fresh, ti)
    torch_compile_s = _compiled_sides(torch, sides, make, fresh, ti) if with_compile else {}
    times = interleaved(sides, rounds)
    compiles = {"wgfm make_train_step (jit)": compile_s} | torch_compile_s
    return _rows(case, times, steps, rounds, batch, flops, peak, compiles, port, threads, tried)


@functools.partial(jax.jit, static_argnums=0)
def _batched_apply(model, params, xs, ts):
    """The network on a batch, one program (eagerly, ``vmap`` compiles every primitive)."""
    return jax.vmap(model.apply, in_axes=(None, 0, 0))(params, xs, ts)


def _rows(case, times, steps, rounds, batch, flops, peak, compiles, port, threads, tried):
    """One record per side; each PyTorch row has its speed-up over wgfm, and the fastest eager
    and the fastest compiled PyTorch rows are flagged (``fastest_in_group``): the targets read
    those, so a target is never met against a slower PyTorch formulation only."""
    base = times["wgfm make_train_step (jit)"]
    med = {n: float(np.median(ts_)) for n, ts_ in times.items()}
    fastest = {
        group: min((n for n in times if n.startswith(group)), key=med.__getitem__, default=None)
        for group in ("torch eager", "torch.compile")
    }
    rows = []
    for name, ts_ in times.items():
        per_step = med[name] / steps
        extra: dict = {"steps_per_s": 1 / per_step, "examples_per_s": batch / per_step}
        if name.startswith("wgfm"):
            extra |= {
                "xla_gflop_per_step": flops / 1e9,
                "gflops": flops / per_step / 1e9,
                "frac_of_matmul_peak": flops / per_step / 1e9 / peak,
            }
        else:
            extra |= ratio_stats(ts_, base) | {"port_max_diff": port}
            extra |= C.threads_extra(threads, tried)
            extra["fastest_in_group"] = name in fastest.values()
        rows.append(
            record(
                BENCH,
                case,
                name,
                compile_s=compiles.get(name),
                median_s=per_step,
                repeats=rounds,
                **extra,
            )
        )
    return rows


def _wgfm_side(model, config: TrainConfig, state, data, idx):
    """``(run one round of steps, compile seconds, XLA FLOPs per step)`` for wgfm's step
    from ``state`` (warmed up; each round continues from the last)."""
    step = make_train_step(model, VP(), config)
    dj, ij = jnp.asarray(data), [jnp.asarray(i) for i in idx]
    t0 = time.perf_counter()
    # The program the calls below run (compiled once: the calls reuse it), for its FLOPs.
    compiled = step.lower(state, dj, ij[0]).compile()
    compile_s = time.perf_counter() - t0
    box = {"state": state}

    def wgfm_steps():
        st = box["state"]
        for i in ij:
            st, _ = step(st, dj, i)
        box["state"] = block(st)

    wgfm_steps()
    return wgfm_steps, compile_s, _flops(compiled)


def _flops(compiled) -> float:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost.get("flops", 0.0)) if cost else 0.0


def _torch_steps(tstep, ti):
    tstep(ti[0])  # warm-up

    def go():
        for i in ti:
            tstep(i)

    return go


EAGER = {
    "for-loop": "torch eager loop (AdamW and clipping per tensor: PyTorch's CPU default)",
    "foreach": "torch eager loop (AdamW foreach, clipping foreach)",
    "fused": "torch eager loop (AdamW fused, clipping foreach)",
}


def _eager_sides(torch, sides: dict, make, net, ti) -> tuple[int, dict[str, float]]:
    """Add one eager PyTorch side per :data:`OPTIM` implementation to ``sides`` (each on its
    own copy of the initial weights). PyTorch's thread count (JAX's cores or 1) is chosen on
    the fused step itself first; returns it with the time at each count."""
    step = make(net(), optim="fused")
    threads, tried = C.best_threads(torch, lambda: [step(i) for i in ti])
    for optim, name in EAGER.items():
        sides[name] = _torch_steps(make(net(), optim=optim), ti)
    return threads, tried


def _compiled_sides(torch, sides: dict, make, net, ti) -> dict[str, float | None]:
    """Add the ``torch.compile`` sides to ``sides``: the network alone compiled inside the
    eager fused step, and the whole step compiled (loss, backward, clipping, AdamW, EMA).
    Returns each one's compile seconds (first round minus a steady one); a side inductor
    cannot build here is left out with its error printed."""
    variants = {
        "torch.compile network, eager step (AdamW fused)": lambda: make(
            torch.compile(net()), optim="fused"
        ),
        "torch.compile whole step (loss, backward, clip, AdamW foreach, EMA)": lambda: make(
            net(), optim="foreach", compile_step=True
        ),
    }
    out = {}
    for name, build in variants.items():
        tstep = build()  # torch.compile builds on the first call
        compile_s = C.compiled_side(BENCH, name, lambda tstep=tstep: tstep(ti[0]))
        if compile_s is not None:
            out[name] = compile_s
            sides[name] = _torch_steps(tstep, ti)
    return out


def run(quick: bool = False, *, tiny: bool = False) -> list[dict]:
    torch = C.torch_or_none(BENCH)
    if tiny:
        cases, rounds, unet = [(2, 16, 2)], 2, (4, 2)
    elif quick:
        cases, rounds, unet = [(2, 256, 10)], 3, (64, 5)
    else:
        cases, rounds, unet = [(2, 256, 20), (2, 512, 20), (64, 512, 20)], 7, (64, 10)
    peak = C.run_peak()["peak_gflops"]
    mlp, shape = (TINY_MLP, UNET_TINY) if tiny else ((WIDTH, DEPTH), UNET_DIGITS)
    # Tiny skips torch.compile: inductor's own build takes longer than the whole smoke test.
    rows = [r for d, b, s in cases for r in run_case(d, b, s, rounds, torch, peak, not tiny, mlp)]
    if torch is not None and importlib.util.find_spec("diffusers") is not None:
        # The U-Net's compiled step builds for minutes on 2 cores: full runs only.
        compiled = not (quick or tiny)
        rows += run_unet_case(*unet, rounds, torch, peak, with_compile=compiled, shape=shape)
    elif torch is not None:
        print(
            f"[{BENCH}] the U-Net case needs diffusers (pip install -e '.[bench]')", file=sys.stderr
        )
    return rows


if __name__ == "__main__":
    write_results(run(), Path("results/bench"), name=BENCH)
