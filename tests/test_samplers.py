"""wgfm.samplers: dtype behaviour of DDIM (its schedule is float64 on the host)."""

import jax.numpy as jnp
import numpy as np
import pytest

from wgfm.processes import VPSigmoid
from wgfm.samplers import sample_ddim


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_keeps_float32_under_x64(eta):
    import jax

    x = jnp.ones((3, 2), jnp.float32)
    out = sample_ddim(
        lambda y, t: 0.1 * y,
        VPSigmoid(),
        x,
        kind="eps",
        num_steps=5,
        eta=eta,
        key=jax.random.key(0),
    ).samples
    assert out.dtype == jnp.float32
    if eta > 0:  # the noise draws differ between dtypes
        return
    ref = sample_ddim(
        lambda y, t: 0.1 * y,
        VPSigmoid(),
        x.astype(jnp.float64),
        kind="eps",
        num_steps=5,
        eta=eta,
        key=jax.random.key(0),
    ).samples
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-4, atol=1e-4)
