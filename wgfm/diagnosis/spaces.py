"""A latent pipeline's extras in ``wgfm diagnose``: the measured latents decoded, and claim 1
of the latent run beside that of a pixel-space run (``--pixel-run``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..report import ClaimRow
from .asymmetry import JacobianAsymmetry, compare_spaces, headline_lambda


def results_json(path: Path) -> Path:
    """The results.json of a ``wgfm diagnose`` output directory, or ``path`` itself."""
    path = Path(path)
    return path / "results.json" if path.is_dir() else path


def decoded_figure(latent, latents: np.ndarray):
    """The clean latents claim 1 measured (up to 8), decoded by the pipeline's autoencoder: the
    diagnosis runs in latent space, the figure shows which images those points are.

    Args:
        latent: the pipeline's latent autoencoder (``field.latent``).
        latents: the measured latents, shape ``(n, *latent_shape)``.

    Returns:
        A ``matplotlib.figure.Figure``.
    """
    from ..figures import image_grid
    from ..interop.pipelines import decode_latents

    shown = decode_latents(latent, np.asarray(latents[:8]))
    return image_grid(
        shown, f"clean latents claim 1 measured, decoded by its {latent.cls}", cols=len(shown)
    )


def keep_decoded_figure(latent, latents: np.ndarray, out: Path, label: str) -> dict | None:
    """:func:`decoded_figure` of ``latents`` written once into ``out/figures`` (processes of
    a sharded run racing to write it leave one whole file): ``{name: path under out}``; None
    without a ``latent`` autoencoder (a pixel-space model)."""
    if latent is None:
        return None
    from .outdir import publish_once

    name = f"latents_decoded_{label}"
    path = out / "figures" / f"{name}.png"
    if not path.is_file():
        fig = decoded_figure(latent, latents)
        publish_once(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    return {name: f"figures/{name}.png"}


def pixel_vs_latent(latent_numbers: dict[str, Any], pixel_run: Path) -> ClaimRow:
    """Claim 1 of this latent run (its ``latent_numbers``) beside that of the pixel-space
    ``wgfm diagnose`` run ``pixel_run`` (its ``--out`` or results.json): the full-dimension
    lambda of each, on their shared noise levels."""
    key = JacobianAsymmetry.key
    pixel = json.loads(results_json(pixel_run).read_text())
    runs = pixel.get("numbers", {}).get(key, {})
    if len(runs) != 1:
        raise ValueError(
            f"`--pixel-run` {str(pixel_run)!r} must hold the claim-1 numbers of one model, "
            f"found {len(runs)}."
        )
    pixel_label, pix = next(iter(runs.items()))
    pl, pv, pwhat = headline_lambda(pix)
    ll, lv, lwhat = headline_lambda(latent_numbers)
    return compare_spaces(
        (ll, lv),
        (pl, pv),
        what=f"pixel run {pixel_label}: {pwhat}; latent: {lwhat}",
        quantity="median full-dimension lambda",
    )
