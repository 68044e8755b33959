"""Run by ``tests/test_distributed.py`` in a subprocess with 8 simulated CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=8``); the test process keeps 1 device.

Usage: ``python _distributed_worker.py diagnostics OUT_DIR`` or ``... training OUT_DIR
CKPT_FROM_1_DEVICE`` (the test runs both at once, one per core). Computes every quantity twice,
single-device and sharded over the 8-device mesh; ``training`` also restores the 1-device
checkpoint onto the mesh and writes an 8-device checkpoint with its expected values. Writes
``OUT_DIR/<part>.json``.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import diffrax  # noqa: E402
import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from wgfm import distributed as dist  # noqa: E402
from wgfm import gmm, processes, transport  # noqa: E402
from wgfm.checkpoint import Checkpointer  # noqa: E402
from wgfm.diagnostics import jacobian as _jac_fn  # noqa: E402, F401
from wgfm.diagnostics import loops  # noqa: E402
from wgfm.diagnostics.sweep import sweep  # noqa: E402

J = sys.modules["wgfm.diagnostics.jacobian"]  # the package re-exports a function of that name

N_SAMPLES = 13  # not a multiple of 8: exercises the pad-and-cut path


def rotated_field(process):
    """GMM velocity plus a rotation ``A x``: non-conservative, so asymmetries are nonzero."""
    base = gmm.velocity_field(gmm.ring(), process)
    a = jnp.array([[0.0, 0.7], [-0.7, 0.0]])

    def field(x, t):
        return base(x, t) + a @ x

    return field


def max_diff(a, b) -> float:
    leaves = zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True)
    return max(
        float(jnp.max(jnp.abs(jnp.asarray(x, float) - jnp.asarray(y, float)))) for x, y in leaves
    )


def n_devices(tree) -> int:
    return min(len(x.sharding.device_set) for x in jax.tree_util.tree_leaves(tree))


def diagnostics(mesh) -> dict:
    proc = processes.VP()
    field = rotated_field(proc)
    kx, kk, kp, ki = jax.random.split(jax.random.key(0), 4)
    xs = jax.random.normal(kx, (N_SAMPLES, 2))
    ts = jnp.linspace(0.05, 0.95, N_SAMPLES)
    keys = jax.random.split(kk, N_SAMPLES)
    probes = jax.vmap(lambda k: J.make_probes(k, 4, (2,)))(jax.random.split(kp, N_SAMPLES))
    idx = jnp.array([1, 0])
    ts_fixed = jnp.linspace(1.0, 1e-3, 9)  # Euler on 8 fixed steps: cheap to compile

    cases = {
        "asymmetry": (
            lambda x, t: jax.vmap(lambda a, b: J.asymmetry(J.jacobian(field, a, b)))(x, t),
            (xs, ts),
            (0, 1),
        ),
        "sub_jacobian": (
            lambda x, t, i: jax.vmap(lambda a, b: J.sub_jacobian(field, a, b, i))(x, t),
            (xs, ts, idx),
            (0, 1),
        ),
        "probe_asymmetry": (
            lambda x, t, k: jax.vmap(
                lambda a, b, c: J.probe_asymmetry(field, a, b, key=c, num_probes=3)
            )(x, t, k),
            (xs, ts, keys),
            (0, 1, 2),
        ),
        "probe_divergence": (
            lambda x, t, p: jax.vmap(lambda a, b, c: J.probe_divergence(field, a, b, c))(x, t, p),
            (xs, ts, probes),
            (0, 1, 2),
        ),
        "loop_integral": (
            lambda x, t: jax.vmap(
                lambda c, s: loops.line_integral(
                    field, loops.circle(c, jnp.eye(2)[0], jnp.eye(2)[1], 0.5, 16), s
                )
            )(x, t),
            (xs, ts),
            (0, 1),
        ),
        "log_likelihood": (
            lambda x: (
                transport.log_likelihood(
                    field,
                    proc,
                    x,
                    solver=diffrax.Euler(),
                    stepsize_controller=diffrax.StepTo(ts_fixed[::-1]),
                    max_steps=8,
                ).log_likelihood
            ),
            (xs,),
            (0,),
        ),
        "sample_ode": (
            lambda x: transport.sample_fixed_step(field, proc, x, num_steps=8).samples,
            (xs,),
            (0,),
        ),
    }
    out = {}
    # diagnostics.sweep over 3 noise levels x 13 samples, with and without per-sample keys.
    xs_t = jnp.stack([xs, 0.5 * xs, 2.0 * xs])
    ts3 = jnp.array([0.1, 0.5, 0.9])

    def probe_ratio(f, x, t, *, key):
        return J.probe_asymmetry(f, x, t, key=key, num_probes=2).stats.ratio

    for name, diag, key in (("sweep_lambda", "lambda", None), ("sweep_probe", probe_ratio, kk)):
        ref = sweep(diag, field, xs_t, ts3, key=key).values
        got = sweep(diag, field, xs_t, ts3, key=key, mesh=mesh).values
        out[name] = {"max_diff": max_diff(ref, got), "ref_scale": max_diff(ref, 0 * ref)}
    for name, (fn, args, argnums) in cases.items():
        ref = eqx.filter_jit(fn)(*args)  # the single-device path (compiled: eager is slower)
        got = dist.shard_over_samples(fn, mesh, sharded_argnums=argnums)(*args)
        zero = jax.tree.map(jnp.zeros_like, ref)
        out[name] = {
            "max_diff": max_diff(ref, got),
            "ref_scale": max_diff(ref, zero),
        }
    out.update(diagnose_over_mesh(mesh))
    # Proof that the work was split: each device sees ceil(13 / 8) = 2 samples, not 13.
    local = dist.shard_over_samples(lambda x: jnp.full(x.shape[:1], x.shape[0]), mesh)(xs)
    out["local_batch"] = sorted({int(v) for v in np.asarray(local)})
    # A non-finite Jacobian on SOME devices only must raise (equinox.error_if), not deadlock.
    logs = jnp.abs(xs).at[::3].multiply(-1.0)  # log of a negative entry on every third sample
    try:
        bad = dist.shard_over_samples(
            lambda x: jax.vmap(lambda a: J.jacobian(lambda y, t: jnp.log(y), a, 0.5))(x), mesh
        )(logs)
        jax.block_until_ready(bad)
        out["nan_error"] = "none"
    except Exception as e:  # equinox's runtime error type is private
        out["nan_error"] = type(e).__name__ + (": non-finite" if "non-finite" in str(e) else "")
    return out


def diagnose_over_mesh(mesh) -> dict:
    """``wgfm.diagnose`` of a rotating linear field in float32 (as networks run), on one
    device and over the mesh: claim 1 on the probe path (per-sample keys) and exact, claim 2's
    four loop families; 5 and 3 images per level, not multiples of 8 (padded)."""
    import wgfm
    from wgfm.diagnosis import DiagnoseSizes, diagnose
    from wgfm.report import jsonable

    sizes = DiagnoseSizes(
        num_levels=2,
        num_samples=5,
        sub_jacobian_size=2,
        num_probes=4,
        max_exact_dim=1,  # D = 2: the probe path
        batch_size=5,
        loop_levels=2,
        loop_samples=3,
        loop_points=8,
        bridge_steps=8,
        noisy_copies=3,
        noisy_points=4,
        num_generated=1,
        ddim_steps=1,
    )
    a = jnp.array([[0.5, 1.0], [-1.0, 0.2]], jnp.float32)
    images = np.asarray(
        gmm.ring(num_modes=4, radius=2.0, std=0.3).sample(32, key=jax.random.key(0))
    )
    images = images.astype(np.float32)

    def run(**kw):
        d = diagnose(
            lambda x, t: a @ x, wgfm.VP(), images, key=jax.random.key(1), kind="score", **kw
        )

        # The Gaussian-fit control's asymmetry is float rounding (a ratio ~1e-4), so its ratio and
        # the probes it would need are rounding noise, which the vmap batch per device reorders:
        # they are compared against that scale, not to the ulp like the field's own numbers.
        def strip(v):
            if isinstance(v, dict):
                return {k: strip(u) for k, u in v.items() if k != "oracle score"}
            return v

        nums = {k: {f: v for f, v in n.items() if f != "jacobian"} for k, n in d.numbers.items()}
        oracle = d.numbers["differential"].get("median_probe_ratio", {}).get("oracle score")
        if oracle is not None:
            assert np.nanmax(np.asarray(oracle, float)) < 1e-3, oracle
        leaves = jax.tree_util.tree_leaves(jsonable(strip(nums)))
        return np.asarray(leaves, float), d.header["devices"]

    out = {}
    exact = dataclasses.replace(sizes, jacobians="exact")
    for name, kw in (
        ("diagnose", {"sizes": sizes}),
        ("diagnose_exact", {"claims": ("differential",), "sizes": exact}),
    ):
        ref, _ = run(**kw)
        got, header = run(mesh=mesh, **kw)
        # Non-finite numbers (probes for a 10% s.e. of a ratio that is exactly 0) must match.
        fin = np.isfinite(ref)
        same = np.array_equal(fin, np.isfinite(got)) and np.array_equal(ref[~fin], got[~fin])
        out[name] = {
            "max_diff": float(np.max(np.abs(got[fin] - ref[fin]))) if same else float("inf"),
            "ref_scale": float(np.max(np.abs(ref[fin]))),
        }
        out[f"{name}_header"] = header
    return out


def train_setup():
    """The tiny training problem shared with the test process: ``(model, process, config,
    data, key)`` (2-D MLP, 64 float32 points, 4 steps of 16, a checkpoint every 2 steps)."""
    from wgfm.models import get_model
    from wgfm.train import TrainConfig

    model = get_model("mlp-small", kind="eps")
    config = TrainConfig(
        steps=4,
        batch_size=16,
        warmup_steps=1,
        weighting="min-snr",
        checkpoint_every=2,
        log_every=2,
    )
    data = np.asarray(jax.random.normal(jax.random.key(1), (64, 2), jnp.float32))
    return model, processes.VP(), config, data, jax.random.key(2)


def training(mesh, out_dir: Path, ckpt_from_1: Path) -> dict:
    from wgfm.train import TrainState, fit, init_state, make_train_step

    model, process, config, data, key = train_setup()
    state0 = init_state(model, config, (2,), key=key)
    step = make_train_step(model, process, config)
    batches = [jnp.arange(16) + 16 * s for s in range(2)]

    ref, ref_losses = state0, []
    for idx in batches:
        ref, loss = step(ref, data, idx)
        ref_losses.append(loss)

    sharded_step = dist.data_parallel(step, mesh, batch_argnums=2)
    st, losses = dist.replicate(state0, mesh), []
    data_rep = dist.replicate(data, mesh)
    for idx in batches:
        st, loss = sharded_step(st, data_rep, dist.shard_batch(idx, mesh))
        losses.append(loss)
    idx_sh = dist.shard_batch(batches[0], mesh)
    hlo = sharded_step.lower(st, data_rep, idx_sh).compile().as_text()  # cached compile
    try:
        sharded_step(st, data_rep, jnp.arange(12))
        ragged = "no error"
    except ValueError as e:
        ragged = str(e)

    # Checkpoint 1 -> 8: written by the 1-device test process from the same init key.
    ck = Checkpointer(ckpt_from_1)
    restored, _ = ck.restore(ck.steps()[-1], dist.replicate(state0, mesh).as_dict())
    ck.close()
    restored = TrainState(**restored)
    # Checkpoint 8 -> 1: the sharded-trained state, read back by the test process.
    ck8 = Checkpointer(out_dir / "ckpt8")
    ck8.save(2, st.as_dict(), {"devices": 8})
    ck8.close()
    leaves = jax.tree_util.tree_leaves(jax.tree.map(np.asarray, st.params))
    np.savez(out_dir / "expected8.npz", *leaves)

    # fit(mesh=): resume the 1-device run (stopped at step 2) on 8 devices to step 4, and write
    # an 8-device run stopped at step 2 for the test process to resume on 1 device.
    shutil.copytree(out_dir / "run1", out_dir / "run1to8")
    kw = dict(key=key, progress=False, mesh=mesh)
    r18 = fit(model, process, data, config, run_dir=out_dir / "run1to8", resume=True, **kw)
    np.savez(out_dir / "fit_1to8.npz", *jax.tree_util.tree_leaves(r18.params))
    fit(model, process, data, config, run_dir=out_dir / "run8", stop_at=2, **kw)
    return {
        "param_diff": max_diff(ref.params, st.params),
        "opt_diff": max_diff(ref.opt_state, st.opt_state),
        "ema_diff": max_diff(ref.ema, st.ema),
        "loss_diff": max_diff(ref_losses, losses),
        "param_scale": max_diff(ref.params, state0.params),
        "state_devices": n_devices(st.params),
        "batch_devices": n_devices(idx_sh),
        "batch_shard_shape": list(idx_sh.addressable_shards[0].data.shape),
        "all_reduce": "all-reduce" in hlo,
        "ragged_error": ragged,
        "restored_1_to_8_diff": max_diff(restored.params, state0.params),
        "restored_devices": n_devices(restored.params),
        "restored_step": int(restored.step),
        "fit_1to8_logged_steps": [int(v) for v in r18.logged_steps],
        "fit_1to8_devices": n_devices(r18.params),
    }


def main() -> None:
    part, out_dir = sys.argv[1], Path(sys.argv[2])
    mesh = dist.make_mesh(8)
    report = {"device_count": jax.device_count(), "mesh_size": int(mesh.devices.size)}
    if part == "diagnostics":
        report["diagnostics"] = diagnostics(mesh)
    else:
        report["training"] = training(mesh, out_dir, Path(sys.argv[3]))
    (out_dir / f"{part}.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
