"""The assets a reproduction run shares between claims: data, exact oracles and trained
networks, each built once, lazily, by a :class:`Context`.

Every network is trained with :func:`wgfm.train.fit` from a key derived from the master seed and
its name, so any claim can be rerun alone and gets the same network.
"""

from __future__ import annotations

import dataclasses
import functools
import time
import zlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from rich.console import Console

from experiments.config import VAE_TRAINING, VAE_WIDTH, ReproduceConfig, Sizes
from wgfm import data as wdata
from wgfm import gmm
from wgfm.diagnostics.controls import gaussian_fit_score, untrained_params
from wgfm.presets import MIXTURES
from wgfm.processes import AbstractProcess
from wgfm.train import TrainConfig, fit


@dataclasses.dataclass(frozen=True)
class Trained:
    """A trained (or untrained) network with the time it took."""

    name: str
    model: Any  # wgfm.models.Model
    params: Any
    process: AbstractProcess
    train_seconds: float
    steps: int
    final_loss: float
    snapshots: dict = dataclasses.field(default_factory=dict)  # step -> EMA params on the way

    def at(self, step: int) -> Trained:
        """The same run's EMA parameters after ``step`` updates (a training-curve snapshot)."""
        if step == self.steps:
            return self
        if step not in self.snapshots:
            raise ValueError(f"`step` must be one of {sorted(self.snapshots)}, got {step}.")
        # Time prorated: the snapshots come out of one run.
        secs = self.train_seconds * step / max(self.steps, 1)
        return Trained(
            f"{self.name}@{step}",
            self.model,
            self.snapshots[step],
            self.process,
            secs,
            step,
            float("nan"),
        )

    def score(self):
        return self.model.score(self.params, self.process)

    def velocity(self):
        return self.model.velocity(self.params, self.process)


# Image sets whose networks are checkpointed under OUT/networks (long to train).
CHECKPOINTED = ("mnist", "mnist-latent", "cifar10")


@dataclasses.dataclass(frozen=True)
class Latent:
    """The latent setting's VAE, its parameters, the scaled latents of the digits and the scale."""

    vae: object  # wgfm.models.VAE
    params: object
    latents: np.ndarray
    scale: float
    seconds: float


class Context:
    """Configuration, keys and lazily built shared assets."""

    def __init__(self, config: ReproduceConfig, *, sizes: Sizes | None = None, mesh=None):
        self.config = config
        self.sizes: Sizes = sizes or config.sizes
        self.root_key = jax.random.key(config.seed)
        self._cache: dict[str, object] = {}
        self.process: AbstractProcess = config.make_process()
        self.mesh = mesh  # a data mesh (wgfm.distributed): networks train data parallel on it
        self.datasets: tuple[str, ...] = config.datasets
        self.vector_sets: tuple[str, ...] = config.vector_sets
        self.console = Console(stderr=True)

    def key(self, name: str):
        """A key for ``name``, independent of the order in which assets are built."""
        return jax.random.fold_in(self.root_key, zlib.crc32(name.encode()))

    def cached(self, name: str, build: Callable[[], Any]) -> Any:
        """The asset ``name``, built by ``build()`` on first use and kept for the run."""
        if name not in self._cache:
            self._cache[name] = build()
        return self._cache[name]

    # -- oracles --------------------------------------------------------------------------------

    @functools.cached_property
    def mix2d(self) -> gmm.GaussianMixture:
        """8 equal Gaussians on a circle of radius 3 (std 0.5)."""
        return gmm.ring(num_modes=8, radius=3.0, std=0.5, dtype=jnp.float32)

    @functools.cached_property
    def mix10d(self) -> gmm.GaussianMixture:
        """4 components in 10-D, unequal weights, anisotropic full covariances."""
        m = gmm.random_mixture(10, 4, key=self.key("mix10d"), scale=2.0, anisotropy=4.0)
        return jax.tree.map(lambda a: a.astype(jnp.float32), m)

    def data(self, name: str, *, seed: int | None = None) -> np.ndarray:
        """The training set ``name``: 20,000 draws of a mixture, or an image set. ``seed`` (the
        mixtures only) gives an independent replicate: its own 20,000 draws."""
        if seed is not None and name not in MIXTURES:
            raise ValueError(f"`seed` needs a mixture data set {MIXTURES}, got {name!r}.")
        tag = name if seed is None else f"{name}-seed{seed}"
        if tag not in self._cache:
            n = 20_000
            if name in MIXTURES:
                mix = self.mix2d if name == "2d" else self.mix10d
                x = mix.sample(n, key=self.key(f"data{tag}"))
            elif name == "mnist-latent":
                x = self.latent.latents
            elif name in ("digits", "mnist", "cifar10"):
                x = wdata.load(name, self.config.data)
            else:
                raise ValueError(f"unknown data set {name!r}")
            self._cache[tag] = np.asarray(x, np.float32)
        return self._cache[tag]  # type: ignore[return-value]

    def clean_samples(self, data: str, n: int, key) -> jax.Array:
        """``n`` clean points ``x0`` of ``data`` ``(n, *shape)``: draws from the mixture, or
        ``n`` distinct images of the set chosen at random."""
        if data in MIXTURES:
            return (self.mix2d if data == "2d" else self.mix10d).sample(n, key=key)
        x = self.data(data)
        if n > x.shape[0]:
            raise ValueError(f"{data}: {n} samples exceed its {x.shape[0]} images.")
        return jnp.asarray(x[np.asarray(jax.random.choice(key, x.shape[0], (n,), replace=False))])

    # -- networks ---------------------------------------------------------------------------------

    def network(
        self,
        data: str,
        kind: str = "eps",
        *,
        conservative: bool = False,
        steps: int | None = None,
        weighting: str | None = None,
        seed: int | None = None,
        arch: str | None = None,
    ) -> Trained:
        """The network for ``data`` ('2d', '10d' or an image set) trained to predict
        ``kind`` for ``steps`` updates (default from the sizes; 0 gives the untrained
        network). Image networks train as ``wgfm train``'s preset of the same name (model,
        batch, learning rate, weighting; see :meth:`ReproduceConfig.image_training`) with the
        sizes' steps; the mixtures' networks as below, with uniform weighting unless
        ``weighting`` is given.

        MNIST (pixel and latent) and CIFAR-10 networks are checkpointed under ``OUT/networks/<name>`` and resumed
        from there, so an interrupted run loses no training and a rerun retrains nothing.

        ``seed=None`` gives the network the claims share: every kind starts from the same key
        and data (a controlled comparison). An integer ``seed`` (mixtures only) gives an
        independent replicate: its own training set (:meth:`data`), initialisation and batches,
        from a key of its own name, so replicates of any two kinds or seeds share no randomness.
        ``arch`` overrides the mixtures' architecture (``Sizes.arch_vector``)."""
        from wgfm.models import get_model

        image = data not in MIXTURES
        sz = self.sizes
        default = {"2d": sz.train_steps_2d, "10d": sz.train_steps_10d}.get(
            data, sz.train_steps_image
        )
        steps = default if steps is None else steps
        if image:
            if arch is not None:
                raise ValueError(f"`arch` needs a mixture data set {MIXTURES}, got {data!r}.")
            arch, base = self.config.image_training(sz)
        else:
            arch, base = arch or sz.arch_vector, TrainConfig(batch_size=sz.batch_size, lr=2e-3)
        weighting = weighting or base.weighting
        name = f"{data}-{kind}-{'cons' if conservative else 'free'}-{steps}-{weighting}"
        if seed is not None or (arch != sz.arch_vector and not image):
            name = f"{name}-{arch}-seed{seed}"
        if name in self._cache:
            return self._cache[name]  # type: ignore[return-value]
        model = get_model(arch, kind=kind, conservative=conservative)
        x = self.data(data, seed=seed)
        # seed None: the same init for every kind (a controlled comparison); else the name's own
        key = self.key(f"net-{data}" if seed is None else f"net-{name}")
        if steps == 0:
            params = untrained_params(model, key, x.shape[1:], jnp.float32)
            out = Trained(name, model, params, self.process, 0.0, 0, float("nan"))
        else:
            cfg = dataclasses.replace(
                base,
                steps=steps,
                warmup_steps=min(base.warmup_steps if image else 100, steps // 10),
                ema_decay=max(0.0, min(0.9999 if steps >= 50_000 else 0.999, 1.0 - 10.0 / steps)),
                weighting=weighting,
                log_every=max(1, min(100, steps)),
                checkpoint_every=max(1, min(steps, 5000)),
            )
            run_dir = None
            if data in CHECKPOINTED:
                run_dir = self.config.out / "networks" / name
            long = steps >= 1000 and image
            snaps = sorted({max(1, int(f * steps)) for f in sz.snapshots} - {steps})

            t0 = time.perf_counter()
            res = fit(
                model,
                self.process,
                x,
                cfg,
                key=key,
                run_dir=run_dir,
                resume=run_dir is not None,
                progress=long,
                mesh=self.mesh,
                snapshot_steps=snaps,
            )
            jax.block_until_ready(res.ema)
            secs = time.perf_counter() - t0
            loss = float(res.logged_losses[-1]) if len(res.logged_losses) else float("nan")
            self.console.log(f"trained {name} ({arch}): {steps} steps in {secs:.1f} s")
            out = Trained(name, model, res.ema, self.process, secs, steps, loss, res.snapshots)
        self._cache[name] = out
        return out

    @functools.cached_property
    def latent(self) -> Latent:
        """The VAE of the latent setting, trained on the MNIST digits (checkpointed under
        ``OUT/networks/vae-<steps>``, so a rerun retrains nothing), and the digits' scaled
        latents (posterior means times 1/std, as latent diffusion)."""
        from wgfm.latent import encode_dataset, fit_vae
        from wgfm.models import VAE, VAENet

        steps = self.sizes.vae_steps
        if steps < 1:
            raise ValueError(f"the latent setting needs `vae_steps` >= 1, got {steps}.")
        images = self.data("mnist")
        vae = VAE(VAENet(width=VAE_WIDTH))
        cfg = dataclasses.replace(
            VAE_TRAINING,
            steps=steps,
            warmup_steps=min(VAE_TRAINING.warmup_steps, steps // 10),
            checkpoint_every=max(1, min(steps, 500)),
            log_every=max(1, min(50, steps)),
        )
        t0 = time.perf_counter()
        res = fit_vae(
            vae,
            images,
            cfg,
            key=self.key("vae"),
            resume=True,
            progress=steps >= 1000,
            run_dir=self.config.out / "networks" / f"vae-{steps}",
        )
        latents, scale = encode_dataset(vae, res.params, images)
        secs = time.perf_counter() - t0
        self.console.log(f"VAE ({steps} steps) and encoding in {secs:.1f} s; scale {scale:.3f}")
        return Latent(vae, res.params, np.asarray(latents, np.float32), scale, secs)

    def generated(self, data: str, n: int) -> np.ndarray:
        """``n`` images from the trained network of the image set ``data`` by DDIM-50 (eta 0;
        latents are decoded): what the network generates, beside what it measures."""
        from wgfm.latent import decode_latents
        from wgfm.samplers import sample_ddim

        net = self.network(data)
        res = sample_ddim(
            net.model.field(net.params),
            self.process,  # type: ignore[arg-type]  (a VP-family process here)
            key=self.key(f"samples-{data}"),
            num_samples=n,
            shape=self.data(data).shape[1:],
            kind=net.model.kind,
            num_steps=50,
        )
        x = np.asarray(res.samples)
        if data == "mnist-latent":
            lat = self.latent
            x = decode_latents(lat.vae, lat.params, x, lat.scale)
        return x

    def oracle_score(self, data: str):
        """The exact score of the data law (mixtures), or for images the exact score of the
        Gaussian fitted to the data: a true gradient field on the same scale, as a control."""
        if data == "2d":
            return gmm.score_field(self.mix2d, self.process)
        if data == "10d":
            return gmm.score_field(self.mix10d, self.process)
        return gaussian_fit_score(self.data(data)[:10_000], self.process)
