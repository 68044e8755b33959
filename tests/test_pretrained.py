"""The pretrained-field contract (wgfm.pretrained): every implementation declares it, and the
diagnosis reads it instead of probing attributes."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import wgfm
from wgfm.models import MLP, Model
from wgfm.pretrained import AbstractPretrainedField, CallableField, torch_seed


def test_an_implementation_missing_an_attribute_cannot_be_built():
    class Partial(AbstractPretrainedField):
        kind: str = "score"

        def __call__(self, x, t):
            return x

        def untrained(self, *, key, sample_shape):
            return None

    with pytest.raises(TypeError, match="abstract"):
        Partial()


def test_callable_field_declares_the_contract_and_redraws_parameters():
    model = Model(MLP(width=8, depth=1), "eps")
    params = model.init(jax.random.key(0), (2,), jnp.float32)
    f = CallableField(model.field(params), "eps", wgfm.VP(), sample_shape=(2,))
    x = jnp.array([0.3, -0.2])
    np.testing.assert_array_equal(f(x, 0.5), model.apply(params, x, 0.5))
    assert f.describe().endswith("kind eps") and not f.host_callback
    assert f.untrained_description.startswith("the same architecture")
    u = f.untrained(key=jax.random.key(1), sample_shape=(2,))
    assert isinstance(u, CallableField)
    assert not np.allclose(u(x, 0.5), f(x, 0.5))  # fresh parameters, another field
    # A function without parameters has no untrained control, and says so.
    g = CallableField(lambda x, t: -x, "score", wgfm.VP())
    assert g.untrained(key=jax.random.key(1), sample_shape=(2,)) is None
    assert g.untrained_description.startswith("no untrained control")
    with pytest.raises(ValueError, match="`kind`"):
        CallableField(lambda x, t: x, "noise", wgfm.VP())


def test_a_jax_function_calling_pytorch_declares_its_host_callback():
    import torch

    from wgfm.interop import torch_field

    inner = torch_field(lambda x, t: torch.tanh(x))
    f = CallableField(eqx.Partial(lambda m, x, t: m(x, t), inner), "score", wgfm.VP())
    assert f.host_callback and f.backend == "JAX, calling PyTorch"


def test_the_torch_seed_is_a_function_of_the_key():
    a, b = torch_seed(jax.random.key(3)), torch_seed(jax.random.key(3))
    assert a == b and a != torch_seed(jax.random.key(4)) and 0 <= a < 2**31
