"""A latent pipeline's autoencoder: where its latents come from and how images map to them.

:class:`Latent` is what :func:`wgfm.interop.read_pipeline` finds under ``vae/``, ``vqvae/`` or
``movq/`` (Kandinsky); :func:`encode_latents` and :func:`decode_latents` map images to the
denoiser's latents and back with the autoencoder's own PyTorch module (``AutoencoderKL``'s
posterior mean, ``VQModel``'s unquantised latents, ``AutoencoderDC``'s latents)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

AUTOENCODERS = ("vae", "vqvae", "movq")
AUTOENCODER_CLASSES = (
    "AutoencoderKL",
    "VQModel",
    "AutoencoderTiny",
    "ConsistencyDecoderVAE",
    "AutoencoderDC",
)


@dataclasses.dataclass(frozen=True)
class Latent:
    """A latent pipeline's autoencoder: its class, directory and ``scaling_factor``
    (``shift_factor``): the denoiser's samples are ``(encode(x) - shift) * scaling``."""

    cls: str
    path: Path
    scaling_factor: float
    shift_factor: float = 0.0
    channels: int | None = None  # latent_channels, where the config says

    def factor(self) -> int:
        """The spatial downsampling factor from images to latents."""
        f = self.path / "config.json"
        # diffusers' own default vae_scale_factor where the autoencoder has no config.
        return _factor(json.loads(f.read_text())) if f.is_file() else 8

    def describe(self) -> str:
        shift = f", shift_factor {self.shift_factor:g}" if self.shift_factor else ""
        return f"the latent space of the pipeline's {self.cls} (scaling_factor {self.scaling_factor:g}{shift})"


def read_latent(root: Path, index: dict) -> Latent | None:
    """The autoencoder of the pipeline at ``root`` (``index``: its model_index.json), or None."""
    for name in AUTOENCODERS:
        d = root / name
        if (d / "config.json").is_file() or name in index:
            cfg = (
                json.loads((d / "config.json").read_text()) if (d / "config.json").is_file() else {}
            )
            entry = index.get(name)
            named = entry[1] if isinstance(entry, list) and len(entry) == 2 else None
            cls = cfg.get("_class_name") or named or name
            # Kandinsky's pipelines never scale movq latents, whatever its config says.
            scaling = 1.0 if name == "movq" else float(cfg.get("scaling_factor") or 1.0)
            channels = cfg.get("latent_channels")
            return Latent(
                cls,
                d,
                scaling,
                float(cfg.get("shift_factor") or 0.0),
                None if channels is None else int(channels),
            )
    return None


def _factor(cfg: dict) -> int:
    """The autoencoder's spatial downsampling factor."""
    blocks = cfg.get("block_out_channels") or cfg.get("encoder_block_out_channels") or [0]
    return 2 ** (len(blocks) - 1)


def pixel_shape(latent: Latent, shape) -> tuple[int, int, int]:
    """The images a latent pipeline's autoencoder encodes to latents of ``shape``."""
    cfg = json.loads((latent.path / "config.json").read_text())
    f = _factor(cfg)
    return shape[0] * f, shape[1] * f, int(cfg.get("in_channels", 3))


def encode_latents(latent: Latent, images: np.ndarray, batch: int = 16) -> np.ndarray:
    """``(encode(x) - shift_factor) * scaling_factor`` of ``images (N, H, W, C)`` in [-1, 1]
    by the pipeline's autoencoder (PyTorch, float32): the posterior mean of an
    ``AutoencoderKL``, the unquantised latents of a ``VQModel``."""
    try:
        import diffusers
        import torch
    except ImportError:
        raise ValueError(
            f"encoding images into the latent space of the pipeline's {latent.cls} needs torch "
            "and diffusers."
        ) from None
    vae = getattr(diffusers, latent.cls).from_pretrained(str(latent.path)).eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = torch.from_numpy(np.ascontiguousarray(images[i : i + batch].transpose(0, 3, 1, 2)))
            enc = vae.encode(x.float())
            z = (
                enc.latent_dist.mode()
                if hasattr(enc, "latent_dist")
                else enc.latent
                if hasattr(enc, "latent")
                else enc.latents
            )
            out.append(((z - latent.shift_factor) * latent.scaling_factor).numpy())
    return np.concatenate(out).transpose(0, 2, 3, 1).astype(np.float32)


def decode_latents(latent: Latent, z: np.ndarray, batch: int = 16) -> np.ndarray:
    """Images ``(N, H, W, C)`` in [-1, 1] of latents ``z (N, h, w, c)`` in the denoiser's
    space: the autoencoder's ``decode(z / scaling_factor + shift_factor)``, the inverse of
    :func:`encode_latents` (for figures: what the diagnosed points look like)."""
    import diffusers
    import torch

    vae = getattr(diffusers, latent.cls).from_pretrained(str(latent.path)).eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(z), batch):
            zz = torch.from_numpy(np.ascontiguousarray(z[i : i + batch].transpose(0, 3, 1, 2)))
            zz = zz.float() / latent.scaling_factor + latent.shift_factor
            out.append(vae.decode(zz).sample.clamp(-1, 1).numpy())
    return np.concatenate(out).transpose(0, 2, 3, 1).astype(np.float32)
