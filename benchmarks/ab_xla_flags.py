"""A/B of an ``XLA_FLAGS`` setting on the benchmarks' 256x3 SiLU MLP, with PyTorch as the
in-process baseline (docs/xla_cpu.md).

XLA reads its flags once, when the backend starts, so every setting runs in its own child
process; rounds alternate the settings, and each child also times the same evaluation in
PyTorch so that a slow round (a noisy neighbour on a shared host) shows in both. Not part of
``wgfm bench`` (which runs in one process): run it by hand,

    python -m benchmarks.ab_xla_flags --flag=--xla_cpu_experimental_ynn_fusion_type=+eltwise

and it writes ``results/bench/xla_flags_ab.json``: per round and setting, wgfm's and PyTorch's
median milliseconds and their ratio, and the median ratio per setting.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def child(n: int, repeats: int) -> dict:
    """One setting's timings, in this process (XLA_FLAGS already set by the parent)."""
    import jax
    import jax.numpy as jnp
    import torch

    from . import _compare as C

    params = C.mlp_params(2)
    field = jax.jit(jax.vmap(C.mlp_jax(params), in_axes=(0, None)))
    net = C.mlp_torch(torch, params)
    x = np.random.default_rng(0).standard_normal((n, 2)).astype(np.float32)
    xj, xt, t = jnp.asarray(x), torch.from_numpy(x), jnp.float32(0.5)
    tt = torch.full((n, 1), 0.5)

    def jax_call():
        field(xj, t).block_until_ready()

    def torch_call():
        with torch.inference_mode():
            net(torch.cat([xt, tt], 1))

    out = {}
    for name, fn in (("jax_ms", jax_call), ("torch_ms", torch_call)):
        fn()
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        out[name] = 1e3 * float(np.median(ts))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="A/B of an XLA_FLAGS setting against PyTorch.")
    ap.add_argument("--flag", action="append", default=[], help="an XLA_FLAGS setting to test")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--n", type=int, default=10_000, help="points per evaluation (D = 2)")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--out", type=Path, default=Path("results/bench"))
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.n, args.repeats)))
        return 0
    if not args.flag:
        ap.error("--flag: give at least one XLA_FLAGS setting to compare with none")
    settings = ["", *args.flag]
    rounds = []
    for r in range(args.rounds):
        order = settings if r % 2 == 0 else settings[::-1]
        for flags in order:
            env = {**os.environ, "XLA_FLAGS": flags}
            cmd = [
                sys.executable,
                "-m",
                "benchmarks.ab_xla_flags",
                "--child",
                "--n",
                str(args.n),
                "--repeats",
                str(args.repeats),
            ]
            root = Path(__file__).resolve().parent.parent  # so that -m finds the package
            res = json.loads(
                subprocess.run(cmd, env=env, capture_output=True, check=True, cwd=root, text=True)
                .stdout.strip()
                .splitlines()[-1]
            )
            res.update(round=r, flags=flags, jax_over_torch=res["jax_ms"] / res["torch_ms"])
            rounds.append(res)
            print(json.dumps(res), flush=True)
    summary = {
        f or "(none)": float(np.median([x["jax_over_torch"] for x in rounds if x["flags"] == f]))
        for f in settings
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "xla_flags_ab.json"
    from .run_all import run_info

    run = run_info(False, (), False, None)
    run["command"] = "python -m benchmarks.ab_xla_flags " + " ".join(
        f"--flag={f}" for f in args.flag
    )
    run["date"] = time.strftime("%Y-%m-%d %H:%M %Z")
    path.write_text(
        json.dumps(
            {"n": args.n, "run": run, "rounds": rounds, "median_jax_over_torch": summary}, indent=2
        )
    )
    print(f"median jax/torch time per setting: {summary}\nWrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
