"""Configurations of the reproduction: one frozen dataclass of sizes per preset and mode."""

from __future__ import annotations

import dataclasses
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Every size the experiments use. ``quick`` fits in ~3 minutes on 2 CPU cores."""

    num_levels: int  # noise levels of the sweeps (the authors: 100, t = 1, 11, ..., 991 of 1000)
    num_diag_samples: int  # samples per level for Jacobian/loop diagnostics
    train_steps_2d: int
    train_steps_10d: int
    train_steps_digits: int
    batch_size: int
    num_eval_samples: int  # samples for sample-quality metrics
    loop_points: tuple[int, ...]  # points per loop, refinements for the oracle's convergence
    bridge_steps: int  # Brownian-bridge loop steps (the authors: 1000)
    noisy_copies: int  # noisy-copy cycle: copies (the authors: 10)
    noisy_points: int  # points per segment (the authors: 100)
    strengths: tuple[float, ...]  # perturbation sizes relative to ||v||_{L2(p_t)}
    helmholtz_grid: int
    num_likelihood: int  # held-out points for the likelihood of claim 5
    snapshots: tuple[float, ...]  # training fractions evaluated in claim 4 (quality vs lambda/R)
    arch_vector: str  # network for the 2D and 10-D mixtures (a name in wgfm.models.CONFIGS)
    arch_digits: str  # U-Net for the 8x8 digits


QUICK = Sizes(
    num_levels=10,
    num_diag_samples=12,
    train_steps_2d=1200,
    train_steps_10d=1200,
    train_steps_digits=200,
    batch_size=256,
    num_eval_samples=2000,
    loop_points=(16, 32, 64),
    bridge_steps=200,
    noisy_copies=5,
    noisy_points=50,
    strengths=(0.25, 1.0),
    helmholtz_grid=48,
    num_likelihood=64,
    snapshots=(0.1, 0.3, 1.0),
    arch_vector="mlp-small",
    arch_digits="unet-tiny",
)

FULL = Sizes(
    num_levels=100,
    num_diag_samples=64,
    train_steps_2d=8000,
    train_steps_10d=8000,
    train_steps_digits=3000,
    batch_size=512,
    num_eval_samples=4000,
    loop_points=(16, 32, 64, 128, 256),
    bridge_steps=1000,
    noisy_copies=10,
    noisy_points=100,
    strengths=(0.125, 0.25, 0.5, 1.0, 2.0),
    helmholtz_grid=96,
    num_likelihood=256,
    snapshots=(0.05, 0.1, 0.2, 0.4, 0.7, 1.0),
    arch_vector="mlp",
    arch_digits="unet-digits",
)

PRESETS = ("default", "digits", "mnist", "cifar10-paper")


@dataclasses.dataclass(frozen=True)
class ReproduceConfig:
    """``wgfm reproduce`` options.

    Args:
        quick: the ~3-minute CPU version (fewer levels, samples and training steps).
        out: output directory for REPORT.md, results.json and figures/.
        preset: 'default' (2D and 10-D mixtures plus digits), 'digits' (digits only), 'mnist' or
            'cifar10-paper' (need --data DIR; the latter is the authors' configuration, for GPUs).
        data: directory holding the MNIST IDX or CIFAR-10 python batches for those presets.
        seed: master random seed; every key derives from it.
        only: run only these claims (1..5); empty runs all.
    """

    quick: bool = False
    out: Path = Path("results/reproduce")
    preset: str = "default"
    data: Path | None = None
    seed: int = 0
    only: tuple[int, ...] = ()

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise ValueError(f"`preset` must be one of {PRESETS}, got {self.preset!r}.")
        if self.preset in ("mnist", "cifar10-paper") and self.data is None:
            raise ValueError(
                f"`--preset {self.preset}` needs `--data DIR` with the local data set."
            )
        bad = [c for c in self.only if c not in range(1, 6)]
        if bad:
            raise ValueError(f"`only` must list claims among 1..5, got {bad}.")

    @property
    def sizes(self) -> Sizes:
        return QUICK if self.quick else FULL
