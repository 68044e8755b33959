"""The reproduction's report: the library's claim rows and report (:mod:`wgfm.report`), the
diagnostics' figures (:mod:`wgfm.figures`) and the figures only the paper's claims draw."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from wgfm.figures import (
    boxplot_by_level,
    image_grid,
    label_axes,
    lines_by_level,
    png_is_valid_and_not_blank,
)
from wgfm.report import ClaimRow, Measurement, Report, fmt, jsonable, level_bar

__all__ = [
    "ClaimRow",
    "Measurement",
    "Report",
    "bars",
    "boxplot_by_level",
    "field_with_curl",
    "fmt",
    "image_grid",
    "jsonable",
    "level_bar",
    "lines_by_level",
    "metric_vs_strength",
    "png_is_valid_and_not_blank",
    "samples_vs_oracle",
]


def field_with_curl(grid_x, grid_y, curl, vx, vy, loops: list[np.ndarray], title: str):
    """A planar field's arrows over its scalar curl, with loops drawn on top."""
    fig = Figure(figsize=(5.5, 5))
    ax = fig.subplots()
    lim = float(np.quantile(np.abs(curl), 0.98)) or 1.0
    im = ax.pcolormesh(grid_x, grid_y, curl, cmap="RdBu_r", vmin=-lim, vmax=lim, shading="auto")
    fig.colorbar(im, ax=ax, label="curl")
    step = max(1, grid_x.shape[0] // 16)
    ax.quiver(
        grid_x[::step, ::step], grid_y[::step, ::step], vx[::step, ::step], vy[::step, ::step]
    )
    for lp in loops:
        ax.plot(lp[:, 0], lp[:, 1], color="k", lw=1.5)
    ax.set_aspect("equal")
    ax.set_title(title)
    return fig


def samples_vs_oracle(panels: dict[str, np.ndarray], oracle: np.ndarray, title: str):
    """Scatter of 2D sample sets beside oracle samples."""
    n = len(panels)
    fig = Figure(figsize=(3.2 * n, 3.3))
    axes = fig.subplots(1, n, squeeze=False)
    lim = float(np.quantile(np.abs(oracle), 0.995)) * 1.3
    for ax, (name, s) in zip(axes[0], panels.items(), strict=True):
        ax.scatter(oracle[:, 0], oracle[:, 1], s=2, alpha=0.25, color="grey", label="oracle")
        ax.scatter(s[:, 0], s[:, 1], s=2, alpha=0.5, color="C3", label=name)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.set_title(name, fontsize=9)
    fig.suptitle(title)
    return fig


def metric_vs_strength(
    strengths, series: dict[str, np.ndarray], floor: float, ylabel: str, title: str
):
    """A metric against perturbation strength for each family, with the noise floor."""
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for i, (name, vals) in enumerate(series.items()):
        ax.plot(strengths, vals, "o-", color=f"C{i}", label=name)
    ax.axhline(floor, color="k", ls="--", label="noise floor")
    label_axes(ax, ylabel, title, xlabel="perturbation size / ||v||_{L2(p_t)}", log=True)
    return fig


def bars(labels: list[str], series: dict[str, np.ndarray], ylabel: str, title: str, *, log=False):
    """Grouped bars: one group per label, one bar per series."""
    fig = Figure(figsize=(max(5, 1.2 * len(labels)), 4))
    ax = fig.subplots()
    width = 0.8 / len(series)
    x = np.arange(len(labels))
    for i, (name, vals) in enumerate(series.items()):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, vals, width, label=name, color=f"C{i}")
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=20, fontsize=8)
    label_axes(ax, ylabel, title, log=log)
    return fig
