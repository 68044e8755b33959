"""Figures of the diagnostics by noise level, as ``matplotlib.figure.Figure`` objects.

Built without pyplot, so no backend is chosen or changed for the process: ``Figure.savefig``
renders PNG with Agg on any machine, with or without a display."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image
import numpy as np
from matplotlib.figure import Figure


def boxplot_by_level(
    levels: np.ndarray,
    series: dict[str, np.ndarray],
    ylabel: str,
    title: str,
    *,
    log: bool = True,
    max_boxes: int = 20,
):
    """One box per noise level (columns of each ``(n_samples, n_levels)`` array) per series."""
    fig = Figure(figsize=(9, 4))
    ax = fig.subplots()
    stride = max(1, len(levels) // max_boxes)
    cols = np.arange(0, len(levels), stride)
    width = 0.8 / len(series)
    for i, (name, vals) in enumerate(series.items()):
        v = np.asarray(vals)[:, cols]
        if log:
            v = np.maximum(v, 1e-12)
        pos = np.arange(len(cols)) + (i - (len(series) - 1) / 2) * width
        bp = ax.boxplot(v, positions=pos, widths=width * 0.9, patch_artist=True, showfliers=False)
        color = f"C{i}"
        for patch in bp["boxes"]:
            patch.set_facecolor(color)
            patch.set_alpha(0.6)
        ax.plot([], [], color=color, lw=6, alpha=0.6, label=name)
    ax.set_xticks(np.arange(len(cols)))
    ax.set_xticklabels([f"{levels[c]:.2g}" for c in cols], rotation=60, fontsize=7)
    label_axes(ax, ylabel, title, xlabel="noise level t", log=log)
    return fig


def lines_by_level(levels, series: dict[str, np.ndarray], ylabel: str, title: str, *, log=True):
    """Median and inter-quartile band per level for each ``(n_samples, n_levels)`` series."""
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    for i, (name, vals) in enumerate(series.items()):
        v = np.abs(np.asarray(vals)) if log else np.asarray(vals)
        v = np.maximum(v, 1e-14) if log else v
        q1, med, q3 = np.quantile(v, [0.25, 0.5, 0.75], axis=0)
        ax.plot(levels, med, color=f"C{i}", label=name)
        ax.fill_between(levels, q1, q3, color=f"C{i}", alpha=0.2)
    label_axes(ax, ylabel, title, xlabel="noise level t", log=log)
    return fig


def label_axes(ax, ylabel: str, title: str, *, xlabel: str | None = None, log: bool = False):
    """The finish of a figure of series: axis labels, a log y-axis when ``log``, the title and
    a legend of the series.

    Args:
        ax: a ``matplotlib.axes.Axes`` whose series carry labels.
        ylabel: the y-axis label.
        title: the title.
        xlabel: the x-axis label (None: none).
        log: whether the y-axis is logarithmic.
    """
    if xlabel is not None:
        ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.legend(fontsize=8)


def image_grid(images: np.ndarray, title: str, *, cols: int = 8):
    """Images ``(n, H, W, C)`` in ``[-1, 1]`` as one grid (grayscale when ``C = 1``)."""
    x = np.clip((np.asarray(images) + 1) / 2, 0, 1)
    n, h, w, c = x.shape
    cols = min(cols, n)
    rows = -(-n // cols)
    pad = np.ones((rows * cols - n, h, w, c), x.dtype)
    grid = np.concatenate([x, pad]).reshape(rows, cols, h, w, c).transpose(0, 2, 1, 3, 4)
    grid = grid.reshape(rows * h, cols * w, c)
    fig = Figure(figsize=(0.6 * cols + 0.4, 0.6 * rows + 0.6))
    ax = fig.subplots()
    ax.imshow(grid[..., 0] if c == 1 else grid, cmap="gray" if c == 1 else None, vmin=0, vmax=1)
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    return fig


def png_is_valid_and_not_blank(path: Path) -> bool:
    """PNG signature, decodable, and more than one distinct pixel value (used by the tests)."""
    data = Path(path).read_bytes()
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return False
    img = matplotlib.image.imread(path)
    return bool(np.asarray(img).std() > 1e-3)
