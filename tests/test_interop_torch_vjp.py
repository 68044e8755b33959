"""Reverse mode through wgfm.interop.torch_field: jax.vjp / jacrev / grad of a PyTorch field,
and the diagnostics' VJP probe estimator on it, against torch.func and an equivalent JAX field."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from test_interop_torch import _mlp_fn  # noqa: E402

from wgfm.diagnostics import probe_asymmetry  # noqa: E402
from wgfm.interop import torch_field  # noqa: E402


def _torch_jacrev(fn, x: np.ndarray, t: np.ndarray):
    """Per-sample ``(d y/d x, d y/d t)`` by ``torch.func.jacrev`` (the reference)."""
    one = lambda a, b: fn(a[None], b[None])[0]  # noqa: E731
    jx, jt = torch.func.vmap(torch.func.jacrev(one, argnums=(0, 1)))(
        torch.from_numpy(x), torch.from_numpy(t)
    )
    return jx.detach().numpy(), jt.detach().numpy()


def test_jacrev_equals_torch_func_under_jit_and_vmap():
    fn = _mlp_fn()
    # Several chunks; the fallback without torch.func.vmap: test_interop_torch's autograd.Function.
    field = torch_field(fn, chunk_size=3)
    x = np.random.default_rng(0).standard_normal((4, 5))
    t = np.array([0.1, 0.2, 0.3, 0.4])
    ref_x, ref_t = _torch_jacrev(fn, x, t)
    assert np.abs(ref_x).max() > 0.1 and np.abs(ref_t).max() > 0.1
    jac = eqx.filter_jit(jax.vmap(jax.jacrev(field, argnums=(0, 1))))(jnp.asarray(x), t)
    # Same float64 PyTorch kernels on the same numbers: equal up to summation order.
    np.testing.assert_allclose(jac[0], ref_x, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(jac[1], ref_t, rtol=1e-12, atol=1e-12)
    # jacrev outside vmap: cotangents and primals batched along different axes, the sample
    # axis of the cotangents summed over by the transpose of the broadcast.
    outer = jax.jacrev(jax.vmap(field))(jnp.asarray(x), jnp.asarray(t))
    np.testing.assert_allclose(np.einsum("iaib->iab", outer), ref_x, rtol=1e-12, atol=1e-12)
    # grad in t with x shared by every time (x broadcast: its cotangents summed over times).
    g = jax.grad(lambda a, b: jnp.sum(jax.vmap(field, (None, 0))(a, b)), argnums=(0, 1))
    gx, gt = g(jnp.asarray(x[0]), jnp.asarray(t))
    rx, rt = _torch_jacrev(fn, np.repeat(x[:1], 4, 0), t)
    np.testing.assert_allclose(gx, rx.sum((0, 1)), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gt, rt.sum(1), rtol=1e-12, atol=1e-12)


def test_vjp_jit_equals_eager_vmap_equals_loop_and_traces_once():
    fn = _mlp_fn(2)
    calls = []

    def counted(x, t):
        calls.append(x.shape[0])
        return fn(x, t)

    field = torch_field(counted)
    rng = np.random.default_rng(3)
    xs, cts = jnp.asarray(rng.standard_normal((3, 5))), jnp.asarray(rng.standard_normal((3, 5)))
    ts = jnp.array([0.2, 0.5, 0.9])
    traces = []

    def pull(x, t, ct):
        traces.append(1)
        y, vjp = jax.vjp(field, x, t)
        return y, *vjp(ct)

    eager = [pull(xs[i], ts[i], cts[i]) for i in range(3)]
    traces.clear()
    calls.clear()
    jitted = jax.jit(jax.vmap(pull))
    batch = jitted(xs, ts, cts)
    jax.block_until_ready(jitted(xs + 1.0, ts, cts))
    assert len(traces) == 1  # the second call reuses the compiled program
    # One forward pass for the values and one torch.func.vjp (its own forward) per call, each
    # on the whole batch of 3: no pass per sample, none repeated.
    assert calls == [3, 3, 3, 3], calls
    tx, tt = torch.from_numpy(np.array(xs)), torch.from_numpy(np.array(ts))
    np.testing.assert_allclose(batch[0], fn(tx, tt).detach().numpy(), rtol=1e-12)
    for i in range(3):  # vmap == loop of eager calls: float64, summation order only
        for b, e in zip(batch, eager[i], strict=True):
            np.testing.assert_allclose(b[i], e, rtol=1e-12, atol=1e-12)
    rx, rt = torch.func.vjp(fn, tx, tt)[1](torch.from_numpy(np.array(cts)))
    np.testing.assert_allclose(batch[1], rx.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(batch[2], rt.detach().numpy(), rtol=1e-12, atol=1e-12)


def test_float32_module_vjp_and_double_transpose():
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.SiLU(), torch.nn.Linear(16, 4))

    def fn(x, t):
        return net(x) * torch.sigmoid(t)[:, None]

    field = torch_field(fn, dtype=torch.float32)
    x = jnp.asarray(np.random.default_rng(4).standard_normal(4), jnp.float32)
    ct = jnp.asarray(np.random.default_rng(5).standard_normal(4), jnp.float32)
    gx, gt = jax.vjp(field, x, jnp.float32(0.4))[1](ct)
    _, tvjp = torch.func.vjp(fn, torch.from_numpy(np.asarray(x))[None], torch.tensor([0.4]))
    rx, rt = tvjp(torch.from_numpy(np.asarray(ct))[None])
    # float32 PyTorch kernels on the same numbers: rounding of a 16-wide sum only.
    np.testing.assert_allclose(gx, rx[0].detach().numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(gt, rt[0].detach().numpy(), rtol=1e-6, atol=1e-6)
    assert gx.dtype == jnp.float32
    # The transpose of the transpose is the JVP again (the VJP primitive's own transpose).
    lin = jax.linearize(lambda a: field(a, jnp.float32(0.4)), x)[1]
    lt = jax.linear_transpose(lin, x)
    back = jax.linear_transpose(lambda c: lt(c)[0], ct)(ct)[0]
    np.testing.assert_allclose(back, lin(ct), rtol=1e-6, atol=1e-6)
    with pytest.raises(NotImplementedError):  # second derivatives: a clear refusal
        jax.hessian(lambda a: jnp.sum(field(a, jnp.float32(0.4))))(x)


def test_vjp_probe_estimator_on_torch_equals_the_same_on_jax():
    """probe_asymmetry(method='vjp') on a PyTorch MLP and on the same MLP written in JAX, on the
    same probes; 'auto' now takes the VJP estimator for the PyTorch field."""
    torch.manual_seed(6)
    lin1, lin2 = torch.nn.Linear(7, 24).double(), torch.nn.Linear(24, 6).double()

    def fn(x, t):
        return lin2(torch.tanh(lin1(torch.cat([x, t[:, None]], 1))))

    w1, b1, w2, b2 = (
        jnp.asarray(p.detach().numpy()) for p in (*lin1.parameters(), *lin2.parameters())
    )

    def jax_field(x, t):
        return w2 @ jnp.tanh(w1 @ jnp.concatenate([x, t[None]]) + b1) + b2

    x = jnp.asarray(np.random.default_rng(7).standard_normal(6))
    t = jnp.float64(0.3)
    key = jax.random.key(0)
    tf = torch_field(fn)
    got = jax.jit(lambda a: probe_asymmetry(tf, a, t, key=key, num_probes=16, method="vjp"))(x)
    want = probe_asymmetry(jax_field, x, t, key=key, num_probes=16, method="vjp")
    auto = probe_asymmetry(tf, x, t, key=key, num_probes=16, method="auto")
    forward = probe_asymmetry(tf, x, t, key=key, num_probes=16, method="forward")
    # float64 on both sides, the same probes: equal up to summation order.
    for a, b, c in [
        (got.asym_sq, want.asym_sq, auto.asym_sq),
        (got.ratio_se, want.ratio_se, auto.ratio_se),
        (got.stats.ratio, want.stats.ratio, auto.stats.ratio),
    ]:
        np.testing.assert_allclose(a, b, rtol=1e-10)
        np.testing.assert_allclose(c, b, rtol=1e-10)
    # ... and it is not the forward estimator (a different, noisier estimate on these probes).
    assert abs(float(forward.asym_sq) - float(want.asym_sq)) > 1e-6 * float(want.asym_sq)
