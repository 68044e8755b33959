"""wgfm.interop.torch_field: PyTorch callables as JAX fields, checked against torch.func itself."""

from __future__ import annotations

import subprocess
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from wgfm.diagnostics import asymmetry, sub_jacobian  # noqa: E402
from wgfm.interop import diffusers_unet_fn, torch_field  # noqa: E402


def _mlp_fn(seed: int = 0):
    """A float64 batched field ``(x (N, 5), t (N,)) -> (N, 5)``, nonlinear in both."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Linear(6, 32), torch.nn.Tanh(), torch.nn.Linear(32, 5)
    ).double()
    return lambda x, t: net(torch.cat([x, t[:, None]], 1)) * torch.cos(t)[:, None] + x**2


def _torch_jac(fn, x: np.ndarray, t: np.ndarray):
    """Per-sample ``(d y/d x, d y/d t)`` by ``torch.func.jacfwd`` (the reference)."""
    one = lambda a, b: fn(a[None], b[None])[0]  # noqa: E731
    jx, jt = torch.func.vmap(torch.func.jacfwd(one, argnums=(0, 1)))(
        torch.from_numpy(x), torch.from_numpy(t)
    )
    return jx.detach().numpy(), jt.detach().numpy()


@pytest.mark.parametrize("vmap_tangents", [False, True, None])
def test_jacfwd_equals_torch_func_under_jit_and_vmap(vmap_tangents):
    fn = _mlp_fn()
    field = torch_field(fn, chunk_size=3, vmap_tangents=vmap_tangents)  # several chunks
    x = np.random.default_rng(0).standard_normal((4, 5))
    t = np.array([0.1, 0.2, 0.3, 0.4])
    ref_x, ref_t = _torch_jac(fn, x, t)
    jac = eqx.filter_jit(jax.vmap(jax.jacfwd(field, argnums=(0, 1))))(jnp.asarray(x), t)
    # Same float64 PyTorch kernels on the same numbers: equal up to summation order.
    np.testing.assert_allclose(jac[0], ref_x, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(jac[1], ref_t, rtol=1e-12, atol=1e-12)
    assert np.abs(ref_x).max() > 0.1 and np.abs(ref_t).max() > 0.1
    # jacfwd outside vmap: tangents and primals batched along different axes.
    outer = jax.jacfwd(jax.vmap(field))(jnp.asarray(x), jnp.asarray(t))
    np.testing.assert_allclose(np.einsum("iaib->iab", outer), ref_x, rtol=1e-12, atol=1e-12)
    # Diagnostics go through jax.linearize.
    idx = jnp.array([0, 3, 4])
    sub = jax.vmap(lambda a, b: sub_jacobian(field, a, b, idx))(jnp.asarray(x), t)
    np.testing.assert_allclose(sub, ref_x[:, idx][:, :, idx], rtol=1e-12, atol=1e-12)


def test_values_eager_jit_vmap_and_unbatched_fn():
    fn = _mlp_fn(1)
    x = np.random.default_rng(1).standard_normal((3, 5))
    ref = fn(torch.from_numpy(x), torch.full((3,), 0.7, dtype=torch.float64)).detach().numpy()
    field = torch_field(fn)
    np.testing.assert_allclose(
        field(jnp.asarray(x[0]), 0.7), ref[0], rtol=1e-12
    )  # batch size changes matmul blocking
    vm = jax.jit(jax.vmap(field, in_axes=(0, None)))(jnp.asarray(x), 0.7)
    np.testing.assert_allclose(vm, ref, rtol=1e-12)  # batch size changes matmul blocking
    single = torch_field(lambda a, b: fn(a[None], b[None])[0], batched=False)
    np.testing.assert_allclose(
        jax.vmap(single, in_axes=(0, None))(jnp.asarray(x), 0.7), ref, rtol=1e-12
    )
    # Nested vmaps (images x times) reach the callback as one batch.
    grid = jax.vmap(jax.vmap(field, in_axes=(None, 0)), in_axes=(0, None))(
        jnp.asarray(x), jnp.array([0.7, 0.7])
    )
    np.testing.assert_allclose(
        grid, np.stack([ref, ref], axis=1), rtol=1e-12
    )  # batch size changes matmul blocking


class _Recorder(torch.nn.Module):
    """A float32 linear map ``A x + t b`` that records the dtype of every input it receives."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(4)
        self.a = torch.nn.Parameter(torch.randn(5, 5))
        self.b = torch.nn.Parameter(torch.randn(5))
        self.seen: list[torch.dtype] = []

    def forward(self, x, t):
        self.seen += [x.dtype, t.dtype]
        return x @ self.a.T + t[..., None] * self.b


def test_inputs_cast_to_the_module_dtype_for_every_kind_of_fn():
    import functools

    x64 = np.random.default_rng(5).standard_normal(5)
    m = _Recorder()
    with torch.no_grad():  # reference in float32 on the float32-rounded input, as the cast does
        ref = m(torch.from_numpy(x64[None]).float(), torch.tensor([0.3])).numpy()[0]
    jac_ref = m.a.detach().numpy()
    # A module, its bound method, a partial over it, an unbatched function of it, and a lambda
    # with an explicit dtype: fn receives float32 every time, values and JVPs alike.
    fns = {
        "module": (m, {}),
        "bound method": (m.forward, {}),
        "partial": (functools.partial(lambda mod, x, t: mod(x, t), m), {}),
        "unbatched": (m, {"batched": False}),
        "explicit": (lambda x, t: m(x, t), {"dtype": torch.float32}),
    }
    for name, (fn, kw) in fns.items():
        m.seen.clear()
        field = torch_field(fn, **kw)
        y = jax.jit(field)(jnp.asarray(x64), 0.3)
        assert y.dtype == jnp.float64, name  # outputs come back in the input's dtype
        # float32 inputs and parameters: equal to the float32 reference up to rounding order.
        np.testing.assert_allclose(y, ref, rtol=1e-6, atol=1e-6, err_msg=name)
        jac = jax.jacfwd(field)(jnp.asarray(x64), 0.3)
        np.testing.assert_allclose(jac, jac_ref, rtol=1e-6, atol=1e-6, err_msg=name)
        assert m.seen and set(m.seen) == {torch.float32}, (name, m.seen)
    # No module found and no dtype: the JAX input's own dtype (float64 tensors fail on the
    # float32 parameters, which is how a caller learns to pass dtype=).
    m.seen.clear()
    bare = torch_field(lambda x, t: x * t[:, None])
    assert bare.dtype is None
    np.testing.assert_allclose(bare(jnp.asarray(x64), 0.5), 0.5 * x64, rtol=0, atol=0)
    with pytest.raises(Exception, match="dtype|Double|Float"):
        jax.block_until_ready(torch_field(lambda x, t: m(x, t))(jnp.asarray(x64), 0.3))
    with pytest.raises(ValueError, match="floating torch.dtype"):
        torch_field(m, dtype=torch.int32)


def test_diffusers_unet_asymmetry_equals_flax_port(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    from wgfm.interop import load_diffusers

    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=8,
        block_out_channels=(16, 32),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        attention_head_dim=8,
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    ).eval()
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.1 * torch.randn_like(p))
    unet.save_pretrained(tmp_path)
    port, _ = load_diffusers(tmp_path, scheduler_config={})
    chw = lambda x, t: jnp.transpose(port(jnp.transpose(x, (1, 2, 0)), t), (2, 0, 1))  # noqa: E731
    field = torch_field(diffusers_unet_fn(unet), chunk_size=64)
    assert field.dtype == torch.float32  # found on the unet that diffusers_unet_fn wraps
    x = jnp.asarray(np.random.default_rng(2).standard_normal((3, 8, 8)), jnp.float32)
    t = jnp.float32(0.3)
    # float64 inputs reach the float32 unet as float32: the same value, returned as float64.
    y64 = field(x.astype(jnp.float64), jnp.float64(0.3))
    assert y64.dtype == jnp.float64
    np.testing.assert_array_equal(np.asarray(y64, np.float32), np.asarray(field(x, t)))
    idx = jnp.asarray(np.random.default_rng(3).choice(192, 48, replace=False))
    sub_torch = jax.jit(lambda a: sub_jacobian(field, a, t, idx))(x)
    sub_port = jax.jit(lambda a: sub_jacobian(chw, a, t, idx))(x)
    # Reference: 48 one-hot JVPs in one batched torch.func.jvp (timestep 0.3 K - 1 = 299).
    eye = torch.zeros(48, 192)
    eye[torch.arange(48), torch.from_numpy(np.array(idx))] = 1.0
    xs = torch.from_numpy(np.array(x)).expand(48, 3, 8, 8).contiguous()
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
        cols = torch.func.jvp(
            lambda a: unet(a, torch.tensor(299.0)).sample, (xs,), (eye.reshape(48, 3, 8, 8),)
        )[1]
    ref = cols.detach().reshape(48, 192).numpy()[:, np.asarray(idx)].T
    scale = np.abs(ref).max()
    # float32: the same PyTorch kernels (1e-6 of the scale), and the port's XLA convolutions
    # (summation order, as in test_interop_diffusers: 1e-4 of the scale).
    assert np.abs(np.asarray(sub_torch) - ref).max() <= 1e-5 * scale
    assert np.abs(np.asarray(sub_port) - ref).max() <= 1e-4 * scale
    r_torch, r_port = asymmetry(sub_torch).ratio, asymmetry(sub_port).ratio
    assert 0.05 < float(r_torch) < 2.0  # a random network is far from conservative
    np.testing.assert_allclose(r_torch, r_port, rtol=1e-4)


def test_auto_tangent_batching_falls_back_when_vmap_is_unsupported():
    from wgfm.interop import torch_host as wth

    class Square(torch.autograd.Function):  # forward-mode AD, but no vmap rule
        @staticmethod
        def forward(x):
            return x**2

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.save_for_forward(inputs[0])
            ctx.save_for_backward(inputs[0])

        @staticmethod
        def jvp(ctx, dx):
            (x,) = ctx.saved_tensors
            return 2 * x * dx

        @staticmethod
        def backward(ctx, g):  # through NumPy: no vmap of the pullback either
            (x,) = ctx.saved_tensors
            return 2 * x * torch.from_numpy(g.numpy())

    fn = lambda x, t: Square.apply(x) * t[:, None]  # noqa: E731
    x = jnp.array([1.0, 2.0, 3.0])
    with pytest.raises(Exception, match="does not have vmap support"):
        jax.jacfwd(torch_field(fn, vmap_tangents=True))(x, 2.0)
    jac = jax.jacfwd(torch_field(fn))(x, 2.0)  # auto
    np.testing.assert_array_equal(jac, np.diag([4.0, 8.0, 12.0]))
    assert wth._NO_VMAP.get(fn) is True
    # Reverse mode: the pullback has no vmap rule either; one backward pass per cotangent.
    with pytest.raises(Exception, match="data pointer"):
        jax.block_until_ready(jax.jacrev(torch_field(fn, vmap_tangents=True))(x, 2.0))
    np.testing.assert_array_equal(jax.jacrev(torch_field(fn))(x, 2.0), np.diag([4.0, 8.0, 12.0]))
    assert wth._NO_VMAP_VJP.get(fn) is True


def test_errors_name_the_problem():
    fn = _mlp_fn()
    with pytest.raises(ValueError, match="chunk_size"):
        torch_field(fn, chunk_size=0)
    with pytest.raises(ValueError, match="callable"):
        torch_field(3)  # pyright: ignore[reportArgumentType]
    field = torch_field(fn)
    with pytest.raises(ValueError, match="`t` must be a scalar"):
        field(jnp.zeros(5), jnp.zeros(2))
    with pytest.raises(ValueError, match="floating"):
        field(jnp.zeros(5, jnp.int32), 0.1)
    bad = torch_field(lambda x, t: x[:, :2])
    with pytest.raises(Exception, match=r"must return shape \(1, 5\)"):
        jax.block_until_ready(bad(jnp.zeros(5), 0.1))


def test_importing_interop_does_not_import_torch():
    code = "import sys, wgfm.interop, wgfm.models; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
