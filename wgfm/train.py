"""Training by any loss of :mod:`wgfm.losses`: optax AdamW with warm-up + cosine decay and
gradient clipping, an EMA of the parameters, JSON-lines metrics, a tqdm progress bar and orbax
checkpoints that a run resumes from exactly.

The objective at a step is ``mean_i w(t_i) loss(model, process, x0_i, t_i, eps_i)`` with the loss
chosen by what the model predicts (eps -> ``eps_loss``, score -> ``dsm_loss``, x0 -> ``x0_loss``,
velocity -> ``fm_loss``). Every random draw of step ``s`` comes from ``fold_in(key, s)`` and its
batch from :func:`wgfm.data.batch_indices`, so the run is a pure function of ``(key, step)``:
resuming from a checkpoint at step ``N`` and training to ``2N`` reproduces, bit for bit on CPU,
the parameters of ``2N`` uninterrupted steps.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, PRNGKeyArray
from tqdm.auto import tqdm

from .data import batch_indices, data_position
from .losses import TIME_SAMPLERS, get_loss, get_weighting
from .processes import AbstractProcess

if TYPE_CHECKING:
    from .checkpoint import Checkpointer


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (all steps count optimiser updates)."""

    steps: int = 1000
    batch_size: int = 256
    lr: float = 2e-3
    warmup_steps: int = 100
    weight_decay: float = 0.0
    clip_norm: float = 1.0
    ema_decay: float = 0.999
    weighting: str = "uniform"
    """A name in ``wgfm.losses.WEIGHTINGS``: uniform, likelihood, min-snr, eps-to-fm."""
    time_sampler: str = "stratified"
    """A name in ``wgfm.losses.TIME_SAMPLERS``."""
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    log_every: int = 50

    def __post_init__(self):
        for name in ("steps", "batch_size", "checkpoint_every", "log_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {getattr(self, name)}.")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"`ema_decay` must be in [0, 1), got {self.ema_decay}.")
        for name in ("lr", "clip_norm"):
            if not (np.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise ValueError(f"`{name}` must be finite and > 0, got {getattr(self, name)}.")
        if not (np.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"`weight_decay` must be finite and >= 0, got {self.weight_decay}.")
        if int(self.warmup_steps) < 0:
            raise ValueError(f"`warmup_steps` must be >= 0, got {self.warmup_steps}.")
        if int(self.keep_checkpoints) < 1:
            raise ValueError(f"`keep_checkpoints` must be >= 1, got {self.keep_checkpoints}.")
        get_weighting(self.weighting)
        if self.time_sampler not in TIME_SAMPLERS:
            raise ValueError(
                f"`time_sampler` must be one of {tuple(TIME_SAMPLERS)}, got {self.time_sampler!r}."
            )


class TrainState(eqx.Module):
    """Everything a run needs to continue: parameters, optimiser state, EMA, step, RNG key and
    the first step whose loss was non-finite (-1 if none)."""

    params: Any
    opt_state: Any
    ema: Any
    step: Array
    key: Array
    bad_step: Array

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


class NonFiniteLossError(FloatingPointError):
    """The loss became non-finite; the last good checkpoint is kept."""


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """Global-norm clipping, then AdamW on a linear warm-up + cosine decay schedule, applied
    to the parameters raveled into one vector (``optax.flatten``): the same update, but XLA
    sees a handful of vector operations instead of a dozen per parameter array, which cuts the
    compile time of a training step by 10-20% (a U-Net has ~100 arrays)."""
    return optax.flatten(
        optax.chain(
            optax.clip_by_global_norm(config.clip_norm),
            optax.adamw(make_optimizer_schedule(config), weight_decay=config.weight_decay),
        )
    )


def init_state(model, config: TrainConfig, sample_shape, *, key: PRNGKeyArray, dtype=jnp.float32):
    """A fresh :class:`TrainState` of ``model`` (anything with ``init(key, sample_shape, dtype)``:
    a :class:`wgfm.models.Model` or an objective; ``key`` is split into initialisation and
    training keys)."""
    k_init, k_train = jax.random.split(key)
    return state_from_params(model.init(k_init, tuple(sample_shape), dtype), config, key=k_train)


def state_from_params(params, config: TrainConfig, *, key: PRNGKeyArray) -> TrainState:
    """A :class:`TrainState` at step 0 from given ``params`` (pretrained weights, e.g. a
    diffusers U-Net through :func:`wgfm.interop.convert_state_dict`, to fine-tune): a fresh
    optimiser state, the EMA at ``params``; ``key`` is the training key itself (not split)."""
    opt_state = make_optimizer(config).init(params)
    step, bad = jnp.asarray(0, jnp.int32), jnp.asarray(-1, jnp.int32)
    return TrainState(params, opt_state, params, step, key, bad)


def make_train_step(model, process: AbstractProcess, config: TrainConfig) -> TrainStep:
    """``step(state, data, indices) -> (state, loss)`` of the diffusion objective, jit-compiled
    once per data shape.

    A non-finite loss or gradient leaves the state unchanged and records the step in
    ``state.bad_step`` (checked by the host, which then stops). Steps for equal
    ``(model, process, config)`` share one compiled program (``equinox.filter_jit``'s cache:
    the model and config are static, the process's arrays are arguments), so a resumed or
    repeated run in one process does not compile again."""
    return TrainStep(
        DiffusionObjective(model, process, config.weighting, config.time_sampler), config
    )


class DiffusionObjective(eqx.Module):
    """The diffusion training objective of a batch, ``mean_i w(t_i) loss(model, process, x0_i,
    t_i, eps_i)``, with the loss chosen by what the model predicts (module docstring)."""

    model: Any = eqx.field(static=True)
    process: AbstractProcess
    weighting: str = eqx.field(static=True, default="uniform")
    time_sampler: str = eqx.field(static=True, default="stratified")

    def init(self, key: PRNGKeyArray, sample_shape, dtype=jnp.float32):
        return self.model.init(key, tuple(sample_shape), dtype)

    def describe(self) -> dict:
        """Settings a resumed run must share beyond the :class:`TrainConfig` (none here: the
        config names the weighting and time sampler, the run directory the model)."""
        return {}

    def __call__(self, params, x0: Array, key: PRNGKeyArray) -> Array:
        process = self.process
        loss_fn, weight_fn = get_loss(self.model.kind), get_weighting(self.weighting)
        sampler = TIME_SAMPLERS[self.time_sampler]
        k_t, k_eps = jax.random.split(key)
        t = sampler(x0.shape[0], key=k_t, t_min=process.t_min, t_max=process.t_max, dtype=x0.dtype)
        eps = jax.random.normal(k_eps, x0.shape, x0.dtype)
        field = self.model.field(params)
        per_example = jax.vmap(lambda x, ti, e: loss_fn(field, process, x, ti, e))(x0, t, eps)
        return jnp.mean(jax.vmap(lambda ti: weight_fn(process, ti))(t) * per_example)


class TrainStep(eqx.Module):
    """One optimiser update of ``objective(params, batch, key) -> loss`` under ``config`` (see
    :func:`make_train_step`); a PyTree, so it can be passed to ``jax.jit`` itself."""

    objective: Any
    config: TrainConfig = eqx.field(static=True)

    def __call__(self, state: TrainState, data: Array, indices: Array):
        return _train_step(self.objective, self.config, state, data, indices)

    def lower(self, state: TrainState, data: Array, indices: Array) -> jax.stages.Lowered:
        """The program a call with these arguments runs, lowered: ``.compile().cost_analysis()``
        counts its FLOPs, ``.as_text()`` shows it. A call after ``.compile()`` reuses that
        executable (JAX caches both stages in memory). To run the update, call the step."""
        return _train_step.lower(self.objective, self.config, state, data, indices).lowered

    def compiled_variants(self) -> int:
        """Compiled variants of the update so far (filter_jit's cache, shared by all steps): a
        call that recompiles adds one."""
        return _train_step._cached._cache_size()


@eqx.filter_jit
def _train_step(objective, config: TrainConfig, state: TrainState, data: Array, indices: Array):
    optimizer = make_optimizer(config)
    x0 = data[indices]
    loss, grads = jax.value_and_grad(objective)(
        state.params, x0, jax.random.fold_in(state.key, state.step)
    )
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # EMA decay warmed up as min(decay, (1 + s) / (10 + s)) (TF's num_updates rule) so that
    # short runs are not dominated by the initial parameters.
    s = state.step.astype(jnp.float32)
    decay = jnp.minimum(config.ema_decay, (1.0 + s) / (10.0 + s))
    ema = optax.incremental_update(params, state.ema, 1.0 - decay)
    new = TrainState(params, opt_state, ema, state.step + 1, state.key, state.bad_step)
    ok = jnp.isfinite(loss) & jnp.isfinite(optax.tree.norm(grads)) & (state.bad_step < 0)
    kept = eqx.tree_at(
        lambda s: s.bad_step, state, jnp.where(state.bad_step < 0, state.step, state.bad_step)
    )
    # One conditional rather than a select per array: the same update (to float rounding, as
    # XLA fuses it differently), and a U-Net's step compiles faster, at no cost per update.
    new = jax.lax.cond(ok, lambda: new, lambda: kept)
    return new, loss


class TrainResult(eqx.Module):
    """The final state, its EMA parameters, the logged ``(step, loss)`` pairs of this call and
    the EMA parameters at the requested ``snapshot_steps`` (those this call passed through)."""

    state: TrainState
    logged_steps: np.ndarray
    logged_losses: np.ndarray
    snapshots: dict = eqx.field(default_factory=dict)

    @property
    def params(self):
        return self.state.params

    @property
    def ema(self):
        return self.state.ema


def fit(
    model, process: AbstractProcess, data, config: TrainConfig, *, key: PRNGKeyArray, **options: Any
) -> TrainResult:
    """Train ``model`` by the diffusion objective: :func:`fit_objective` with
    :class:`DiffusionObjective` (``config``'s weighting and time sampler).

    Args:
        model: a :class:`wgfm.models.Model`.
        process: the forward process.
        data: the training examples, ``(N, *sample_shape)``.
        config: the optimisation settings (``config.steps`` updates).
        key: the run's key.
        **options: :func:`fit_objective`'s (``run_dir``, ``resume``, ``stop_at``, ``progress``,
            ``extra_meta``, ``mesh``, ``snapshot_steps``, ``on_start``, ``desc``).

    Returns:
        The :class:`TrainResult` of the run.
    """
    objective = DiffusionObjective(model, process, config.weighting, config.time_sampler)
    return fit_objective(objective, data, config, key=key, **options)


def fit_objective(
    objective,
    data,
    config: TrainConfig,
    *,
    key: PRNGKeyArray,
    run_dir: str | Path | None = None,
    resume: bool = False,
    stop_at: int | None = None,
    progress: bool = True,
    extra_meta: dict | None = None,
    mesh: jax.sharding.Mesh | None = None,
    snapshot_steps: Sequence[int] = (),
    on_start: Callable[[int], None] | None = None,
    desc: str = "train",
) -> TrainResult:
    """The training loop: ``config.steps`` updates (:class:`TrainStep`) of any
    ``objective(params, batch, key) -> scalar loss`` that has ``init(key, sample_shape, dtype)``
    and ``describe() -> dict`` on ``data`` (``(N, *sample_shape)``). :func:`fit` trains a
    diffusion model with it, :func:`wgfm.latent.fit_vae` the VAE.

    With ``mesh`` (:func:`wgfm.distributed.make_mesh`) the step is data parallel: each batch
    sharded over the mesh (``batch_size`` must divide its device count), state and data
    replicated; checkpoints are the same and restore on any device count.

    With ``run_dir``: metrics go to ``run_dir/metrics.jsonl`` and checkpoints to
    ``run_dir/checkpoints`` every ``config.checkpoint_every`` steps and at the end, each with
    the config, what ``describe`` returns (when not empty) and ``extra_meta``; ``resume``
    continues from the newest readable one (unreadable newer ones are moved into
    ``checkpoints/corrupt/`` with a warning; none at all: step 0, with a warning if the
    directory holds a previous run's metrics or config), after checking
    that its stored config and ``describe`` values match (``ValueError`` naming the fields
    that differ), and cuts ``metrics.jsonl`` back to the restored step. Without ``resume`` a
    ``run_dir`` that already holds checkpoints or metrics is refused (``ValueError``), nothing
    written. ``on_start(step)`` is called once the starting state is settled, before the first
    update (to write files that must only describe a run that really starts).
    ``stop_at`` ends the call early after that step
    (with a checkpoint), as an interruption would. ``snapshot_steps`` keeps the EMA parameters
    after those steps (``TrainResult.snapshots``): a training curve without retraining. Raises
    ``ValueError`` on non-finite data before the first step, :class:`NonFiniteLossError`
    (naming the step) if the loss diverges. ``desc`` labels the progress bar."""
    described = objective.describe()
    if described:
        extra_meta = {"objective": described, **(extra_meta or {})}
    data = check_data(data)
    n = data.shape[0]
    snap_at = {int(s) for s in snapshot_steps}
    if any(not 1 <= s <= config.steps for s in snap_at):
        raise ValueError(
            f"`snapshot_steps` must lie in [1, {config.steps}] (config.steps), got "
            f"{sorted(snapshot_steps)}."
        )
    snaps: dict[int, Any] = {}
    data_position(n, config.batch_size, 0)  # validates batch_size against the data size
    k_run, k_data = jax.random.split(key)
    state = init_state(objective, config, data.shape[1:], key=k_run, dtype=data.dtype)
    ckpt = None
    if run_dir is not None:
        from .checkpoint import Checkpointer  # orbax is imported only for runs that checkpoint

        run_dir = Path(run_dir)
        if not resume:
            _refuse_used_run_dir(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        ckpt = Checkpointer(run_dir / "checkpoints", max(2, config.keep_checkpoints))
        if resume:
            state = _resume_state(ckpt, state, config, (extra_meta or {}).get("objective"))
            _truncate_metrics(run_dir, int(state.step))
    elif resume:
        raise ValueError("`resume=True` needs a `run_dir` to resume from.")
    if on_start is not None:
        on_start(int(state.step))
    step_fn = TrainStep(objective, config)
    data_dev = jnp.asarray(data)
    if mesh is not None:
        from .distributed import data_parallel, replicate

        step_fn = data_parallel(step_fn, mesh, batch_argnums=2)
        state, data_dev = replicate((state, data_dev), mesh)
    start, end = int(state.step), min(config.steps, stop_at or config.steps)
    meta = {"config": dataclasses.asdict(config), **(extra_meta or {})}
    logged: list[tuple[int, float]] = []
    bar = tqdm(total=config.steps, initial=start, disable=not progress, desc=desc)
    t_last, s_last, window = time.perf_counter(), start, []
    # One compiled update per host call: a fori_loop over several updates would save the
    # dispatch for a small MLP, but XLA:CPU runs a U-Net's update several times slower inside
    # a loop (docs/xla_cpu.md).
    try:
        for s in range(start, end):
            idx = jnp.asarray(batch_indices(k_data, n, config.batch_size, s), jnp.int32)
            state, loss = step_fn(state, data_dev, idx)
            window.append(loss)
            bar.update(1)
            done = s + 1
            if done in snap_at:
                snaps[done] = state.ema
            if done % config.log_every == 0 or done == end:
                _check_finite(state, ckpt)
                mean_loss = float(np.mean(jax.device_get(window)))
                now = time.perf_counter()
                rate = (done - s_last) / max(now - t_last, 1e-9)
                t_last, s_last, window = now, done, []
                logged.append((done, mean_loss))
                bar.set_postfix(loss=f"{mean_loss:.4g}", steps_per_s=f"{rate:.1f}")
                if run_dir is not None:
                    _log_metrics(run_dir, done, mean_loss, rate, n, config)
            if ckpt is not None and (done % config.checkpoint_every == 0 or done == end):
                _check_finite(state, ckpt)
                _save(ckpt, state, done, n, config, meta)
    except KeyboardInterrupt:
        # Keep what was done: the state after the last completed step, if it is sound.
        step = int(state.step)
        if ckpt is not None and int(state.bad_step) < 0 and step > 0 and step not in ckpt.steps():
            _save(ckpt, state, step, n, config, meta)
        raise
    finally:
        bar.close()
        if ckpt is not None:
            ckpt.close()
    steps_arr = np.array([s for s, _ in logged], dtype=np.int64)
    return TrainResult(state, steps_arr, np.array([v for _, v in logged]), snaps)


def check_data(data) -> np.ndarray:
    """``data`` as a floating NumPy array ``(N, *sample_shape)``, or a ValueError naming the
    first non-finite example."""
    arr = np.asarray(data)
    if arr.ndim < 2 or arr.shape[0] < 1:
        raise ValueError(f"`data` must have shape (N, *sample_shape), got {arr.shape}.")
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"`data` must be floating point, got dtype {arr.dtype}.")
    bad = ~np.isfinite(arr)
    if bad.any():
        first = int(np.argwhere(bad.reshape(arr.shape[0], -1).any(axis=1))[0, 0])
        raise ValueError(
            f"`data` contains {int(bad.sum())} non-finite values (first in example {first}); "
            "training was not started."
        )
    return arr


# TrainConfig fields that only say how a run is recorded: a resume may change them.
_BOOKKEEPING = ("checkpoint_every", "keep_checkpoints", "log_every")


def _refuse_used_run_dir(run_dir: Path) -> None:
    ck, metrics = run_dir / "checkpoints", run_dir / "metrics.jsonl"
    used = (ck.is_dir() and any(p.name.isdigit() for p in ck.iterdir())) or (
        metrics.is_file() and metrics.stat().st_size > 0
    )
    if used:
        raise ValueError(
            f"`run_dir` {run_dir} already holds a run (checkpoints or metrics.jsonl); pass "
            "`resume=True` to continue it or choose another directory. Nothing was written."
        )


def _resume_state(
    ckpt: Checkpointer, state: TrainState, config: TrainConfig, objective: dict | None = None
) -> TrainState:
    """The newest readable checkpoint's state, after checking that it was trained with
    ``config`` (and the objective's settings ``objective``, when given); ``state`` itself (with
    a warning) when there is no checkpoint."""
    restored = ckpt.restore_latest(state.as_dict())
    if restored is None:
        run_dir = ckpt.directory.parent
        if not any((run_dir / f).exists() for f in ("metrics.jsonl", "config.json")):
            return state  # a fresh directory: nothing was expected to be there
        warnings.warn(
            f"resume: no checkpoint in {ckpt.directory}; starting from step 0.", stacklevel=3
        )
        return state
    stored = restored[1].get("config", {})
    wanted = dataclasses.asdict(config)
    differ = [k for k in wanted if k not in _BOOKKEEPING and k in stored and stored[k] != wanted[k]]
    if objective is not None:
        stored_obj = restored[1].get("objective", {})
        wanted.update({f"objective.{k}": v for k, v in objective.items()})
        stored.update({f"objective.{k}": v for k, v in stored_obj.items()})
        differ += [f"objective.{k}" for k in objective if stored_obj.get(k) != objective[k]]
    if differ:
        pairs = ", ".join(f"{k}: {stored.get(k)!r} -> {wanted[k]!r}" for k in differ)
        raise ValueError(
            f"resume: the checkpoint at step {restored[1].get('step')} in {ckpt.directory} was "
            f"trained with another `config` ({pairs}); resume with the same values or train "
            "into a new directory."
        )
    return TrainState(**restored[0])


def _truncate_metrics(run_dir: Path, step: int) -> None:
    """Keep the records of ``metrics.jsonl`` up to ``step`` (a resumed run logs the later ones
    again), dropping a line cut short by a kill; replaced atomically (write, then rename)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return
    lines = path.read_text().splitlines()
    kept = [line for line in lines if (s := _logged_step(line)) is not None and s <= step]
    if kept != lines or (lines and not path.read_text().endswith("\n")):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, path)


def _logged_step(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def _check_finite(state: TrainState, ckpt: Checkpointer | None) -> None:
    bad = int(state.bad_step)
    if bad >= 0:
        kept = f"; last good checkpoint kept in {ckpt.directory}" if ckpt is not None else ""
        if ckpt is not None and ckpt.steps():
            kept += f" (step {ckpt.steps()[-1]})"
        raise NonFiniteLossError(
            f"loss or gradient became non-finite at step {bad + 1}; training stopped{kept}."
        )


def _save(ckpt: Checkpointer, state: TrainState, step: int, n: int, config, meta) -> None:
    epoch, index = data_position(n, config.batch_size, step)
    ckpt.save(step, state.as_dict(), {**meta, "epoch": epoch, "batch_in_epoch": index})


def _log_metrics(run_dir: Path, step: int, loss: float, rate: float, n: int, config) -> None:
    lr = float(np.asarray(make_optimizer_schedule(config)(step)))
    epoch, _ = data_position(n, config.batch_size, step)
    rec = {
        "step": step,
        "loss": loss,
        "lr": lr,
        "steps_per_s": rate,
        "epoch": epoch,
        "time": time.time(),
    }
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps(rec) + "\n")


def make_optimizer_schedule(config: TrainConfig):
    """The learning-rate schedule of :func:`make_optimizer`."""
    decay_steps = max(config.steps, config.warmup_steps + 1)
    return optax.warmup_cosine_decay_schedule(
        0.0, config.lr, config.warmup_steps, decay_steps, end_value=0.01 * config.lr
    )
