"""The exact-or-probes budget stops timing after one JVP when that one already rules exact
Jacobians out (wgfm.diagnosis.budget), on a field whose JVP cost is known: a sleep."""

import time

import jax
import jax.numpy as jnp
import numpy as np

from wgfm.diagnosis.budget import choose_jacobian

SLEEP_S = 0.02


def _slow_field():
    """``x -> x``, whose tangent map sleeps ``SLEEP_S`` per tangent in a host callback that
    counts its calls (the primal is free): one JVP costs ``SLEEP_S``."""
    calls = []

    def sleep(v):
        calls.append(1)
        time.sleep(SLEEP_S)
        return np.asarray(v)

    @jax.custom_jvp
    def ident(x):
        return x

    @ident.defjvp
    def _(primals, tangents):
        (x,), (v,) = primals, tangents
        out = jax.pure_callback(
            sleep, jax.ShapeDtypeStruct(v.shape, v.dtype), v, vmap_method="sequential"
        )
        return x, out

    return (lambda x, t: ident(x)), calls


def test_one_jvp_over_the_budget_stops_the_timing():
    field, calls = _slow_field()
    x, count = jnp.ones(16, jnp.float32), 10
    # half of one JVP (0.01 s) x D = 16 x 10 Jacobians = 1.6 s at least: over 0.5 s
    c = choose_jacobian(field, x, 0.5, count=count, budget_s=0.5)
    assert not c.exact and c.lower_bound and c.chosen_by == "budget"
    assert len(calls) == 2  # a warm-up and one timed JVP, not 8 + 3 x 8
    # the sleep is a floor on the measured time
    assert c.per_jvp_s is not None and c.per_jvp_s >= SLEEP_S / 2
    assert c.estimated_exact_s == c.per_jvp_s * 16 * count
    assert "at least" in c.describe() and "over the budget of 0.5 s" in c.describe()
    # a budget that one JVP does not rule out: the chunked timing (8 tangents, warm-up + 3)
    calls.clear()
    c = choose_jacobian(field, x, 0.5, count=count, budget_s=1e4)
    assert c.exact and not c.lower_bound and len(calls) == 2 + 8 * 4
    assert c.per_jvp_s is not None and c.per_jvp_s >= SLEEP_S and "at least" not in c.describe()
