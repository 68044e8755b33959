"""The latent setting of the paper: a VAE's objective and training, data sets in its latent
space scaled to unit variance (as latent diffusion does), and decoded DDIM samples.

The VAE is any object with the per-sample ``init / moments / encode / decode`` of
:class:`wgfm.models.vae.VAE`; this module never imports flax. Its objective is the negative
ELBO with a Gaussian decoder of fixed standard deviation ``obs_std`` (Kingma & Welling 2014):
``-log N(x; decode(z), obs_std^2 I) + kl_weight * KL(q(z|x) || N(0, I))`` with one
reparameterised ``z ~ q(z|x)``; ``kl_weight = 1`` is the exact single-sample ELBO (in nats).
Training reuses :func:`wgfm.train.make_optimizer` and :class:`wgfm.checkpoint.Checkpointer`, and,
as :func:`wgfm.train.fit` does, draws step ``s``'s batch and noise from ``(key, s)``, so a resumed
run continues exactly.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, PRNGKeyArray
from tqdm.auto import tqdm

from .data import batch_indices, data_position
from .train import TrainConfig, _check_data, make_optimizer


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


class VAEState(eqx.Module):
    """Parameters, optimiser state, step and RNG key of a VAE run."""

    params: Any
    opt_state: Any
    step: Array
    key: Array

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


class VAEResult(eqx.Module):
    """The final state and the logged ``(step, mean loss)`` pairs of this call."""

    state: VAEState
    logged_steps: np.ndarray
    logged_losses: np.ndarray

    @property
    def params(self):
        return self.state.params


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
) -> VAEResult:
    """Train ``vae`` on images ``data`` ``(N, 28, 28, C)`` by the mean negative ELBO over batches.

    Uses ``config``'s steps, batch_size, lr, warmup_steps, weight_decay, clip_norm (the optimiser
    of :func:`wgfm.train.make_optimizer`), checkpoint_every, keep_checkpoints and log_every; with
    ``run_dir`` it checkpoints to ``run_dir/checkpoints`` and ``resume`` continues from there.
    ``progress`` shows a tqdm bar with the logged loss."""
    data = _check_data(data)
    if obs_std <= 0 or kl_weight < 0:
        raise ValueError(f"`obs_std` must be > 0 and `kl_weight` >= 0, got {obs_std}, {kl_weight}.")
    n = data.shape[0]
    data_position(n, config.batch_size, 0)  # validates batch_size against the data size
    k_init, k_train, k_data = jax.random.split(key, 3)
    params = vae.init(k_init, data.dtype)
    optimizer = make_optimizer(config)
    state = VAEState(params, optimizer.init(params), jnp.asarray(0, jnp.int32), k_train)
    ckpt = None
    if run_dir is not None:
        from .checkpoint import Checkpointer

        ckpt = Checkpointer(Path(run_dir) / "checkpoints", max(2, config.keep_checkpoints))
        if resume and (restored := ckpt.restore_latest(state.as_dict())) is not None:
            state = VAEState(**restored[0])
    elif resume:
        raise ValueError("`resume=True` needs a `run_dir` to resume from.")
    step_fn = _make_vae_step(vae, optimizer, float(kl_weight), float(obs_std))
    meta = {"config": dataclasses.asdict(config), "kl_weight": kl_weight, "obs_std": obs_std}
    data_dev, logged, window = jnp.asarray(data), [], []
    start = int(state.step)
    bar = tqdm(total=config.steps, initial=start, disable=not progress, desc="VAE", leave=False)
    try:
        for s in range(start, config.steps):
            idx = jnp.asarray(batch_indices(k_data, n, config.batch_size, s), jnp.int32)
            state, loss = step_fn(state, data_dev, idx)
            window.append(loss)
            done = s + 1
            if done % config.log_every == 0 or done == config.steps:
                mean_loss = float(np.mean(jax.device_get(window)))
                if not np.isfinite(mean_loss):
                    raise FloatingPointError(f"VAE loss became non-finite by step {done}.")
                logged.append((done, mean_loss))
                window = []
                bar.set_postfix(loss=f"{mean_loss:.4g}", refresh=False)
            bar.update()
            if ckpt is not None and (done % config.checkpoint_every == 0 or done == config.steps):
                ckpt.save(done, state.as_dict(), {**meta, "time": time.time()})
    finally:
        bar.close()
        if ckpt is not None:
            ckpt.close()
    steps = np.array([s for s, _ in logged], np.int64)
    return VAEResult(state, steps, np.array([v for _, v in logged]))


def _make_vae_step(vae, optimizer, kl_weight: float, obs_std: float):
    def objective(params, x, key):
        keys = jax.random.split(key, x.shape[0])

        def loss(xi, ki):
            return vae_loss(vae, params, xi, key=ki, kl_weight=kl_weight, obs_std=obs_std)

        return jnp.mean(jax.vmap(loss)(x, keys))

    @jax.jit
    def step(state: VAEState, data: Array, indices: Array):
        loss, grads = jax.value_and_grad(objective)(
            state.params, data[indices], jax.random.fold_in(state.key, state.step)
        )
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return VAEState(params, opt_state, state.step + 1, state.key), loss

    return step


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
    images = _check_data(images)
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
        [np.asarray(dec(jnp.asarray(latents[i : i + batch_size])))
         for i in range(0, latents.shape[0], batch_size)]
    )  # fmt: skip


def sample_decoded(
    vae, vae_params, eps_field, process, scale: float, num_samples: int, *, key: PRNGKeyArray,
    num_steps: int = 50,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """DDIM (:func:`wgfm.samplers.sample_ddim`, ``eta = 0``) with an eps-network in the scaled
    latent space of ``vae``, then decoded: ``(images, latents)``."""
    from .samplers import sample_ddim

    res = sample_ddim(eps_field, process, key=key, num_samples=num_samples,
                      shape=vae.latent_shape, kind="eps", num_steps=num_steps)  # fmt: skip
    z = np.asarray(res.samples)
    return decode_latents(vae, vae_params, z, scale), z


class LatentRun(eqx.Module):
    """A VAE and an eps-network trained in its scaled latent space (:func:`fit_latent`)."""

    vae_result: VAEResult
    eps_result: Any  # wgfm.train.TrainResult
    latents: np.ndarray
    scale: float
    seconds: dict

    @property
    def vae_params(self):
        return self.vae_result.params


def fit_latent(
    vae, eps_model, process, images, vae_config: TrainConfig, eps_config: TrainConfig, *,
    key: PRNGKeyArray, kl_weight: float = 1.0, obs_std: float = 0.1,
    run_dir: str | Path | None = None, resume: bool = False, progress: bool = False,
) -> LatentRun:  # fmt: skip
    """The latent setting in one call: :func:`fit_vae` on ``images``, :func:`encode_dataset`
    (posterior means, unit-variance scaling), then :func:`wgfm.train.fit` of ``eps_model`` on
    the latents. Checkpoints go to ``run_dir/vae`` and ``run_dir/eps``; ``seconds`` holds the
    wall time of each stage."""
    from .train import fit

    k_vae, k_eps = jax.random.split(key)
    sub = (lambda name: None) if run_dir is None else (lambda name: Path(run_dir) / name)
    t0 = time.perf_counter()
    vae_res = fit_vae(vae, images, vae_config, key=k_vae, kl_weight=kl_weight, obs_std=obs_std,
                      run_dir=sub("vae"), resume=resume)  # fmt: skip
    t1 = time.perf_counter()
    latents, scale = encode_dataset(vae, vae_res.params, images)
    t2 = time.perf_counter()
    eps_res = fit(eps_model, process, latents, eps_config, key=k_eps, run_dir=sub("eps"),
                  resume=resume, progress=progress, extra_meta={"latent_scale": scale})  # fmt: skip
    t3 = time.perf_counter()
    seconds = {"vae": t1 - t0, "encode": t2 - t1, "eps": t3 - t2}
    return LatentRun(vae_res, eps_res, latents, scale, seconds)
