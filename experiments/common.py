"""Shared assets of the reproduction: data, oracles and networks, each built once, lazily.

Every network is trained with :func:`wgfm.train.fit` from a key derived from the master seed and
its name, so any claim can be rerun alone and gets the same network.
"""

from __future__ import annotations

import dataclasses
import functools
import pickle
import time
import zlib
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from rich.console import Console

from experiments.config import MIXTURES, ReproduceConfig, Sizes
from wgfm import data as wdata
from wgfm import gmm
from wgfm.processes import AbstractProcess
from wgfm.train import TrainConfig, fit


@dataclasses.dataclass(frozen=True)
class Trained:
    """A trained (or untrained) network with the time it took."""

    name: str
    model: object  # wgfm.models.Model
    params: object
    process: AbstractProcess
    train_seconds: float
    steps: int
    final_loss: float
    snapshots: dict = dataclasses.field(default_factory=dict)  # step -> EMA params on the way

    def at(self, step: int) -> Trained:
        """The same run's EMA parameters after ``step`` updates (a training-curve snapshot)."""
        if step == self.steps:
            return self
        if step not in self.snapshots:
            raise ValueError(f"`step` must be one of {sorted(self.snapshots)}, got {step}.")
        # Time prorated: the snapshots come out of one run.
        secs = self.train_seconds * step / max(self.steps, 1)
        return Trained(f"{self.name}@{step}", self.model, self.snapshots[step], self.process,
                       secs, step, float("nan"))  # fmt: skip

    def score(self):
        from wgfm.models import score_field

        return score_field(self.model, self.params, self.process)  # type: ignore[arg-type]

    def velocity(self):
        from wgfm.models import velocity_field

        return velocity_field(self.model, self.params, self.process)  # type: ignore[arg-type]


class Context:
    """Configuration, keys and lazily built shared assets."""

    def __init__(
        self, config: ReproduceConfig, *, sizes: Sizes | None = None, mesh=None, share_dir=None
    ):
        self.config = config
        self.sizes: Sizes = sizes or config.sizes
        self.root_key = jax.random.key(config.seed)
        self._cache: dict[str, object] = {}
        self.process: AbstractProcess = config.make_process()
        self.mesh = mesh  # a data mesh (wgfm.distributed): networks train data parallel on it
        self.datasets: tuple[str, ...] = config.datasets
        self.vector_sets: tuple[str, ...] = config.vector_sets
        self.console = Console(stderr=True)
        # A directory where processes of the same run leave the networks they trained.
        self.share_dir: Path | None = None if share_dir is None else Path(share_dir)

    def key(self, name: str):
        """A key for ``name``, independent of the order in which assets are built."""
        return jax.random.fold_in(self.root_key, zlib.crc32(name.encode()))

    # -- oracles --------------------------------------------------------------------------------

    @functools.cached_property
    def mix2d(self) -> gmm.GaussianMixture:
        """8 equal Gaussians on a circle of radius 3 (std 0.5)."""
        return gmm.ring(num_modes=8, radius=3.0, std=0.5, dtype=jnp.float32)

    @functools.cached_property
    def mix10d(self) -> gmm.GaussianMixture:
        """4 components in 10-D, unequal weights, anisotropic full covariances."""
        m = gmm.random_mixture(10, 4, key=self.key("mix10d"), scale=2.0, anisotropy=4.0)
        return jax.tree.map(lambda a: a.astype(jnp.float32), m)

    def data(self, name: str) -> np.ndarray:
        if name not in self._cache:
            n = 20_000
            if name == "2d":
                x = self.mix2d.sample(n, key=self.key("data2d"))
            elif name == "10d":
                x = self.mix10d.sample(n, key=self.key("data10d"))
            elif name == "digits":
                x = wdata.digits()[0]
            elif name in ("mnist", "cifar10"):
                if self.config.data is None:
                    raise ValueError(f"`data` must name a directory holding the {name} files.")
                loader = wdata.load_mnist if name == "mnist" else wdata.load_cifar10
                x = loader(self.config.data, "train")[0]
            else:
                raise ValueError(f"unknown data set {name!r}")
            self._cache[name] = np.asarray(x, np.float32)
        return self._cache[name]  # type: ignore[return-value]

    # -- networks ---------------------------------------------------------------------------------

    def network(
        self,
        data: str,
        predicts: str = "eps",
        *,
        conservative: bool = False,
        steps: int | None = None,
        weighting: str = "uniform",
    ) -> Trained:
        """The network for ``data`` ('2d', '10d' or an image set) trained to predict
        ``predicts`` for ``steps`` updates (default from the sizes; 0 gives the untrained
        network). Image networks use the preset's weighting unless ``weighting`` is given.

        MNIST and CIFAR-10 networks are checkpointed under ``OUT/networks/<name>`` and resumed
        from there, so an interrupted run loses no training and a rerun retrains nothing."""
        from wgfm.models import get_model

        image = data not in MIXTURES
        sz = self.sizes
        default = {"2d": sz.train_steps_2d, "10d": sz.train_steps_10d}.get(
            data, sz.train_steps_image
        )
        steps = default if steps is None else steps
        if image and weighting == "uniform":
            weighting = sz.image_weighting
        name = f"{data}-{predicts}-{'cons' if conservative else 'free'}-{steps}-{weighting}"
        if name in self._cache:
            return self._cache[name]  # type: ignore[return-value]
        arch = sz.arch_image if image else sz.arch_vector
        model = get_model(arch, predicts=predicts, conservative=conservative)
        x = self.data(data)
        key = self.key(f"net-{data}")  # same init for every objective: a controlled comparison
        if steps == 0:
            params = _random_output_layer(model.init(key, x.shape[1:], jnp.float32), key)
            out = Trained(name, model, params, self.process, 0.0, 0, float("nan"))
        else:
            cfg = TrainConfig(
                steps=steps,
                batch_size=sz.image_batch if image else sz.batch_size,
                lr=sz.image_lr if image else 2e-3,
                warmup_steps=min(100 if steps < 10_000 else 1000, steps // 10),
                ema_decay=max(0.0, min(0.9999 if steps >= 50_000 else 0.999, 1.0 - 10.0 / steps)),
                weighting=weighting,
                log_every=max(1, min(100, steps)),
                checkpoint_every=max(1, min(steps, 5000)),
            )
            run_dir = None
            if data in ("mnist", "cifar10"):
                run_dir = self.config.out / "networks" / name
            long = steps >= 2000 and image
            snaps = sorted({max(1, int(f * steps)) for f in sz.snapshots} - {steps})

            def train() -> tuple:
                t0 = time.perf_counter()
                res = fit(model, self.process, x, cfg, key=key, run_dir=run_dir,
                          resume=run_dir is not None, progress=long, mesh=self.mesh,
                          snapshot_steps=snaps)  # fmt: skip
                jax.block_until_ready(res.ema)
                secs = time.perf_counter() - t0
                loss = float(res.logged_losses[-1]) if len(res.logged_losses) else float("nan")
                self.console.log(f"trained {name} ({arch}): {steps} steps in {secs:.1f} s")
                return res.ema, res.snapshots, secs, loss

            # Image networks have their own checkpoints; the others are shared between the
            # processes of one run, so that only one of them trains each.
            shared = self.share_dir is not None and run_dir is None
            ema, snapshots, secs, loss = _shared(self.share_dir, name, train) if shared else train()
            out = Trained(name, model, ema, self.process, secs, steps, loss, snapshots)
        self._cache[name] = out
        return out

    def oracle_score(self, data: str):
        """The exact score of the data law (mixtures), or for images the exact score of the
        Gaussian fitted to the data: a true gradient field on the same scale, as a control."""
        if data == "2d":
            return gmm.score_field(self.mix2d, self.process)
        if data == "10d":
            return gmm.score_field(self.mix10d, self.process)
        x = self.data(data)[:10_000]  # 10^4 images pin the Gaussian down well enough for a control
        x = x.reshape(len(x), -1).astype(np.float64)
        cov = np.cov(x.T) + 1e-3 * np.eye(x.shape[1])
        fit = gmm.GaussianMixture(
            jnp.ones(1, jnp.float32),
            jnp.asarray(x.mean(0)[None], jnp.float32),
            jnp.asarray(cov[None], jnp.float32),
        )
        return FlatField(gmm.score_field(fit, self.process), self.data(data).shape[1:])


def _random_output_layer(params, key):
    """Untrained parameters as a control: the U-Net's output convolution starts at zero (as in
    DDPM, so that training starts from eps = 0), which would make the untrained field's Jacobian
    exactly 0 and its asymmetry ratio 0/0. Here it gets flax's default (LeCun-normal) kernel
    instead, as every other layer has; MLP parameters are returned unchanged."""
    inner = params.get("params", {}) if isinstance(params, dict) else {}
    if "conv_out" not in inner:
        return params
    kernel = inner["conv_out"]["kernel"]
    new = jax.nn.initializers.lecun_normal()(jax.random.fold_in(key, 1), kernel.shape, kernel.dtype)
    conv_out = {**inner["conv_out"], "kernel": new}
    return {**params, "params": {**inner, "conv_out": conv_out}}


def _shared(directory: Path, name: str, train):
    """``train()``'s result for network ``name``, computed by whichever process of the run asks
    first: it holds an exclusive lock on ``directory/name.lock`` while training and leaves the
    result in ``name.pkl``; the others wait on the lock and load it (arrays exact, so both
    processes evaluate the same network)."""
    import fcntl  # POSIX; the second process is only started where it exists

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.pkl"
    with open(directory / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if path.exists():
                ema, snaps, secs, loss = pickle.loads(path.read_bytes())
                to_jax = functools.partial(jax.tree.map, jnp.asarray)
                return to_jax(ema), {k: to_jax(v) for k, v in snaps.items()}, secs, loss
            ema, snaps, secs, loss = train()
            to_np = functools.partial(jax.tree.map, np.asarray)
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(pickle.dumps((to_np(ema), {k: to_np(v) for k, v in snaps.items()},
                                          secs, loss)))  # fmt: skip
            tmp.replace(path)
            return ema, snaps, secs, loss
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class FlatField(eqx.Module):
    """A field on flat vectors seen as a field on arrays of ``shape`` (e.g. images)."""

    field: object
    shape: tuple[int, ...] = eqx.field(static=True)

    def __call__(self, x, t):
        return self.field(x.reshape(-1), t).reshape(self.shape)  # type: ignore[operator]


def times_grid(process: AbstractProcess, num_levels: int) -> np.ndarray:
    """The authors' grid t = 1, 11, ..., 991 of 1000 (100 levels), thinned to ``num_levels``,
    mapped to ``[t_min, t_max]``."""
    steps = np.arange(1, 1000, 10)
    if num_levels < len(steps):
        steps = steps[np.linspace(0, len(steps) - 1, num_levels).round().astype(int)]
    t = steps / 1000.0
    return np.clip(t, process.t_min, process.t_max)


def over_levels(fn, *args):
    """``fn`` mapped over the leading (noise-level) axis of ``args`` with ``jax.lax.map``.

    Written by hand instead of an outer ``jax.vmap``: on XLA:CPU (jaxlib 0.10) a program that
    vmaps over times a body holding LAPACK custom calls (the oracle's Cholesky factors) next to
    random sampling or ``equinox.error_if`` callbacks intermittently deadlocks under load;
    mapping levels sequentially (samples stay vmapped inside) avoids it at no real cost."""
    return jax.lax.map(lambda a: fn(*a), args)


def clean_and_noised(ctx: Context, data: str, ts, n: int, key):
    """Clean points ``x0`` and ``x_t = alpha_t x0 + sigma_t eps``, ``n`` fresh ones per level:
    both ``(L, n, *shape)``. ``x0`` comes from the mixture or, ``n`` distinct images per level,
    from the image set; ``x_t`` then follows ``p_t`` exactly."""
    k1, k2 = jax.random.split(key)
    if data in MIXTURES:
        mix = ctx.mix2d if data == "2d" else ctx.mix10d
        x0 = mix.sample(len(ts) * n, key=k1).reshape(len(ts), n, -1)
    else:
        x = jnp.asarray(ctx.data(data))
        if n > x.shape[0]:
            raise ValueError(f"{data}: {n} samples per level exceed its {x.shape[0]} images.")
        # Distinct images within a level, drawn afresh for each level (100 levels x 64 digits
        # would exceed the 1,797 images without replacement across levels).
        keys = jax.random.split(k1, len(ts))
        x0 = x[jax.vmap(lambda k: jax.random.choice(k, x.shape[0], (n,), replace=False))(keys)]
    tj = jnp.asarray(ts, x0.dtype)
    keys = jax.random.split(k2, len(ts))
    xt = over_levels(lambda xl, t, k: ctx.process.sample_marginal(xl, t, key=k)[0], x0, tj, keys)
    return x0, xt


# Axis names of a sweep's outputs for require_finite: (level, sample) as computed, or
# (sample, level) once transposed for the box plots.
BY_LEVEL = ("level", "sample")
BY_SAMPLE = ("sample", "level")


def require_finite(tree, what: str, axes: tuple[str, ...] = BY_LEVEL):
    """``tree`` (NumPy arrays), after raising ``FloatingPointError`` if any entry is non-finite,
    naming the first bad index along ``axes``. The experiments' sweeps are compiled with the
    diagnostics' ``checked=False`` (no host callback in the program, so JAX's persistent cache
    keeps it: a rerun skips its compilation) and check their outputs here instead; a
    non-finite field value propagates to them."""
    tree = jax.tree.map(np.asarray, tree)
    for leaf in jax.tree.leaves(tree):
        bad = ~np.isfinite(leaf)
        if bad.any():
            first = np.argwhere(bad)[0]
            where = ", ".join(f"{a} {int(i)}" for a, i in zip(axes, first, strict=False))
            raise FloatingPointError(
                f"{what}: {int(bad.sum())} of {bad.size} values are non-finite (the first at "
                f"{where}); the field is non-finite there, or its derivatives are."
            )
    return tree


def over_samples(fn, batch_size: int, *args):
    """``fn`` of one sample mapped over the leading axis of ``args``, ``batch_size`` at a time
    (``jax.lax.map(batch_size=...)``): bounds memory for large networks, where a ``vmap`` over
    hundreds of images times dozens of tangents would not fit."""
    n = jax.tree.leaves(args)[0].shape[0]
    return jax.lax.map(lambda a: fn(*a), args, batch_size=min(batch_size, n))
