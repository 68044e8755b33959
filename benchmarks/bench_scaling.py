"""Scaling over 1, 2, 4 and 8 devices with ``wgfm.distributed`` — a CORRECTNESS-OF-SHARDING run.

Each device count runs in its own subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=N`` (simulated CPU devices). Simulated devices
share the machine's cores (2 here), so the timings say nothing about speed-up; what the run
shows is that every workload compiles once per device count, runs sharded, and agrees with the
1-device result (``max_abs_diff_vs_1_device``). Where ``nvidia-smi`` exists, the same workloads
also run on one GPU (``impl="1-gpu"``) for real single-accelerator numbers.

Workloads (float32): a data-parallel train step (2-D MLP; its loss is compared), a
Jacobian-asymmetry sweep (10-D mixture velocity plus a rotation), an exact-divergence likelihood and a probability-flow sampling sweep (fixed-step
Euler), the last three through :func:`wgfm.distributed.shard_over_samples`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks._harness import record, write_results

DEVICE_COUNTS = (1, 2, 4, 8)
RUN_KIND = (
    "correctness-of-sharding run: simulated CPU devices share 2 cores, so these timings say "
    "nothing about speed-up"
)
ROOT = Path(__file__).resolve().parent.parent


def _sizes(quick: bool, tiny: bool = False) -> dict:
    if tiny:
        return {"batch": 16, "asym": 8, "ll": 4, "sample": 16, "repeats": 1}
    if quick:
        return {"batch": 256, "asym": 64, "ll": 32, "sample": 256, "repeats": 3}
    return {"batch": 1024, "asym": 512, "ll": 256, "sample": 4096, "repeats": 10}


def _workloads(mesh, sizes: dict):
    """``{case: (fn, args)}``: compiled callables (with ``.lower``) and their inputs."""
    import diffrax
    import jax
    import jax.numpy as jnp

    from wgfm import distributed as dist
    from wgfm import gmm, processes, transport
    from wgfm.diagnostics.jacobian import asymmetry, jacobian
    from wgfm.models import get_model
    from wgfm.train import TrainConfig, init_state, make_train_step

    proc = processes.VP()
    key = jax.random.key(0)
    model = get_model("mlp-small", kind="eps")
    cfg = TrainConfig(steps=1000, batch_size=sizes["batch"])
    data = jnp.asarray(gmm.ring().sample(4 * sizes["batch"], key=key), jnp.float32)
    state = dist.replicate(init_state(model, cfg, (2,), key=key), mesh)
    step = dist.data_parallel(make_train_step(model, proc, cfg), mesh, batch_argnums=2)
    idx = dist.shard_batch(jnp.arange(sizes["batch"], dtype=jnp.int32), mesh)

    mix = gmm.random_mixture(10, 4, key=jax.random.key(1))
    mix = jax.tree.map(lambda a: a.astype(jnp.float32) if a.dtype == jnp.float64 else a, mix)
    base = gmm.velocity_field(mix, proc)
    rot = jax.random.normal(jax.random.key(5), (10, 10), jnp.float32)
    rot = 0.1 * (rot - rot.T)  # non-conservative part, so the ratios are O(0.1), not round-off

    def v10(x, t):
        return base(x, t) + rot @ x

    x10 = jax.random.normal(jax.random.key(2), (sizes["asym"], 10), jnp.float32)
    t10 = jnp.linspace(0.05, 0.95, sizes["asym"], dtype=jnp.float32)

    def asym(x, t):
        return jax.vmap(lambda a, b: asymmetry(jacobian(v10, a, b)).ratio)(x, t)

    v2 = gmm.velocity_field(gmm.ring(), proc)
    ts = jnp.linspace(1e-3, 1.0, 17)

    def loglik(x):
        out = transport.log_likelihood(
            v2,
            proc,
            x,
            solver=diffrax.Euler(),
            stepsize_controller=diffrax.StepTo(ts),
            max_steps=16,
        )
        return out.log_likelihood

    def sample(x):
        return transport.sample_fixed_step(v2, proc, x, num_steps=32).samples

    x_ll = jax.random.normal(jax.random.key(3), (sizes["ll"], 2), jnp.float32)
    x_s = jax.random.normal(jax.random.key(4), (sizes["sample"], 2), jnp.float32)
    return {
        "train-step-mlp2d": (lambda *a: step(*a)[1], step, (state, data, idx)),
        "asymmetry-sweep-10d": (
            None,
            dist.shard_over_samples(asym, mesh, sharded_argnums=(0, 1)),
            (x10, t10),
        ),
        "likelihood-exact-2d": (None, dist.shard_over_samples(loglik, mesh), (x_ll,)),
        "sampling-euler32-2d": (None, dist.shard_over_samples(sample, mesh), (x_s,)),
    }


def _worker(n: int, quick: bool, out: Path, platform: str, tiny: bool = False) -> None:
    """One device count: time each workload and save its output for the cross-count check."""
    import jax

    from benchmarks._harness import block, time_call
    from wgfm import distributed as dist

    sizes = _sizes(quick, tiny)
    mesh = dist.make_mesh(n)
    rows, outputs = [], {}
    for case, (result_of, fn, args) in _workloads(mesh, sizes).items():
        compile_s, median = _time(fn, args, sizes["repeats"], block, time_call)
        res = fn(*args)
        res = result_of(*args) if result_of is not None else res
        outputs[case] = np.asarray(jax.device_get(res), np.float64).tolist()
        dev = jax.devices()[0]
        rows.append(
            record(
                "scaling",
                case,
                f"{n}-simulated-cpu-devices" if platform == "cpu" else f"{n}-{dev.platform}",
                compile_s=compile_s,
                median_s=median,
                repeats=sizes["repeats"],
                devices=n,
                platform=dev.platform,
                device_kind=dev.device_kind,
                run_kind=RUN_KIND if platform == "cpu" else "single accelerator",
                samples=int(np.shape(args[-1])[0]),
            )
        )
    (out / f"scaling_{platform}_{n}.json").write_text(json.dumps({"rows": rows, "out": outputs}))


def _time(fn, args, repeats, block, time_call):
    compiled = None
    if hasattr(fn, "lower"):
        import time

        t0 = time.perf_counter()
        compiled = fn.lower(*args).compile()
        compile_s = time.perf_counter() - t0
        _, median = time_call(lambda: block(compiled(*args)), repeats=repeats)
        return compile_s, median
    first, median = time_call(lambda: block(fn(*args)), repeats=repeats)
    return first, median


def _spawn(n: int, quick: bool, out: Path, platform: str, tiny: bool = False) -> dict:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    if platform == "cpu":
        # Appended: a caller's own XLA settings (the tests' compile flags, say) are kept.
        flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={n}"
        env.update(XLA_FLAGS=flags.strip(), JAX_PLATFORMS="cpu")
    else:
        env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    cmd = [sys.executable, "-m", "benchmarks.bench_scaling", "--worker", str(n), platform, str(out)]
    cmd += ["--quick"] if quick else []
    cmd += ["--tiny"] if tiny else []
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"scaling worker ({n} {platform}) failed:\n{proc.stderr[-3000:]}")
    return json.loads((out / f"scaling_{platform}_{n}.json").read_text())


def run(
    quick: bool = False, device_counts: tuple[int, ...] = DEVICE_COUNTS, *, tiny: bool = False
) -> list[dict]:
    """One subprocess per simulated device count (1 is always included as the reference)."""
    rows = []
    device_counts = (1, 2) if tiny else device_counts
    counts = sorted({1, *(int(n) for n in device_counts)})
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        results: dict[int | str, dict] = {n: _spawn(n, quick, out, "cpu", tiny) for n in counts}
        if shutil.which("nvidia-smi") and not tiny:
            results["gpu"] = _spawn(1, quick, out, "gpu")
    ref = results[1]["out"]
    for res in results.values():
        for r in res["rows"]:
            diff = np.max(np.abs(np.asarray(res["out"][r["case"]]) - np.asarray(ref[r["case"]])))
            r["extra"]["max_abs_diff_vs_1_device"] = float(diff)
            rows.append(r)
    return rows


if __name__ == "__main__":
    if "--worker" in sys.argv:
        i = sys.argv.index("--worker")
        n, platform, out_dir = int(sys.argv[i + 1]), sys.argv[i + 2], Path(sys.argv[i + 3])
        _worker(n, "--quick" in sys.argv, out_dir, platform, "--tiny" in sys.argv)
        sys.exit(0)
    records = run(quick="--quick" in sys.argv)
    print(write_results(records, Path("results/bench"), name="bench_scaling"))
    for r in records:
        e = r["extra"]
        print(
            f"{r['case']:22s} {r['impl']:26s} compile {r['compile_s']:.2f} s  "
            f"steady {1e3 * r['median_s']:.2f} ms  diff vs 1 dev {e['max_abs_diff_vs_1_device']:.2e}"
        )
