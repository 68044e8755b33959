"""Networks as pure functions: ``init(key, sample_shape) -> params`` and ``apply(params, x, t)``.

A :class:`Model` wraps a flax (linen) network, states which quantity it predicts ("eps",
"score", "x0" or "velocity") and exposes both functions on ONE unbatched sample, like every field
in ``wgfm`` (vmap outside). With ``conservative=True`` the output is ``grad_x phi(x, t)`` of the
scalar potential ``phi = -1/2 ||x - net(x, t)||^2`` (Salimans & Ho 2021), so its Jacobian is a
Hessian and symmetric by construction — the "conservative head" of the conservative-versus-free
comparison. :meth:`Model.score` and :meth:`Model.velocity` turn a trained model into the
score and velocity fields it implies (the exact ones of a Gaussian mixture are
:func:`wgfm.gmm.score_field` and :func:`wgfm.gmm.velocity_field`).
"""

from __future__ import annotations

import functools

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
from jaxtyping import Array, PRNGKeyArray

from .._checks import check_scalar_time
from ..fields import as_field
from ..processes import AbstractProcess
from ..typing import KINDS, Scalar


class Model(eqx.Module):
    """A flax network as a pure per-sample field predicting ``kind``."""

    net: nn.Module = eqx.field(static=True)
    kind: str = eqx.field(static=True, default="eps")
    conservative: bool = eqx.field(static=True, default=False)

    def __check_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"`kind` must be one of {KINDS}, got {self.kind!r}.")

    def init(self, key: PRNGKeyArray, sample_shape: tuple[int, ...], dtype=jnp.float32):
        """Parameters for samples of shape ``sample_shape`` (a PyTree of ``dtype`` arrays).
        ``key`` is a raw (uint32) or typed threefry key."""
        sample_shape = tuple(int(s) for s in sample_shape)
        self._check_shape(sample_shape, None)
        return _jit_init(self.net, key, sample_shape, jnp.dtype(dtype))

    def raw(self, params, x: Array, t: Scalar) -> Array:
        """The wrapped network's output on one sample (before any conservative head)."""
        t = jnp.asarray(t, x.dtype)
        return self.net.apply(params, x[None], t[None])[0]

    def potential(self, params, x: Array, t: Scalar) -> Array:
        """Scalar potential of the conservative head, with the right behaviour far from the
        data built in (where the network's output is ~0): ``+1/2 ||x + net||^2`` for eps
        (gradient ~ x, as eps ~ x_t at high noise), ``-1/2 ||x - net||^2`` for the score
        (gradient ~ -x) and ``-1/2 ||net||^2`` otherwise (gradient ~ 0). With
        ``-1/2 ||x - net||^2`` for eps, the gradient is ~ -x off the data, the wrong sign: a few
        probability-flow trajectories from the prior escape to |x| ~ 1e5."""
        out = self.raw(params, x, t)
        if self.kind == "eps":
            return 0.5 * jnp.sum((x + out) ** 2)
        if self.kind == "score":
            return -0.5 * jnp.sum((x - out) ** 2)
        return -0.5 * jnp.sum(out**2)

    def apply(self, params, x: Array, t: Scalar) -> Array:
        """Prediction of ``kind`` at one unbatched sample ``x`` and scalar time ``t``
        (``ValueError`` for a vector ``t``: static, so checked under ``jit`` too)."""
        check_scalar_time(t)
        self._check_shape(x.shape, params)
        if self.conservative:
            return jax.grad(self.potential, argnums=1)(params, x, t)
        return self.raw(params, x, t)

    def field(self, params) -> ModelField:
        """``(x, t) -> apply(params, x, t)`` as a PyTree field (jit-friendly)."""
        return ModelField(self, params)

    def score(self, params, process: AbstractProcess):
        """The score field ``s(x, t)`` this model implies with ``params`` under ``process``,
        whatever its ``kind`` (docs/design.md §1)."""
        return as_field(process, self.field(params), kind=self.kind, to="score")  # type: ignore[arg-type]

    def velocity(self, params, process: AbstractProcess):
        """The WGF velocity ``v = f - g^2/2 s`` this model implies with ``params``."""
        return as_field(process, self.field(params), kind=self.kind, to="velocity")  # type: ignore[arg-type]

    def _check_shape(self, shape: tuple[int, ...], params) -> None:
        check_input = getattr(self.net, "check_input", None)  # image networks (UNet, UNet2D)
        if check_input is not None:
            in_ch = None
            if params is not None:
                in_ch = params["params"]["conv_in"]["kernel"].shape[2]
            check_input(tuple(shape), in_ch)
        elif len(shape) != 1:
            raise ValueError(f"`x` must be one vector of shape (D,) for an MLP, got {shape}.")


@functools.partial(jax.jit, static_argnums=(0, 2, 3))
def _jit_init(net: nn.Module, key, sample_shape: tuple[int, ...], dtype):
    # Initialisers draw from XLA's RngBitGenerator ("unsafe_rbg") seeded by `key`: compiling
    # threefry for the ~100 parameter arrays of a U-Net takes tens of seconds on CPU, this a few.
    # Deterministic for a given key and backend.
    seed = jax.random.key_data(jax.random.split(key, 2)).reshape(4)
    rbg_key = jax.random.wrap_key_data(seed, impl="unsafe_rbg")
    x = jnp.zeros((1, *sample_shape), dtype)
    return net.init(rbg_key, x, jnp.zeros((1,), dtype))


class ModelField(eqx.Module):
    """A model with its parameters: the field ``(x, t) -> model.apply(params, x, t)``."""

    model: Model
    params: dict

    def __call__(self, x: Array, t: Scalar) -> Array:
        return self.model.apply(self.params, x, t)
