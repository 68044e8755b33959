"""The derivatives of a :func:`wgfm.interop.torch_field`: values by ``jax.pure_callback``,
tangents by a JVP primitive whose transpose is a VJP primitive (and back), each running
``torch.func`` in a host callback (:mod:`wgfm.interop.torch_host`)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.core import ShapedArray
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from .torch_host import Spec, host_jvp, host_value, host_vjp, pad

__all__ = ["Spec", "torch_call"]


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def torch_call(spec: Spec, x, t):
    out = jax.ShapeDtypeStruct(x.shape, x.dtype)
    host = functools.partial(host_value, spec, x.ndim)
    return jax.pure_callback(host, out, x, t, vmap_method="expand_dims")


@torch_call.defjvp
def _call_jvp(spec: Spec, primals, tangents):
    x, t = primals
    dx, dt = tangents
    # The primal comes from its own callback: under jacfwd's vmap over tangents it must stay
    # unbatched, which a callback whose outputs are all batched cannot express (one extra
    # forward pass per primal, not per tangent). The tangent is a primitive of its own, linear
    # in (dx, dt) with torch.func.vjp as its transpose: what jax.linearize stages and
    # jax.linear_transpose (vjp, grad, jacrev) turns around.
    return torch_call(spec, x, t), _jvp_p.bind(x, t, dx, dt, spec=spec, nd=x.ndim)


# Two primitives, transposes of each other. ``jvp(x, t, dx, dt) -> dy`` and
# ``vjp(x, t, ct) -> (gx, gt)`` take arrays with leading batch axes that broadcast against each
# other (aligned on the right, the event shape of ``x`` being the last ``nd`` axes) and run in a
# host callback. Why primitives, not ``jax.custom_derivatives.linear_call`` inside the
# ``custom_jvp`` rule: linear_call has no batching rule, so a vmap over images or probes of a
# reverse-mode derivative would fail; here one batching rule (leading axes broadcast) serves
# every vmap, and its output is the same primitive, so vmap before transpose also works.
_jvp_p = Primitive("torch_jvp")
_vjp_p = Primitive("torch_vjp")
_vjp_p.multiple_results = True


def _lead(*arrays_ranks) -> tuple[int, ...]:
    """The broadcast leading (batch) shape of ``(array, event rank)`` pairs."""
    leads = [a.shape[: a.ndim - r] for a, r in arrays_ranks]
    k = max(len(lead) for lead in leads)
    return tuple(np.broadcast_shapes(*(pad(lead, k) for lead in leads)))


def _jvp_abstract(x, t, dx, dt, *, spec, nd):
    del spec
    return ShapedArray(_lead((x, nd), (t, 0), (dx, nd), (dt, 0)) + x.shape[x.ndim - nd :], x.dtype)


def _vjp_abstract(x, t, ct, *, spec, nd):
    del spec
    lead = _lead((x, nd), (t, 0), (ct, nd))
    return ShapedArray(lead + x.shape[x.ndim - nd :], x.dtype), ShapedArray(lead, t.dtype)


def _jvp_impl(x, t, dx, dt, *, spec, nd):
    out = _jvp_abstract(x, t, dx, dt, spec=spec, nd=nd)
    host = functools.partial(host_jvp, spec, nd)
    return jax.pure_callback(host, jax.ShapeDtypeStruct(out.shape, out.dtype), x, t, dx, dt)


def _vjp_impl(x, t, ct, *, spec, nd):
    outs = _vjp_abstract(x, t, ct, spec=spec, nd=nd)
    host = functools.partial(host_vjp, spec, nd)
    structs = tuple(jax.ShapeDtypeStruct(o.shape, o.dtype) for o in outs)
    return jax.pure_callback(host, structs, x, t, ct)


def _batcher(prim, ranks):
    def rule(args, dims, *, spec, nd):
        # Every argument gets the vmapped axis in front (size 1 where not mapped), after its
        # leading axes are padded to a common count: the primitive's broadcasting then lines
        # the new axis up across arguments.
        event = [nd if r else 0 for r in ranks]
        leads = [a.ndim - (d is not None) - e for a, d, e in zip(args, dims, event, strict=True)]
        k = max(leads)
        new = []
        for a, d, lead in zip(args, dims, leads, strict=True):
            a = jnp.moveaxis(a, d, 0) if d is not None else a[None]
            new.append(jnp.reshape(a, a.shape[:1] + (1,) * (k - lead) + a.shape[1:]))
        out = prim.bind(*new, spec=spec, nd=nd)
        return out, ([0] * len(out) if prim.multiple_results else 0)

    return rule


def _sum_to(g, shape: tuple[int, ...]):
    """``g`` summed over the axes along which an argument of ``shape`` was broadcast."""
    extra = g.ndim - len(shape)
    axes = tuple(range(extra)) + tuple(
        extra + i for i, n in enumerate(shape) if n == 1 and g.shape[extra + i] != 1
    )
    return jnp.reshape(jnp.sum(g, axis=axes), shape)


def _residuals_only(name: str, *args) -> None:
    if any(ad.is_undefined_primal(a) for a in args):
        raise NotImplementedError(
            f"{name}: a torch_field has first derivatives only (its JVP is not differentiable "
            "in the point x or time t it is taken at)."
        )


def _jvp_transpose(ct, x, t, dx, dt, *, spec, nd):
    _residuals_only("transpose of torch_jvp", x, t)
    ct = ad.instantiate_zeros(ct)
    gx, gt = _vjp_p.bind(x, t, ct, spec=spec, nd=nd)
    return (
        None,
        None,
        _sum_to(gx, dx.aval.shape) if ad.is_undefined_primal(dx) else None,
        _sum_to(gt, dt.aval.shape) if ad.is_undefined_primal(dt) else None,
    )


def _vjp_transpose(cts, x, t, ct, *, spec, nd):
    _residuals_only("transpose of torch_vjp", x, t)
    cgx, cgt = (ad.instantiate_zeros(c) for c in cts)
    dy = _jvp_p.bind(x, t, cgx, cgt, spec=spec, nd=nd)
    return None, None, _sum_to(dy, ct.aval.shape)


_jvp_p.def_impl(_jvp_impl)
_jvp_p.def_abstract_eval(_jvp_abstract)
mlir.register_lowering(_jvp_p, mlir.lower_fun(_jvp_impl, multiple_results=False))
batching.primitive_batchers[_jvp_p] = _batcher(_jvp_p, (True, False, True, False))
ad.primitive_transposes[_jvp_p] = _jvp_transpose
_vjp_p.def_impl(_vjp_impl)
_vjp_p.def_abstract_eval(_vjp_abstract)
mlir.register_lowering(_vjp_p, mlir.lower_fun(_vjp_impl, multiple_results=True))
batching.primitive_batchers[_vjp_p] = _batcher(_vjp_p, (True, False, True))
ad.primitive_transposes[_vjp_p] = _vjp_transpose
