"""Training throughput on CPU: steps/s of the jitted train step (compile time reported apart).

Cases: the 2D MLP ("mlp-small", batch 256, eps loss) on the ring mixture and the digits U-Net
("unet-digits", batch 64, eps loss with min-SNR weighting) on scikit-learn's 8x8 digits.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks._harness import record, time_jitted, write_results
from wgfm import data, gmm, processes, train
from wgfm.models import get_model

CASES = {
    "mlp-2d": ("mlp-small", 256, "uniform"),
    "unet-digits": ("unet-digits", 64, "min-snr"),
}


def _dataset(case: str) -> np.ndarray:
    if case == "mlp-2d":
        return np.asarray(gmm.ring().sample(4096, key=jax.random.PRNGKey(0)), np.float32)
    return data.digits()[0]


def run(quick: bool = False, *, tiny: bool = False) -> list[dict]:
    rows = []
    process = processes.VP()
    for case, (name, batch, weighting) in CASES.items():
        # Tiny: the smallest U-Net, so the smoke test checks the path, not the compile time.
        name, batch = ("unet-tiny" if "unet" in name else name, 8) if tiny else (name, batch)
        x = jnp.asarray(_dataset(case))
        cfg = train.TrainConfig(steps=1000, batch_size=batch, weighting=weighting)
        model = get_model(name, kind="eps")
        state = train.init_state(model, cfg, x.shape[1:], key=jax.random.PRNGKey(0))
        step = train.make_train_step(model, process, cfg)
        idx = jnp.arange(batch, dtype=jnp.int32)
        repeats = 1 if tiny else 5 if quick else 30
        # jax.jit of the step (a PyTree callable) is the same program, with the AOT API.
        compile_s, median = time_jitted(jax.jit(step), state, x, idx, repeats=repeats)
        n_params = sum(p.size for p in jax.tree.leaves(state.params))
        rows.append(
            record(
                "train",
                case,
                f"wgfm-{name}",
                compile_s=compile_s,
                median_s=median,
                repeats=repeats,
                steps_per_s=1.0 / median,
                batch=batch,
                params=n_params,
            )
        )
    return rows


if __name__ == "__main__":
    import sys

    records = run(quick="--quick" in sys.argv)
    print(write_results(records, Path("results/bench"), name="bench_train"))
    for r in records:
        print(
            r["case"], f"compile {r['compile_s']:.2f} s", f"{r['extra']['steps_per_s']:.1f} steps/s"
        )
