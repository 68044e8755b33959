"""The latent setting of the paper: a VAE's objective and training, data sets in its latent
space scaled to unit variance (as latent diffusion does), and decoded DDIM samples.

The VAE is any object with the per-sample ``init / moments / encode / decode`` of
:class:`wgfm.models.vae.VAE`; this module never imports flax. Its objective is the negative
ELBO with a Gaussian decoder of fixed standard deviation ``obs_std`` (Kingma & Welling 2014):
``-log N(x; decode(z), obs_std^2 I) + kl_weight * KL(q(z|x) || N(0, I))`` with one
reparameterised ``z ~ q(z|x)``; ``kl_weight = 1`` is the exact single-sample ELBO (in nats).
Training is :func:`wgfm.train.fit`'s loop with the VAE's objective (:func:`fit_vae`), so a
VAE run checkpoints, resumes and logs exactly as a diffusion run does.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PRNGKeyArray

from .train import TrainConfig, TrainResult, check_data, fit_objective


def gaussian_kl(mean: Array, log_var: Array) -> Array:
    """``KL(N(mean, diag(exp(log_var))) || N(0, I))`` summed over all entries (closed form)."""
    return 0.5 * jnp.sum(mean**2 + jnp.exp(log_var) - 1.0 - log_var)


def vae_loss(
    vae, params, x: Array, *, key: PRNGKeyArray, kl_weight: float = 1.0, obs_std: float = 0.1
) -> Array:
    """Per-example negative ELBO (nats) of one image ``x`` (see the module docstring)."""
    mean, log_var = vae.moments(params, x)
    z = mean + jnp.exp(0.5 * log_var) * jax.random.normal(key, mean.shape, mean.dtype)
    err = x - vae.decode(params, z)
    nll = 0.5 * jnp.sum(err**2) / obs_std**2 + x.size * (
        math.log(obs_std) + 0.5 * math.log(2 * math.pi)
    )
    return nll + kl_weight * gaussian_kl(mean, log_var)


class VAEObjective(eqx.Module):
    """The mean negative ELBO of a batch (:func:`vae_loss` per image, one reparameterised draw
    each): the objective :func:`fit_vae` hands to :func:`wgfm.train.fit_objective`."""

    vae: Any = eqx.field(static=True)
    kl_weight: float = eqx.field(static=True, default=1.0)
    obs_std: float = eqx.field(static=True, default=0.1)

    def __check_init__(self):
        if not (self.obs_std > 0 and self.kl_weight >= 0):
            raise ValueError(
                f"`obs_std` must be > 0 and `kl_weight` >= 0, got {self.obs_std}, {self.kl_weight}."
            )

    def init(self, key: PRNGKeyArray, sample_shape, dtype=jnp.float32):
        del sample_shape  # the VAE's image shape is fixed by its architecture
        return self.vae.init(key, dtype)

    def describe(self) -> dict:
        return {"loss": "negative ELBO", "kl_weight": self.kl_weight, "obs_std": self.obs_std}

    def __call__(self, params, x: Array, key: PRNGKeyArray) -> Array:
        keys = jax.random.split(key, x.shape[0])

        def loss(xi, ki):
            return vae_loss(
                self.vae, params, xi, key=ki, kl_weight=self.kl_weight, obs_std=self.obs_std
            )

        return jnp.mean(jax.vmap(loss)(x, keys))


def fit_vae(
    vae,
    data,
    config: TrainConfig,
    *,
    key: PRNGKeyArray,
    kl_weight: float = 1.0,
    obs_std: float = 0.1,
    run_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = False,
) -> TrainResult:
    """Train ``vae`` on images ``data`` ``(N, 28, 28, C)`` by the mean negative ELBO over batches,
    with :func:`wgfm.train.fit`'s loop (:func:`wgfm.train.fit_objective`): its optimiser,
    checkpoints under ``run_dir/checkpoints`` with their checksums, ``metrics.jsonl``, the
    refusal to resume a checkpoint trained with another config or ``kl_weight``/``obs_std``,
    and a tqdm bar with the logged loss when ``progress``. Use ``result.params`` (the EMA,
    ``result.ema``, is kept too)."""
    objective = VAEObjective(vae, float(kl_weight), float(obs_std))
    return fit_objective(
        objective,
        data,
        config,
        key=key,
        run_dir=run_dir,
        resume=resume,
        progress=progress,
        desc="VAE",
    )


def encode_dataset(
    vae,
    params,
    images,
    *,
    key: PRNGKeyArray | None = None,
    scale: float | None = None,
    batch_size: int = 500,
) -> tuple[np.ndarray, float]:
    """Latents of ``images`` times ``scale`` and the scale: the posterior means (a sample each
    with ``key``), scaled by ``1 / std`` of all their entries unless ``scale`` is given (e.g. the
    training set's, to encode held-out data alike), as latent diffusion scales its latents."""
    images = check_data(images)
    keys = None if key is None else jax.random.split(key, images.shape[0])
    enc = jax.jit(jax.vmap(lambda x, k: vae.encode(params, x, key=k)))
    out = []
    for i in range(0, images.shape[0], batch_size):
        k = None if keys is None else keys[i : i + batch_size]
        out.append(np.asarray(enc(jnp.asarray(images[i : i + batch_size]), k)))
    z = np.concatenate(out)
    if scale is None:
        scale = float(1.0 / np.std(z))
    if not (np.isfinite(scale) and scale > 0):
        raise ValueError(f"`scale` must be positive and finite, got {scale}.")
    return (z * scale).astype(z.dtype), float(scale)


def decode_latents(vae, params, latents, scale: float, *, batch_size: int = 500) -> np.ndarray:
    """Images decoded from scaled ``latents`` (those of :func:`encode_dataset` with ``scale``)."""
    dec = jax.jit(jax.vmap(lambda z: vae.decode(params, z / scale)))
    latents = np.asarray(latents)
    return np.concatenate(
        [
            np.asarray(dec(jnp.asarray(latents[i : i + batch_size])))
            for i in range(0, latents.shape[0], batch_size)
        ]
    )


def sample_decoded(
    vae,
    vae_params,
    eps_field,
    process,
    scale: float,
    num_samples: int,
    *,
    key: PRNGKeyArray,
    num_steps: int = 50,
) -> tuple[np.ndarray, np.ndarray]:
    """DDIM (:func:`wgfm.samplers.sample_ddim`, ``eta = 0``) with an eps-network in the scaled
    latent space of ``vae``, then decoded: ``(images, latents)``."""
    from .samplers import sample_ddim

    res = sample_ddim(
        eps_field,
        process,
        key=key,
        num_samples=num_samples,
        shape=vae.latent_shape,
        kind="eps",
        num_steps=num_steps,
    )
    z = np.asarray(res.samples)
    return decode_latents(vae, vae_params, z, scale), z
