"""Probes drawn in rounds until the asymmetry ratio's standard error reaches a target.

A fixed probe count is too many where the skew part is spread out (one VJP probe already gives
about ``1 / sqrt(2 r_eff)`` relative error, :mod:`wgfm.diagnostics.spectrum`) and too few where
it is concentrated or ``lambda`` is small for the forward estimator. :func:`adaptive_probe_asymmetry`
draws ``round_probes`` probes at a time from one linearisation of the field, and stops as soon
as ``ratio_se / ratio <= rel_se`` or ``max_probes`` are spent. It is a ``lax.while_loop`` over
a fixed buffer of per-probe scalars, so it jits and vmaps: under ``vmap`` each sample stops at
its own round (finished samples are carried unchanged while the others draw).

Stopping on the estimated s.e. makes the number of probes random; the estimate is still the
plain ratio of the means of the probes drawn (the tests bound its bias over many keys by its
own s.e.). Stopping when the estimated s.e. happens to be small makes the reported s.e.
somewhat optimistic at the first rounds (tests/test_spectrum_adaptive.py measures it).
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, PRNGKeyArray

from ..typing import Field, Scalar
from ._common import check_finite
from .jacobian import (
    ProbeAsymmetry,
    ProbeKind,
    ProbeMethod,
    asymmetry,
    make_probes,
    probe_maps,
    probe_terms_of,
    random_indices,
    sub_jacobian,
    summarise_terms,
)
from .spectrum import estimate_effective_rank


class AdaptiveProbeAsymmetry(eqx.Module):
    """What :func:`adaptive_probe_asymmetry` returns: the ``estimate`` over the ``num_probes``
    probes drawn, the network ``passes`` they took (``2 num_probes + 1``: a JVP and a VJP, or
    two JVPs, per probe, and the primal of the one linearisation), the relative s.e. reached
    (``ratio_se / ratio``), and the skew part's effective rank estimated from the same terms
    (None for the forward estimator, whose terms do not measure it)."""

    estimate: ProbeAsymmetry
    num_probes: Array
    passes: Array
    relative_se: Array
    effective_rank: Array | None


def _relative_se(p: ProbeAsymmetry) -> Array:
    """``ratio_se / ratio``: 0 where both are 0 (an exact zero), inf where only the ratio is."""
    r, se = p.stats.ratio, p.ratio_se
    return jnp.where(r > 0, se / jnp.where(r > 0, r, 1.0), jnp.where(se == 0, 0.0, jnp.inf))


def adaptive_probe_asymmetry(
    field: Field,
    x: Array,
    t: Scalar,
    *,
    key: PRNGKeyArray,
    rel_se: float = 0.1,
    round_probes: int = 8,
    max_probes: int = 256,
    kind: ProbeKind = "rademacher",
    method: ProbeMethod = "auto",
    checked: bool = True,
) -> AdaptiveProbeAsymmetry:
    """:func:`wgfm.diagnostics.probe_asymmetry` with probes drawn ``round_probes`` at a time
    (round ``i`` from ``fold_in(key, i)``) until the ratio's relative s.e. is at most ``rel_se``
    or ``max_probes`` are drawn.

    Args:
        field: ``(x, t) -> array shaped like x``.
        x: one sample, any shape (``D = x.size``).
        t: one time.
        key: the probes' key.
        rel_se: the target ``ratio_se / ratio`` (> 0).
        round_probes: probes per round (>= 2: the first round must give a spread).
        max_probes: the probe budget, a multiple of ``round_probes``.
        kind, method, checked: as in :func:`wgfm.diagnostics.probe_asymmetry`.

    Returns:
        :class:`AdaptiveProbeAsymmetry`; scalars, so ``vmap`` over samples gives ``(N,)``.

    Raises:
        ValueError: ``rel_se`` not a finite number > 0, ``round_probes < 2``, or
            ``max_probes`` not a multiple of ``round_probes``.
    """
    if not (isinstance(rel_se, int | float) and math.isfinite(rel_se) and rel_se > 0):
        raise ValueError(f"`rel_se` must be a finite number > 0, got {rel_se!r}.")
    if int(round_probes) < 2:
        raise ValueError(f"`round_probes` must be an integer >= 2, got {round_probes}.")
    if int(max_probes) < int(round_probes) or int(max_probes) % int(round_probes):
        raise ValueError(
            f"`max_probes` must be a positive multiple of `round_probes` = {round_probes}, "
            f"got {max_probes}."
        )
    x = jnp.asarray(x)
    fx, jvp, vjp = probe_maps(field, x, t, method=method)
    dim, dt, size = fx.shape[0], jnp.result_type(x), int(round_probes)
    rounds = int(max_probes) // size
    slots = jnp.arange(rounds * size)

    def summary(state):
        i, a2, f2 = state
        return summarise_terms(a2, f2, slots < i * size)

    def more(state):
        return (state[0] == 0) | ((state[0] < rounds) & (_relative_se(summary(state)) > rel_se))

    def draw(state):
        i, a2, f2 = state
        probes = make_probes(jax.random.fold_in(key, i), size, (dim,), kind=kind, dtype=dt)
        ta, tf = probe_terms_of(jvp, vjp, probes)
        start = (i * size,)
        a2 = jax.lax.dynamic_update_slice(a2, ta.astype(a2.dtype), start)
        return i + 1, a2, jax.lax.dynamic_update_slice(f2, tf.astype(f2.dtype), start)

    zeros = jnp.zeros(rounds * size, fx.dtype)
    state = jax.lax.while_loop(more, draw, (jnp.asarray(0), zeros, zeros))
    i, a2, f2 = state
    a2, f2 = check_finite((a2, f2, fx), x, t, "values or probe estimates", checked=checked)[:2]
    est = summarise_terms(a2, f2, slots < i * size)
    n = i * size
    rank = None if vjp is None else estimate_effective_rank(a2, dim, kind=kind, mask=slots < n)
    return AdaptiveProbeAsymmetry(est, n, 2 * n + 1, _relative_se(est), rank)


class AdaptiveSubAndProbe(eqx.Module):
    """Claim 1's probe-path kernel with adaptive stopping: ``(sub-Jacobian lambda, probe
    estimate of lambda, its s.e., network passes, effective rank)`` at ``(x, t)``: the ``k x k``
    principal block on random coordinates (as :class:`wgfm.diagnostics.SubAndProbe`) and
    :func:`adaptive_probe_asymmetry` with ``rel_se``. The effective rank is 0 where the terms
    do not resolve it (the forward estimator's, or a spread not yet measurable)."""

    k: int = eqx.field(static=True)
    rel_se: float = eqx.field(static=True)
    max_probes: int = eqx.field(static=True)
    round_probes: int = eqx.field(static=True, default=8)

    def __call__(self, field, x, t, *, key, checked: bool = True) -> tuple[Array, ...]:
        k1, k2 = jax.random.split(key)
        idx = random_indices(k1, x.size, self.k)
        sub = asymmetry(sub_jacobian(field, x, t, idx, checked=checked)).ratio
        out = adaptive_probe_asymmetry(
            field,
            x,
            t,
            key=k2,
            rel_se=self.rel_se,
            round_probes=self.round_probes,
            max_probes=self.max_probes,
            checked=checked,
        )
        rank = jnp.zeros(()) if out.effective_rank is None else out.effective_rank
        p = out.estimate
        return sub, p.stats.ratio, p.ratio_se, out.passes, rank
