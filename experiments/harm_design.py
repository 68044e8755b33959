"""Claim 4 on trained networks, as a designed experiment: does sample quality follow the transport
residual or the Jacobian asymmetry lambda? This module is the design: the base networks and the
perturbed copies of each. The measurement is :mod:`experiments.harm_measure`, the analysis
:mod:`experiments.harm_analysis` (statistics: :mod:`experiments.rankstats`), the publishing
:mod:`experiments.harm_publish`.

On the 2D mixture (exact ``p_t``, score and velocity), base networks that differ in quality
(objective, training length and, in the full run, width) come from *independent training runs*:
every (objective, width, seed) trains from its own initialisation on its own training set and
batches (:meth:`Context.network` with ``seed``), so runs are independent replicates and the
snapshots of one run are one cluster. Each base network is measured as trained, a second time
with fresh draws (the *replica*: the metrics' own noise, from which the analysis's margins are
derived), and with an added score error ``e`` of several ``L2(p_t)`` sizes (relative to
``||grad log p_t||``), each sign:

* *harmless*: ``e = c(t) A grad log p_t`` (oracle score, ``A`` antisymmetric). The residual of a
  velocity ``v`` against ``p_t`` is ``R(v) = d_t log p_t + div v + v . grad log p_t``, linear in
  ``v``; the error adds ``w = -g^2/2 e`` to the velocity and ``div w + w . grad log p_t =
  -g^2 c / 2 (tr(A H) + s^T A s) = 0`` (``H`` the symmetric Hessian of ``log p_t``): the residual
  is unchanged *exactly*, while ``A H`` is not symmetric, so lambda rises;
* *generic*: random Fourier features of the same size, which raise both.

The perturbation size is a traced input (``TimeScaled`` scales), and every variant of a base
network is the same PyTree structure (score + harmless + generic, with zero scales for the
families not applied), so each architecture compiles each measurement once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from experiments.assets import Context
from experiments.objectives import train
from wgfm import gmm, perturbations

# "replica": the trained network again, with fresh draws (size 0): the metrics' own noise
FAMILIES = ("trained", "replica", "+harmless", "+generic")
COPIES = FAMILIES[2:]


@dataclasses.dataclass(frozen=True)
class Base:
    """A base network: one snapshot of one training run. ``run`` names the run (objective,
    width, seed): the cluster, the unit the analysis resamples. ``score`` builds its score
    field ``(x, t) -> (D,)``, ``velocity`` its velocity field. ``final``: the run's last
    snapshot, the network as trained, which alone gets the replica and the copies (one paired
    contrast per run: the snapshots of a run would repeat its draw, not add independent ones)."""

    name: str
    run: str
    score: Callable[[], Callable]
    velocity: Callable[[], Callable]
    final: bool


def base_networks(ctx: Context) -> list[Base]:
    """Every snapshot (``Sizes.snapshots``) of one training run per objective
    (``Sizes.harm_objectives``), width (``Sizes.harm_archs``) and seed (``range(harm_seeds)``),
    each run an independent replicate (``Context.network(..., seed=...)``)."""
    sz = ctx.sizes
    bases = []
    for arch in sz.harm_archs or (sz.arch_vector,):
        for seed in range(sz.harm_seeds):
            for obj in sz.harm_objectives:
                run = train(ctx, obj, seed=seed, arch=arch, steps=sz.harm_train_steps)
                label = f"{obj}, {arch}, seed {seed}"
                for step in sorted({max(1, int(f * run.steps)) for f in sz.snapshots}):
                    net = run.at(step)
                    bases.append(
                        Base(
                            f"{label}, step {step}",
                            label,
                            net.score,
                            net.velocity,
                            step == run.steps,
                        )
                    )
    return bases


def oracle_bases(ctx: Context, runs: int) -> list[Base]:
    """``runs`` "networks" that are the exact score of the 2D mixture, one per run: a design
    whose effects are known (the harmless copies keep every marginal, the generic ones do not)."""
    mix, proc = ctx.mix2d, ctx.process
    return [
        Base(
            f"oracle {i}",
            f"oracle {i}",
            lambda: gmm.score_field(mix, proc),
            lambda: gmm.velocity_field(mix, proc),
            True,
        )
        for i in range(runs)
    ]


def variants(strengths, final: bool) -> list[tuple[str, float]]:
    """``(family, size)`` of every field measured for a base network: as trained; for a
    ``final`` one also the replica and each copy family at each strength with both signs. In 2D the unit antisymmetric ``A``
    is one of two rotations, and a network's own error (an angular bias, say) can be undone by
    one direction and doubled by the other; with both, neither is favoured by the draw."""
    if not final:
        return [("trained", 0.0)]
    return [("trained", 0.0), ("replica", 0.0)] + [
        (f, sign * s) for f in COPIES for s in strengths for sign in (1.0, -1.0)
    ]


def unit_errors(ctx: Context) -> dict:
    """The harmless and generic errors scaled to ``||e_t||_{L2(p_t)} = ||grad log p_t||_{L2(p_t)}``
    at every time (``TimeScaled``); a size multiplies their scales."""
    mix, proc = ctx.mix2d, ctx.process
    k1, k2, k3 = jax.random.split(ctx.key("harm-design-errors"), 3)
    score = gmm.score_field(mix, proc)
    a = perturbations.random_antisymmetric(2, key=k1).astype(jnp.float32)
    errs = {
        "+harmless": perturbations.AntisymmetricScore(score, a),
        "+generic": perturbations.GenericError(2, key=k2),
    }
    return {
        k: perturbations.scale_to_size(e, mix, proc, 1.0, key=k3, relative_to=score)
        for k, e in errs.items()
    }


def designed_score(net_score, units: dict, family: str, size: float):
    """``s_theta + size e_family`` as one PyTree structure for every family and size (the
    trained network and its replica: zero scales)."""
    if family not in FAMILIES:
        raise ValueError(f"`family` must be one of {FAMILIES}, got {family!r}.")
    h, g = units["+harmless"], units["+generic"]
    ch = size if family == "+harmless" else 0.0
    cg = size if family == "+generic" else 0.0
    return perturbations.perturb(
        perturbations.perturb(net_score, dataclasses.replace(h, scales=ch * h.scales)),
        dataclasses.replace(g, scales=cg * g.scales),
    )
