"""Run by ``tests/test_faults.py`` in a subprocess: train (resuming when the run directory holds
checkpoints) and SIGKILL itself at one chosen point.

Usage: ``python _fault_worker.py RUN_DIR KILL_SPEC_JSON`` where the spec is one of
``{"at": "step", "n": s}`` (after update ``s`` has run), ``{"at": "metrics", "n": s}`` (halfway
through writing the metrics line of step ``s``), or ``{"at": "save", "n": k, "phase": p}`` during
this process's ``k``-th checkpoint save, with ``p`` one of ``before_commit`` (orbax's temporary
directory is complete but not renamed), ``after_commit`` (renamed, orbax's bookkeeping not done)
or ``timer`` (a timer started with the save fires after ``spec["delay"]`` seconds, wherever the
process then is). Exits 3 if the point was never reached.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)  # as tests/conftest.py: the same programs

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from wgfm import checkpoint, gmm, processes, train  # noqa: E402
from wgfm.models import get_model  # noqa: E402


def setup():
    """The run both this worker and the test train: ``(model, process, data, config, key)``."""
    cfg = train.TrainConfig(
        steps=24,
        batch_size=32,
        lr=1e-3,
        warmup_steps=3,
        checkpoint_every=4,
        log_every=4,
        ema_decay=0.9,
        keep_checkpoints=2,
    )
    model = get_model("mlp-small", kind="eps", width=16)
    data = np.asarray(gmm.ring(dtype=jnp.float32).sample(256, key=jax.random.PRNGKey(1)))
    return model, processes.VP(), data.astype(np.float32), cfg, jax.random.PRNGKey(11)


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def arm(spec: dict) -> None:
    """Patch the one place where ``spec`` says to die."""
    n = int(spec["n"])
    if spec["at"] == "step":
        make = train.TrainStep  # what the loop builds its step from

        def make_killing(*args, **kwargs):
            step_fn = make(*args, **kwargs)

            def step(state, data, idx):
                new, loss = step_fn(state, data, idx)
                if int(new.step) == n:
                    jax.block_until_ready(new)
                    die()
                return new, loss

            return step

        train.TrainStep = make_killing
    elif spec["at"] == "metrics":
        log = train._log_metrics

        def log_killing(run_dir, step, *args):
            if step == n:
                with open(run_dir / "metrics.jsonl", "a") as f:
                    f.write(f'{{"step": {step}, "loss": 0.12')  # cut short
                die()
            log(run_dir, step, *args)

        train._log_metrics = log_killing
    else:
        _arm_save(spec, n)


def _arm_save(spec: dict, n: int) -> None:
    from orbax.checkpoint._src.path import atomicity

    saves = [0]
    save = checkpoint.Checkpointer.save

    def counting_save(self, *args, **kwargs):
        saves[0] += 1
        if saves[0] == n and spec["phase"] == "timer":
            threading.Timer(float(spec["delay"]), die).start()
        return save(self, *args, **kwargs)

    commit = atomicity.on_commit_callback

    async def killing_commit(*args, **kwargs):
        if saves[0] == n and spec["phase"] == "before_commit":
            die()
        await commit(*args, **kwargs)
        if saves[0] == n and spec["phase"] == "after_commit":
            die()

    checkpoint.Checkpointer.save = counting_save
    atomicity.on_commit_callback = killing_commit


def main(run_dir: Path, spec: dict) -> int:
    arm(spec)
    model, process, data, cfg, key = setup()
    resume = (run_dir / "checkpoints").is_dir()
    train.fit(model, process, data, cfg, key=key, run_dir=run_dir, resume=resume, progress=False)
    if spec.get("phase") == "timer":
        time.sleep(float(spec["delay"]) + 5.0)  # a timer that fired late still kills
    return 3


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), json.loads(sys.argv[2])))
