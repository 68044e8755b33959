"""The reproduction's report: claim rows, results.json, REPORT.md and PNG figures."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


@dataclasses.dataclass(frozen=True)
class ClaimRow:
    """One line of a claim's table: what was measured, against which control, and the verdict."""

    claim: str
    measured: str
    control: str
    verdict: bool
    note: str = ""


@dataclasses.dataclass(frozen=True)
class Measurement:
    """What a claim's measurement returns: its rows, the numbers behind them (for
    results.json) and its figures (name -> matplotlib figure), ready for a :class:`Report`."""

    rows: list[ClaimRow]
    numbers: dict[str, Any]
    figures: dict[str, Any]


@dataclasses.dataclass
class Report:
    """Accumulates rows, numbers and figures; :meth:`write` renders them."""

    out: Path
    rows: dict[str, list[ClaimRow]] = dataclasses.field(default_factory=dict)
    numbers: dict[str, Any] = dataclasses.field(default_factory=dict)
    figures: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    notes: dict[str, str] = dataclasses.field(default_factory=dict)
    title: str = "wgfm reproduction report"

    @property
    def fig_dir(self) -> Path:
        d = self.out / "figures"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def add(self, section: str, row: ClaimRow) -> None:
        self.rows.setdefault(section, []).append(row)

    def add_measurement(self, section: str, m: Measurement) -> None:
        """``m``'s rows and figures under ``section`` (its numbers are the caller's to place)."""
        for row in m.rows:
            self.add(section, row)
        for name, fig in m.figures.items():
            self.save_figure(section, fig, name)

    def save_figure(self, section: str, fig, name: str) -> Path:
        path = self.fig_dir / f"{name}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        self.figures.setdefault(section, []).append(f"figures/{name}.png")
        return path

    def write(self, header: dict[str, Any]) -> tuple[Path, Path]:
        self.out.mkdir(parents=True, exist_ok=True)
        results = {
            "header": header,
            "claims": {s: [dataclasses.asdict(r) for r in rs] for s, rs in self.rows.items()},
            "numbers": _jsonable(self.numbers),
            "figures": self.figures,
            "timings_s": self.timings,
            "notes": self.notes,
            "all_verdicts_pass": all(r.verdict for rs in self.rows.values() for r in rs),
        }
        jpath = self.out / "results.json"
        jpath.write_text(json.dumps(results, indent=2))
        mpath = self.out / "REPORT.md"
        mpath.write_text(self._markdown(header))
        return mpath, jpath

    def _markdown(self, header: dict[str, Any]) -> str:
        lines = [f"# {self.title}", ""]
        lines += [f"- {k}: {v}" for k, v in header.items()]
        lines.append("")
        for section in list(self.rows) + [s for s in self.notes if s not in self.rows]:
            rows = self.rows.get(section, [])
            lines += [f"## {section}", ""]
            if section in self.notes:
                lines += [f"_{self.notes[section]}_", ""]
            if not rows:
                continue
            lines += [
                "| claim | measured | control | verdict |",
                "|---|---|---|---|",
            ]
            for r in rows:
                verdict = "holds" if r.verdict else "**does not hold**"
                note = f" ({r.note})" if r.note else ""
                cells = (r.claim, r.measured, r.control, f"{verdict}{note}")
                lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
            lines.append("")
            for f in self.figures.get(section, []):
                lines += [f"![{Path(f).stem}]({f})", ""]
            if section in self.timings:
                lines += [f"_Run time: {self.timings[section]:.1f} s._", ""]
        return "\n".join(lines)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if hasattr(x, "tolist"):
        return _jsonable(np.asarray(x).tolist())
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return x


def fmt(x: float, digits: int = 3) -> str:
    """A number for a table cell."""
    return f"{float(x):.{digits}g}"


# ---------------------------------------------------------------------------------------------
# Figures.


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
    fig, ax = plt.subplots(figsize=(9, 4))
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
    ax.set_xlabel("noise level t")
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return fig


def lines_by_level(levels, series: dict[str, np.ndarray], ylabel: str, title: str, *, log=True):
    """Median and inter-quartile band per level for each ``(n_samples, n_levels)`` series."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (name, vals) in enumerate(series.items()):
        v = np.abs(np.asarray(vals)) if log else np.asarray(vals)
        v = np.maximum(v, 1e-14) if log else v
        q1, med, q3 = np.quantile(v, [0.25, 0.5, 0.75], axis=0)
        ax.plot(levels, med, color=f"C{i}", label=name)
        ax.fill_between(levels, q1, q3, color=f"C{i}", alpha=0.2)
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("noise level t")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    return fig


def field_with_curl(grid_x, grid_y, curl, vx, vy, loops: list[np.ndarray], title: str):
    """A planar field's arrows over its scalar curl, with loops drawn on top."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
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
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.3), squeeze=False)
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
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (name, vals) in enumerate(series.items()):
        ax.plot(strengths, vals, "o-", color=f"C{i}", label=name)
    ax.axhline(floor, color="k", ls="--", label="noise floor")
    ax.set_xlabel("perturbation size / ||v||_{L2(p_t)}")
    ax.set_ylabel(ylabel)
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return fig


def bars(labels: list[str], series: dict[str, np.ndarray], ylabel: str, title: str, *, log=False):
    """Grouped bars: one group per label, one bar per series."""
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(labels)), 4))
    width = 0.8 / len(series)
    x = np.arange(len(labels))
    for i, (name, vals) in enumerate(series.items()):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, vals, width, label=name, color=f"C{i}")
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=20, fontsize=8)
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return fig


def image_grid(images: np.ndarray, title: str, *, cols: int = 8):
    """Images ``(n, H, W, C)`` in ``[-1, 1]`` as one grid (grayscale when ``C = 1``)."""
    x = np.clip((np.asarray(images) + 1) / 2, 0, 1)
    n, h, w, c = x.shape
    cols = min(cols, n)
    rows = -(-n // cols)
    pad = np.ones((rows * cols - n, h, w, c), x.dtype)
    grid = np.concatenate([x, pad]).reshape(rows, cols, h, w, c).transpose(0, 2, 1, 3, 4)
    grid = grid.reshape(rows * h, cols * w, c)
    fig, ax = plt.subplots(figsize=(0.6 * cols + 0.4, 0.6 * rows + 0.6))
    ax.imshow(grid[..., 0] if c == 1 else grid, cmap="gray" if c == 1 else None, vmin=0, vmax=1)
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    return fig


def png_is_valid_and_not_blank(path: Path) -> bool:
    """PNG signature, decodable, and more than one distinct pixel value (used by the tests)."""
    data = Path(path).read_bytes()
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return False
    img = plt.imread(path)
    return bool(np.asarray(img).std() > 1e-3)


def level_bar(text: str, x0) -> str | None:
    """``sweep``'s ``progress`` label for image samples ``x0`` (every Jacobian column and loop
    point a U-Net evaluation, so a sweep takes minutes), ``None`` for vectors."""
    return text if x0.ndim > 2 else None
