"""wgfm.models: U-Net shapes and input checks, conservative head, adapters, jit/vmap agreement."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wgfm import fields, processes
from wgfm.models import CONFIGS, Model, get_model, sinusoidal_embedding

KEY = jax.random.PRNGKey(0)
VP = processes.VP()


@pytest.mark.parametrize("shape", [(8, 8, 1), (28, 28, 1), (32, 32, 3)])
def test_unet_output_shapes(shape):
    # Shapes by abstract evaluation (no compilation): the output has the input's shape.
    model = get_model("unet-tiny", attention_resolutions=(shape[0] // 2,))
    params = jax.eval_shape(lambda: model.net.init(KEY, jnp.zeros((1, *shape)), jnp.zeros(1)))
    out = jax.eval_shape(model.apply, params, jax.ShapeDtypeStruct(shape, jnp.float32), 0.5)
    assert out.shape == shape


def test_paper_unet_config_shape_and_size():
    model = get_model("unet-cifar10-paper")
    assert model.net.width == 64 and tuple(model.net.channel_mults) == (1, 2, 4, 8)
    params = jax.eval_shape(lambda: model.net.init(KEY, jnp.zeros((1, 32, 32, 3)), jnp.zeros(1)))
    out = jax.eval_shape(model.apply, params, jax.ShapeDtypeStruct((32, 32, 3), jnp.float32), 0.5)
    assert out.shape == (32, 32, 3)


@pytest.mark.parametrize("name", ["unet-mnist", "unet-mnist-small"])
def test_mnist_unets_shape_and_relative_cost(name):
    # The small one is the same U-Net at half the width: about a quarter of the parameters
    # (convolutions scale with width squared; the time embedding and norms do not quite).
    model = get_model(name)
    params = jax.eval_shape(lambda: model.net.init(KEY, jnp.zeros((1, 28, 28, 1)), jnp.zeros(1)))
    out = jax.eval_shape(model.apply, params, jax.ShapeDtypeStruct((28, 28, 1), jnp.float32), 0.5)
    assert out.shape == (28, 28, 1)
    size = sum(np.prod(p.shape) for p in jax.tree.leaves(params))
    full = jax.eval_shape(
        lambda: get_model("unet-mnist").net.init(KEY, jnp.zeros((1, 28, 28, 1)), jnp.zeros(1))
    )
    ratio = size / sum(np.prod(p.shape) for p in jax.tree.leaves(full))
    assert ratio == 1.0 if name == "unet-mnist" else 0.22 < ratio < 0.3


def test_unet_runs_and_rejects_bad_images():
    model = get_model("unet-tiny", kind="eps")
    params = model.init(KEY, (8, 8, 1))
    x = jax.random.normal(KEY, (8, 8, 1), jnp.float32)
    y = jax.jit(model.apply)(params, x, 0.3)
    assert y.shape == x.shape and np.all(np.isfinite(y))
    with pytest.raises(ValueError, match="1 channels"):
        model.apply(params, jnp.zeros((8, 8, 3)), 0.3)
    with pytest.raises(ValueError, match="divisible by 2"):
        model.apply(params, jnp.zeros((9, 9, 1)), 0.3)
    with pytest.raises(ValueError, match=r"\(H, W, C\)"):
        model.init(KEY, (64,))
    with pytest.raises(ValueError, match="`kind`"):
        Model(model.net, "noise")
    with pytest.raises(ValueError, match="`name`"):
        get_model("resnet")
    assert "unet-cifar10-paper" in CONFIGS


def test_sinusoidal_embedding_closed_form():
    t = jnp.array([0.0, 0.25])
    e = sinusoidal_embedding(t, 4, scale=10.0)  # frequencies 1 and 1e-4
    expect = np.array([[0, 0, 1, 1], [np.sin(2.5), np.sin(2.5e-4), np.cos(2.5), np.cos(2.5e-4)]])
    np.testing.assert_allclose(e, expect, rtol=1e-12, atol=1e-15)


@pytest.fixture(scope="module")
def mlp():
    model = get_model("mlp-small", kind="eps")
    params = model.init(KEY, (3,), jnp.float64)
    return model, params


def test_mlp_jit_equals_eager_and_vmap_equals_loop(mlp):
    model, params = mlp
    xs = jax.random.normal(KEY, (4, 3))
    ts = jnp.linspace(0.1, 0.9, 4)
    batched = jax.jit(jax.vmap(model.apply, in_axes=(None, 0, 0)))(params, xs, ts)
    single = jax.jit(model.apply)
    loop = np.stack([single(params, x, t) for x, t in zip(xs, ts, strict=True)])
    np.testing.assert_allclose(model.apply(params, xs[0], ts[0]), loop[0], rtol=1e-12, atol=1e-12)
    # float64 throughout: only summation order differs between the two paths.
    np.testing.assert_allclose(batched, loop, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match=r"\(D,\)"):
        model.apply(params, jnp.zeros((2, 3)), 0.1)


def test_conservative_head_jacobian_is_symmetric():
    model = get_model("mlp-small", kind="score", conservative=True)
    params = model.init(KEY, (4,), jnp.float64)
    x = jax.random.normal(KEY, (4,))
    jac = jax.jit(jax.jacfwd(model.apply, argnums=1))(params, x, 0.4)
    # A Hessian of a float64 potential: symmetric to rounding (|J| ~ 1, so 1e-12 absolute).
    np.testing.assert_allclose(jac, jac.T, rtol=0, atol=1e-12)
    # ... and it is the gradient of the stated potential (finite differences, step 1e-6).
    h, pot = 1e-6, jax.jit(jax.vmap(model.potential, in_axes=(None, 0, None)))
    e = jnp.eye(4)
    fd = (pot(params, x + h * e, 0.4) - pot(params, x - h * e, 0.4)) / (2 * h)
    grad = jax.jit(model.apply)(params, x, 0.4)
    np.testing.assert_allclose(grad, np.array(fd), rtol=1e-6, atol=1e-8)
    # The free network is not symmetric (the comparison the head exists for).
    free = get_model("mlp-small", kind="score")
    jf = jax.jit(jax.jacfwd(free.apply, argnums=1))(free.init(KEY, (4,), jnp.float64), x, 0.4)
    assert np.abs(jf - jf.T).max() > 1e-3


@pytest.mark.parametrize(("kind", "expected"), [("eps", 1.0), ("score", -1.0), ("x0", 0.0)])
def test_conservative_head_has_the_right_tail(kind, expected):
    """Where the network outputs ~0 (far from the data; here a zeroed output layer) the head
    gives eps ~ x, score ~ -x, others ~ 0: the behaviour at high noise. (The old eps head gave
    -x there and sent probability-flow trajectories from the prior to |x| ~ 1e5.)"""
    model = get_model("mlp-small", kind=kind, conservative=True)
    params = model.init(KEY, (3,), jnp.float64)
    dense = params["params"]
    last = max((k for k in dense if k.startswith("Dense_")), key=lambda k: int(k.split("_")[1]))
    dense = {**dense, last: jax.tree.map(jnp.zeros_like, dense[last])}
    x = jax.random.normal(KEY, (3,))
    out = model.apply({**params, "params": dense}, x, 0.9)
    np.testing.assert_allclose(out, expected * x, rtol=0, atol=1e-14)


def test_adapters_convert_by_the_closed_forms(mlp):
    model, params = mlp
    x, t = jax.random.normal(KEY, (3,)), 0.35
    eps = model.apply(params, x, t)
    s = model.score(params, VP)(x, t)
    np.testing.assert_allclose(s, -eps / VP.sigma(t), rtol=1e-12)
    a, b = VP.velocity_coefficients(t)
    np.testing.assert_allclose(model.velocity(params, VP)(x, t), a * x + b * s, rtol=1e-12)
    vmodel = get_model("mlp-small", kind="velocity")
    vp = vmodel.init(KEY, (3,), jnp.float64)
    np.testing.assert_array_equal(vmodel.velocity(vp, VP)(x, t), vmodel.apply(vp, x, t))
    s2 = vmodel.score(vp, VP)(x, t)
    np.testing.assert_allclose(
        s2, fields.convert(VP, x, t, vmodel.apply(vp, x, t), kind="velocity", to="score")
    )


def test_core_cli_and_train_do_not_import_flax():
    import subprocess
    import sys

    code = "import sys, wgfm, wgfm.cli, wgfm.train, wgfm.data; assert 'flax' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
