"""The per-sample measurements of the paper's two tests, shaped for :func:`sweep`.

Each is a frozen PyTree ``diagnostic(field, x, t, *, [key,] checked)``: its sizes are static
fields, so one compiled sweep serves every field, sample and noise level of the same shapes.

- :class:`ExactAsymmetry`: ``(lambda, NAsym)`` of the exact Jacobian (the differential
  constraint, DESIGN §1: ``lambda = ||J - J^T||_F / ||J||_F``).
- :class:`SubAndProbe`: a ``K x K`` principal sub-Jacobian (a certificate: any asymmetric block
  proves non-conservativity) and the probe estimate of the full ratio with its standard error.
- :class:`Circulation`: the circulation of the authors' loop families and a circle through a
  noisy sample (the integral constraint).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

from ..processes import AbstractProcess
from . import loops
from .jacobian import (
    JACOBIAN_CHUNK,
    asymmetry,
    jacobian,
    probe_asymmetry,
    random_indices,
    sub_jacobian,
)

FAMILIES = ("circle", "bridge", "pair rotation", "noisy copies")


class ExactAsymmetry(eqx.Module):
    """``(lambda, NAsym)`` of the exact ``D x D`` Jacobian of ``field`` at ``(x, t)``, scalars
    (docs/design.md §1); called as ``kernel(field, x, t, *, checked)``.

    Attributes:
        chunk_size: Jacobian columns at a time (None: all at once; default :func:`jacobian`'s).
            A U-Net's 784 tangents at once would hold 784 copies of its activations; chunks
            bound that memory.
    """

    chunk_size: int | None = eqx.field(static=True, default=JACOBIAN_CHUNK)

    def __call__(self, field, x, t, *, checked: bool = True) -> tuple[Array, Array]:
        a = asymmetry(jacobian(field, x, t, chunk_size=self.chunk_size, checked=checked))
        return a.ratio, a.nasym


class SubAndProbe(eqx.Module):
    """``(sub-Jacobian lambda, probe estimate of lambda, its standard error)`` at ``(x, t)``,
    scalars: the ``k x k`` principal block on random coordinates and ``num_probes`` Rademacher
    probes (one key per sample); called as ``kernel(field, x, t, *, key, checked)``.

    Attributes:
        k: the block's size.
        num_probes: probes, at least 2 (the s.e. is :attr:`ProbeAsymmetry.ratio_se`).
    """

    k: int = eqx.field(static=True)
    num_probes: int = eqx.field(static=True)

    def __check_init__(self):
        if int(self.num_probes) < 2:
            raise ValueError(
                f"`num_probes` must be at least 2 (a standard error needs two), got "
                f"{self.num_probes!r}."
            )

    def __call__(self, field, x, t, *, key, checked: bool = True) -> tuple[Array, Array, Array]:
        k1, k2 = jax.random.split(key)
        idx = random_indices(k1, x.size, self.k)
        sub = asymmetry(sub_jacobian(field, x, t, idx, checked=checked)).ratio
        probe = probe_asymmetry(field, x, t, key=k2, num_probes=self.num_probes, checked=checked)
        return sub, probe.stats.ratio, probe.ratio_se


class Circulation(eqx.Module):
    """``{family: (|I|, |I_norm|, |I/L|)}`` of one loop per family through ``(x0, x_t)`` at time
    ``t`` (``x`` is the pair), scalars; called as ``kernel(field, (x0, x_t), t, *, key,
    checked)``. All families' points go through one evaluation of the field: one copy of a
    network in the compiled program instead of one per family.

    Families: a circle of radius ``sigma_t / 2`` (at least 0.05) in a random plane; the authors'
    Brownian bridge from ``x_t`` back to itself (step 0.05); their pair rotation about the clean
    point (``||x - alpha_t x0||`` fixed); their cycle through noisy copies of ``x0`` kept on the
    noise shell.

    Attributes:
        process: the forward process (``alpha_t``, ``sigma_t``).
        families: among :data:`FAMILIES`.
        num_points: points of the circle and pair-rotation loops.
        bridge_steps: Brownian-bridge steps.
        noisy_copies: copies of the noisy-copy cycle.
        noisy_points: points per segment of that cycle.
    """

    process: AbstractProcess
    families: tuple[str, ...] = eqx.field(static=True)
    num_points: int = eqx.field(static=True)  # circle and pair-rotation loops
    bridge_steps: int = eqx.field(static=True)
    noisy_copies: int = eqx.field(static=True)
    noisy_points: int = eqx.field(static=True)  # per segment of the noisy-copy cycle

    def __check_init__(self):
        bad = [f for f in self.families if f not in FAMILIES]
        if bad or not self.families:
            raise ValueError(
                f"`families` must be a non-empty tuple of {FAMILIES}, got {self.families!r}."
            )

    def __call__(self, field, x, t, *, key, checked: bool = True):
        x0, xt = x
        lps = [
            self.loop(fam, x0, xt, t, jax.random.fold_in(key, i))
            for i, fam in enumerate(self.families)
        ]
        reps = loops.loop_reports(field, lps, t, checked=checked)
        return {
            fam: (jnp.abs(r.I), jnp.abs(r.I_norm), jnp.abs(r.I_over_L))
            for fam, r in zip(self.families, reps, strict=True)
        }

    def loop(self, family: str, x0, xt, t, key):
        """One family's loop through the noisy sample.

        Args:
            family: one of :attr:`families`.
            x0: the clean sample, shape ``(*shape)``.
            xt: the noisy sample, shape ``(*shape)``.
            t: the time, a scalar.
            key: the loop's randomness (plane, increments, pairing or copies).

        Returns:
            The closed loop, shape ``(m + 1, *shape)``.
        """
        p, n = self.process, self.num_points
        if family == "circle":
            q, _ = jnp.linalg.qr(jax.random.normal(key, (xt.size, 2), xt.dtype))
            radius = 0.5 * jnp.maximum(p.sigma(t), 0.1)
            u, v = q[:, 0].reshape(xt.shape), q[:, 1].reshape(xt.shape)
            return loops.circle(xt, u, v, radius, n)
        if family == "bridge":
            return loops.brownian_bridge(xt, self.bridge_steps, 0.05, key=key)
        if family == "pair rotation":
            return loops.pair_rotation(xt, p.alpha(t) * x0, n, key=key)
        return loops.noisy_copy_cycle(
            p, x0, t, num_copies=self.noisy_copies, points_per_segment=self.noisy_points, key=key
        )
