"""A diffusers PyTorch denoiser of any registered family as a wgfm field.

:class:`TorchDiffusersField` calls the family's forward (:mod:`wgfm.interop.denoisers`) through
:func:`wgfm.interop.torch_field` on a batch of states ``(N, H, W, C)``, with the fixed
:class:`~wgfm.interop.conditioning.Conditioning` broadcast over the batch, and converts the raw
output into a field value with the scheduler's map."""

from __future__ import annotations

import functools
from typing import Any

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from ..pretrained import torch_seed
from .conditioning import Conditioning
from .denoisers import AbstractDenoiser
from .scheduled import AbstractScheduledField
from .schedulers import SchedulerMap


class TorchDiffusersField(AbstractScheduledField):
    """A diffusers PyTorch denoiser as a wgfm field ``(x (H, W, C), t) -> kind``, through
    :func:`wgfm.interop.torch_field` (JVPs and VJPs by ``torch.func``). The network sees
    ``schedule.model_input(x, t)`` at ``schedule.timestep(t)`` as its ``family`` maps it, with
    the fixed conditioning ``notes`` names; ``learned_variance``: only the first half of its
    output channels."""

    net: Any  # a wgfm.interop.TorchField over (x (N, H, W, C), timestep (N,))
    schedule: SchedulerMap
    sample_shape: tuple[int, int, int] = eqx.field(static=True)
    cls: str = eqx.field(static=True)
    notes: tuple[str, ...] = eqx.field(static=True, default=())
    latent: Any = eqx.field(static=True, default=None)
    # The torch module and the arguments that rebuild the field around a re-initialised one.
    module: Any = eqx.field(static=True, default=None)
    conditioning: Conditioning | None = eqx.field(static=True, default=None)
    family: AbstractDenoiser | None = eqx.field(static=True, default=None)

    @property
    def backend(self) -> str:
        from .torch import backend_name

        return backend_name(self.net)

    @property
    def host_callback(self) -> bool:
        return True

    @property
    def untrained_description(self) -> str:
        return (
            "the same architecture freshly initialised by PyTorch (diffusers' from_config, "
            "seeded from the diagnosis key, on the model's device in its dtype)"
        )

    def __call__(self, x: Float[Array, "h w c"], t: Float[ArrayLike, ""]) -> Array:
        t = jnp.asarray(t, x.dtype)
        s = self.schedule
        return s.value(x, self.net(s.model_input(x, t), s.timestep(t)), t)

    def untrained(
        self, *, key: PRNGKeyArray, sample_shape: tuple[int, ...] = ()
    ) -> TorchDiffusersField:
        """The same field around the same architecture freshly initialised by diffusers
        (``from_config`` under ``torch.manual_seed`` of a seed drawn from ``key``, built on the
        model's device in its dtype: :func:`wgfm.interop.torch.reinitialised`): the untrained
        control.

        Args:
            key: the seed's draw.
            sample_shape: unused (the field's own).

        Returns:
            A :class:`TorchDiffusersField` around the fresh module, with the same schedule and
            conditioning.
        """
        from .torch import reinitialised

        fresh = reinitialised(self.module, torch_seed(key))
        assert self.family is not None and self.conditioning is not None
        return TorchDiffusersField(
            torch_net(fresh, self.family, self.conditioning, self.net.device, self.net.dtype),
            self.schedule,
            self.sample_shape,
            self.cls,
            self.notes,
            self.latent,
            fresh,
            self.conditioning,
            self.family,
        )


def torch_net(module, family: AbstractDenoiser, cond: Conditioning, device=None, dtype=None):
    """The :class:`wgfm.interop.TorchField` calling ``module`` as ``family`` with ``cond``, on
    ``device`` in ``dtype`` (:func:`wgfm.interop.torch_field`: it moves the module, found on
    the partial)."""
    import torch

    from .torch import contiguous_group_norms, torch_field

    contiguous_group_norms(module)
    sets = [cond.arrays()] + ([cond.arrays(null=True)] if cond.null is not None else [])
    tensors = tuple(
        {n: (torch.from_numpy(np.array(a, copy=True))[None], added) for n, (a, added) in s.items()}
        for s in sets
    )
    fn = functools.partial(_module_call, module, family, cond, tensors)
    return torch_field(fn, device=device, dtype=dtype)


def _module_call(module, family: AbstractDenoiser, cond: Conditioning, tensors, x, t):
    """``module`` on a batch ``x (N, H, W, C)``, timesteps ``t (N,)``: NHWC in and out; with a
    null condition, one call on [conditional; null] as the diffusers pipelines batch it."""
    import torch

    n, k = x.shape[0], len(tensors)
    xs = torch.cat([x.permute(0, 3, 1, 2)] * k)
    ts = torch.cat([t] * k)
    kw, added = {}, {}
    for name, (_, is_added) in tensors[0].items():
        parts = [s[name][0].expand(n, *s[name][0].shape[1:]) for s in tensors]
        v = torch.cat(parts).to(x.device)
        v = v if not v.is_floating_point() else v.to(x.dtype)
        (added if is_added else kw)[name] = v
    out = family.forward(module, xs, ts, kw, added)
    if cond.learned_variance:
        out = out[:, : cond.channels]
    if k == 2:
        # Guidance of the raw prediction is guidance of the field: value() is affine in it.
        out = cond.weight * out[:n] + (1 - cond.weight) * out[n:]
    return out.permute(0, 2, 3, 1)
