"""Tests for wgfm.distributed.

This process keeps ONE device. The 8-device checks (sharded == single-device training step,
sharded == unsharded diagnostics and transport, checkpoints 1 -> 8 and 8 -> 1) run once in a
subprocess with ``XLA_FLAGS=--xla_force_host_platform_device_count=8``
(``tests/_distributed_worker.py``), which reports differences as JSON asserted on here.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wgfm import distributed as dist
from wgfm.checkpoint import Checkpointer


def _load_worker():
    spec = importlib.util.spec_from_file_location(
        "_distributed_worker", Path(__file__).with_name("_distributed_worker.py")
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


WORKER = Path(__file__).with_name("_distributed_worker.py")
W = _load_worker()


# ---------------------------------------------------------------------------------------------
# The 8-device subprocess.


def _leaves(tree) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    from wgfm.train import fit, init_state

    tmp = tmp_path_factory.mktemp("dist")
    model, process, config, data, key = W.train_setup()  # the worker's problem
    state0 = init_state(model, config, (2,), key=key)
    ck = Checkpointer(tmp / "ckpt1")
    ck.save(0, state0.as_dict(), {"devices": 1})
    ck.close()
    # A 1-device run stopped at step 2, for the worker to resume on 8 devices.
    fit(model, process, data, config, key=key, run_dir=tmp / "run1", stop_at=2, progress=False)
    flags = os.environ.get("XLA_FLAGS", "")  # conftest's compile setting, plus 8 devices
    env = {**os.environ, "XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count=8"}
    env["JAX_PLATFORMS"] = "cpu"
    # Two processes at once (diagnostics, training): each compiles on its own core.
    args = {"diagnostics": [], "training": [str(tmp / "ckpt1")]}
    procs = {
        part: subprocess.Popen(
            [sys.executable, str(WORKER), part, str(tmp), *extra],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for part, extra in args.items()
    }
    out = {"tmp": str(tmp), "state0": state0, "setup": (model, process, config, data, key)}
    for part, proc in procs.items():
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{part} worker failed:\n{err[-4000:]}"
        res = json.loads((tmp / f"{part}.json").read_text())
        assert res["device_count"] == 8 and res["mesh_size"] == 8
        out[part] = res[part]
    return out


def test_worker_really_has_8_devices(report):
    assert jax.device_count() == 1  # this process is untouched
    # (each worker's device count is asserted in the fixture); 13 samples padded to 16 over 8
    # devices: every device's function saw 2 of them.
    assert report["diagnostics"]["local_batch"] == [2]


@pytest.mark.parametrize(
    "name",
    [
        "asymmetry",
        "sub_jacobian",
        "probe_asymmetry",
        "probe_divergence",
        "loop_integral",
        "log_likelihood",
        "sample_ode",
        "sweep_lambda",
        "sweep_probe",
    ],
)
def test_sharded_diagnostics_equal_unsharded(report, name):
    r = report["diagnostics"][name]
    assert set(r) == {"max_diff", "ref_scale"}
    assert r["ref_scale"] > 1e-3  # the quantity is not trivially zero
    # float64 throughout; the only difference is the vmap batch size per device (13 vs 2), which
    # may reorder a few float operations: 1e-10 relative is ~1e6 ulps of headroom, far below any
    # real error (a wrong or mis-ordered sample would give an O(1) relative difference).
    assert r["max_diff"] <= 1e-10 * max(1.0, r["ref_scale"])


@pytest.mark.parametrize("name", ["diagnose", "diagnose_exact"])
def test_sharded_diagnose_equals_one_device(report, name):
    """``wgfm.diagnose(..., mesh=)`` over 8 devices gives one device's numbers: every per-level
    median of claims 1 (probe estimates, their s.e. and sub-Jacobians; or exact ratios) and 2."""
    r = report["diagnostics"][name]
    assert r["ref_scale"] > 1e-1
    # float32 (the images' dtype, as a network runs): the only difference is the vmap batch per
    # device (5 or 3 samples vs 1), which may reorder float operations inside a sample's
    # Jacobian or loop sum: a few ulps (1.2e-7 relative each) of the largest number, so 1e-5 of
    # it is ~100 ulps of headroom. A wrong sample, key or level moves a median by O(1).
    assert r["max_diff"] <= 1e-5 * r["ref_scale"], r
    header = report["diagnostics"][f"{name}_header"]
    assert header.startswith("8 devices") and "split over them" in header


def test_sharded_sweep_raises_on_non_finite(report):
    # Samples 0, 3, 6, 9, 12 give NaN Jacobians: devices holding them fail, the others do not.
    assert "non-finite" in report["diagnostics"]["nan_error"]


def test_sharded_train_step_equals_single_device(report):
    t = report["training"]
    assert t["batch_devices"] == 8 and t["batch_shard_shape"] == [2]  # 16 samples, 2 per device
    assert t["state_devices"] == 8  # parameters replicated on every device
    assert t["all_reduce"]  # the partitioner reduced the gradient across devices
    assert t["param_scale"] > 1e-4  # the two steps moved the parameters
    # float32 with the batch mean summed in a different order (8 partial sums): ~1e-7 relative on
    # the loss and gradients; Adam turns this into ~lr * 1e-6 on the parameters. A wrong batch
    # (e.g. one device's shard only) changes the loss by O(1) and the parameters by O(lr=1e-3).
    assert t["loss_diff"] < 1e-5
    assert t["param_diff"] < 1e-5 and t["ema_diff"] < 1e-5 and t["opt_diff"] < 1e-5


def test_sharded_step_rejects_batch_not_dividing_devices(report):
    assert "12 samples" in report["training"]["ragged_error"]


def test_checkpoint_1_to_8(report):
    t = report["training"]
    assert t["restored_devices"] == 8 and t["restored_step"] == 0
    assert t["restored_1_to_8_diff"] == 0.0  # a restore is a copy: bit-exact


def test_checkpoint_8_to_1(report):
    tmp = Path(report["tmp"])
    state0 = report["state0"]
    ck = Checkpointer(tmp / "ckpt8")
    restored, meta = ck.restore(ck.steps()[-1], state0.as_dict())
    ck.close()
    assert meta["devices"] == 8 and int(restored["step"]) == 2
    expected = np.load(tmp / "expected8.npz")
    leaves = jax.tree_util.tree_leaves(restored["params"])
    assert len(leaves) == len(expected.files)
    for i, leaf in enumerate(leaves):
        assert len(leaf.sharding.device_set) == 1
        np.testing.assert_array_equal(np.asarray(leaf), expected[f"arr_{i}"])  # bit-exact copy


# ---------------------------------------------------------------------------------------------
# One-device unit tests (the helpers' own logic).


def test_make_mesh():
    mesh = dist.make_mesh()
    assert mesh.axis_names == (dist.DATA_AXIS,) and mesh.devices.size == 1
    assert dist.make_mesh(1).devices.size == 1
    with pytest.raises(ValueError, match="only 1 cpu device"):
        dist.make_mesh(4)
    with pytest.raises(ValueError, match="xla_force_host_platform_device_count=4"):
        dist.make_mesh(4)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="`devices`"):
            dist.make_mesh(bad)  # type: ignore[arg-type]


def test_mesh_helpers():
    from wgfm.distributed.mesh import argnum_set, data_axis, leading_size

    assert data_axis(dist.make_mesh(1)) == dist.DATA_AXIS
    assert leading_size({"a": jnp.ones((3, 2)), "b": jnp.ones(3)}, "batch") == 3
    for bad in ((jnp.ones(3), jnp.ones(4)), (jnp.ones(3), jnp.ones(())), ()):
        with pytest.raises(ValueError, match="`batch` must be a PyTree of arrays sharing one"):
            leading_size(bad, "batch")
    assert argnum_set(1) == {1} and argnum_set((0, 2)) == {0, 2}


def test_pad_batch():
    x = jnp.arange(10.0).reshape(5, 2)
    y = jnp.arange(5)
    (px, py), mask = dist.pad_batch((x, y), 4)
    assert px.shape == (8, 2) and py.shape == (8,)
    np.testing.assert_array_equal(px[:5], x)
    np.testing.assert_array_equal(px[5:], jnp.broadcast_to(x[-1], (3, 2)))
    np.testing.assert_array_equal(mask, [True] * 5 + [False] * 3)
    (same,), m2 = dist.pad_batch((x,), 5)
    assert same.shape == (5, 2) and bool(m2.all())
    with pytest.raises(ValueError, match="`multiple`"):
        dist.pad_batch(x, 0)
    with pytest.raises(ValueError, match="leading"):
        dist.pad_batch((x, jnp.arange(4)), 2)


def test_shard_batch_and_replicate():
    mesh = dist.make_mesh(1)
    x = jnp.arange(6.0).reshape(3, 2)
    out = dist.shard_batch({"x": x}, mesh)
    np.testing.assert_array_equal(out["x"], x)
    assert out["x"].sharding == dist.data_sharding(mesh)
    rep = dist.replicate({"w": jnp.ones(3)}, mesh)
    assert rep["w"].sharding == dist.replicated_sharding(mesh)
    with pytest.raises(ValueError, match="leading"):
        dist.shard_batch(jnp.float32(1.0), mesh)


def test_shard_over_samples_one_device_equals_vmap_and_traces_once():
    mesh = dist.make_mesh(1)
    traces = []

    def fn(scale, x):
        traces.append(1)
        return {"y": jax.vmap(lambda a: scale * jnp.sin(a))(x), "n": jnp.sum(x, axis=1)}

    sharded = dist.shard_over_samples(fn, mesh, sharded_argnums=1)
    x = jax.random.normal(jax.random.key(0), (5, 3))
    out = sharded(jnp.float64(2.0), x)
    assert len(traces) == 1
    loop = [fn(2.0, x[i : i + 1]) for i in range(5)]  # vmap == loop over samples
    np.testing.assert_allclose(out["y"], jnp.concatenate([r["y"] for r in loop]), rtol=1e-14)
    np.testing.assert_allclose(out["n"], jnp.sum(x, axis=1), rtol=1e-14)
    traces.clear()
    sharded(jnp.float64(3.0), x + 1)  # new values, same shapes: no retrace
    sharded(jnp.float64(4.0), x - 1)
    assert traces == []


def test_shard_over_samples_errors():
    mesh = dist.make_mesh(1)
    with pytest.raises(ValueError, match="sharded_argnums"):
        dist.shard_over_samples(lambda x: x, mesh, sharded_argnums=3)(jnp.ones((2, 1)))
    with pytest.raises(ValueError, match="disagree"):
        dist.shard_over_samples(lambda a, b: a + b[:2], mesh, sharded_argnums=(0, 1))(
            jnp.ones((2, 1)), jnp.ones((3, 1))
        )


def test_data_parallel_one_device_matches_jit():
    mesh = dist.make_mesh(1)

    def step(w, x):
        loss, g = jax.value_and_grad(lambda w: jnp.mean((x @ w) ** 2))(w)
        return w - 0.1 * g, loss

    w, x = jnp.ones(3), jax.random.normal(jax.random.key(1), (4, 3))
    got = dist.data_parallel(step, mesh)(w, x)
    ref = jax.jit(step)(w, x)
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-14)
    np.testing.assert_allclose(got[1], ref[1], rtol=1e-14)


def test_distributed_init_env_and_validation(monkeypatch):
    for k in ("WGFM_COORDINATOR", "WGFM_NUM_PROCESSES", "WGFM_PROCESS_ID", "WGFM_DISTRIBUTED"):
        monkeypatch.delenv(k, raising=False)
    assert dist.distributed_init() is False  # nothing asked: single process, no-op
    assert dist.setup_devices(None) is None
    assert dist.setup_devices(1).devices.size == 1
    with pytest.raises(ValueError, match="needs all of"):
        dist.distributed_init("localhost:1234")
    with pytest.raises(ValueError, match="`process_id`"):
        dist.distributed_init("localhost:1234", 2, 2)
    monkeypatch.setenv("WGFM_COORDINATOR", "localhost:1234")
    with pytest.raises(ValueError, match="needs all of"):
        dist.distributed_init()
    monkeypatch.setenv("WGFM_NUM_PROCESSES", "two")
    with pytest.raises(ValueError, match="WGFM_NUM_PROCESSES"):
        dist.distributed_init()


def test_fit_resume_across_device_counts(report):
    """``fit`` stopped at step 2 on 1 device and resumed on 8 (and the reverse) ends where the
    uninterrupted 1-device run of 4 steps ends."""
    from wgfm.train import fit

    model, process, config, data, key = report["setup"]
    tmp = Path(report["tmp"])
    ref = _leaves(fit(model, process, data, config, key=key, progress=False).params)
    t = report["training"]
    assert t["fit_1to8_logged_steps"] == [4]  # resumed at 2, not restarted
    assert t["fit_1to8_devices"] == 8
    r81 = fit(
        model, process, data, config, key=key, run_dir=tmp / "run8", resume=True, progress=False
    )
    assert list(r81.logged_steps) == [4]
    one_to_8 = np.load(tmp / "fit_1to8.npz")
    for i, (a, b) in enumerate(zip(ref, _leaves(r81.params), strict=True)):
        # float32, 8 partial sums per batch mean on half the steps (see the step test): ~1e-7.
        np.testing.assert_allclose(b, a, atol=1e-5, rtol=0)
        np.testing.assert_allclose(one_to_8[f"arr_{i}"], a, atol=1e-5, rtol=0)
