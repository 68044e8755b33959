"""Compilation time of each public entry point, and evidence that new values, new tolerances and
new keys do not retrace: the field is wrapped in a counter that only moves while JAX traces it,
and each entry point is called again with changed inputs (``retraces`` must stay 0).
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from wgfm import diagnostics as jac
from wgfm.transport import log_likelihood, sample_ode

from . import _compare as C
from ._harness import block, record, write_results

BENCH = "compile"


def _timed(fn):
    t0 = time.perf_counter()
    block(fn())
    return time.perf_counter() - t0


def _entry(name, counter: C.TraceCounter, first, again: dict, control=None) -> dict:
    """Call ``first`` (compile + run) then a steady call, then each changed-input call in
    ``again``; report compile time and how many of those calls traced the field again."""
    first_s = _timed(first)
    steady_s = min(_timed(first) for _ in range(2))
    traces = counter.count
    for fn in again.values():
        block(fn())
    extra = {"changed": " + ".join(again), "retraces": counter.count - traces}
    if control is not None:  # a new shape must retrace: shows that the counter can see one
        before = counter.count
        block(control())
        extra["control_new_shape_retraces"] = counter.count - before
    return record(
        BENCH,
        name,
        "wgfm",
        compile_s=max(first_s - steady_s, 0.0),
        median_s=steady_s,
        repeats=2,
        **extra,
    )


def run(quick: bool = False, *, tiny: bool = False) -> list[dict]:
    dim, n = (4, 8) if tiny else (16, 64)
    field = C.mlp_jax(C.mlp_params(dim, width=64, depth=2))
    from wgfm.processes import VP

    proc = VP()
    # Default float dtype: wgfm.transport fails on float32 inputs when x64 is enabled (its
    # tolerance arrays are float64 and diffrax's controller state changes dtype).
    dt = jnp.result_type(float)
    x = jax.random.normal(jax.random.key(0), (n, dim), dt)
    x2 = x + 1.0
    t, t2 = jnp.asarray(0.3, dt), jnp.asarray(0.7, dt)
    idx = jnp.arange(4)
    rows = []

    def diag(name, one, extra_args=()):
        ctr = C.TraceCounter(field)
        f = jax.jit(
            jax.vmap(
                lambda xi, ti, *a: one(ctr, xi, ti, *a),
                in_axes=(0, None) + (None,) * len(extra_args),
            )
        )
        again = {"new x": lambda: f(x2, t, *extra_args), "new t": lambda: f(x, t2, *extra_args)}
        control = lambda: f(x[: n // 2], t, *extra_args)  # noqa: E731
        rows.append(_entry(name, ctr, lambda: f(x, t, *extra_args), again, control))

    diag("jacobian + asymmetry", lambda fl, xi, ti: jac.asymmetry(jac.jacobian(fl, xi, ti)).ratio)
    diag("sub_jacobian", lambda fl, xi, ti, i: jac.sub_jacobian(fl, xi, ti, i), (idx,))
    diag("divergence", lambda fl, xi, ti: jac.divergence(fl, xi, ti))
    probes = jac.make_probes(jax.random.key(1), 4, (dim,), dtype=dt)
    diag("probe_divergence", lambda fl, xi, ti, p: jac.probe_divergence(fl, xi, ti, p), (probes,))

    def solve_entry(name, solve, rtol, atol):  # retraces on new values and on new tolerances
        ctr = C.TraceCounter(field)
        again = {
            "new x": lambda: solve(ctr, x2),
            "new rtol/atol": lambda: solve(ctr, x, rtol=rtol, atol=atol),
        }
        rows.append(_entry(name, ctr, lambda: solve(ctr, x), again))

    solve_entry("sample_ode", lambda f, y, **kw: sample_ode(f, proc, y, **kw).samples, 1e-4, 1e-6)
    solve_entry(
        "log_likelihood (exact)",
        lambda f, y, **kw: log_likelihood(f, proc, y, **kw).log_likelihood,
        1e-3,
        1e-3,
    )
    ctr = C.TraceCounter(field)

    def hutch(key, xx=x):
        return log_likelihood(ctr, proc, xx, num_probes=2, key=key).log_likelihood

    rows.append(
        _entry(
            "log_likelihood (Hutchinson K=2)",
            ctr,
            lambda: hutch(jax.random.key(0)),
            {
                "new key": lambda: hutch(jax.random.key(1)),
                "new x": lambda: hutch(jax.random.key(0), x2),
            },
        )
    )
    rows.append(_train_entry(dim, n))
    return rows


def _train_entry(dim: int, n: int) -> dict:
    from wgfm.models import get_model
    from wgfm.processes import VP
    from wgfm.train import TrainConfig, init_state, make_train_step

    config = TrainConfig(batch_size=n)
    model = get_model("mlp-small")
    state = init_state(model, config, (dim,), key=jax.random.key(0))
    step = make_train_step(model, VP(), config)
    data = jnp.asarray(np.random.default_rng(0).standard_normal((4 * n, dim)), jnp.float32)
    i1, i2 = jnp.arange(n), jnp.arange(n, 2 * n)
    first_s = _timed(lambda: step(state, data, i1)[1])
    steady_s = min(_timed(lambda: step(state, data, i1)[1]) for _ in range(2))
    size = step.compiled_variants()
    new_state, _ = step(state, data + 1.0, i2)  # new values, new indices, advanced state/key
    block(step(new_state, data, i1)[1])
    return record(
        BENCH,
        "train step",
        "wgfm",
        compile_s=max(first_s - steady_s, 0.0),
        median_s=steady_s,
        repeats=2,
        changed="new data + new indices + new state/key",
        retraces=step.compiled_variants() - size,
    )


if __name__ == "__main__":
    write_results(run(), Path("results/bench"), name=BENCH)
