"""``wgfm reproduce`` over two processes (``--jobs 2``): the same report as one process, number
for number, and each shared network trained once."""

import dataclasses
import json
from pathlib import Path

import jax
import numpy as np
import pytest

from experiments.config import QUICK, ReproduceConfig
from experiments.reproduce import run

# Claims 1 and 3 on the mixtures in tiny sizes: the two-process code without an image network.
TINY = dataclasses.replace(
    QUICK, num_levels=2, num_diag_samples=2, loop_points=(8,), bridge_steps=16, noisy_copies=3,
    noisy_points=6, train_steps_2d=20, train_steps_10d=20, batch_size=64, num_eval_samples=128,
    num_likelihood=8, helmholtz_grid=16,
)  # fmt: skip


def test_two_processes_give_the_same_report_as_one(tmp_path):
    # `jobs=2` runs claims 3-5 in a second Python process with its own networks; every key
    # derives from the seed and a name, so the report must not change, number for number.
    # (The mixtures preset: the same two-process code without compiling an image network.)
    reports = {
        jobs: run(
            ReproduceConfig(
                quick=True, preset="mixtures", out=tmp_path / str(jobs), only=(1, 3), jobs=jobs
            ),
            sizes=TINY,
        )  # fmt: skip
        for jobs in (1, 2)
    }
    one, two = reports[1], reports[2]
    assert json.loads((tmp_path / "2" / "results.json").read_text())["header"]["processes"] == 2
    assert list(two.rows) == list(one.rows) and [t[0] for t in two.rows] == ["1", "3"]
    assert two.rows == one.rows and two.figures == one.figures
    flat = [jax.tree.leaves(_untimed(r.numbers)) for r in (one, two)]
    for a, b in zip(*flat, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # The compiled programs went to the persistent cache (here the test session's).
    assert any(Path(jax.config.jax_compilation_cache_dir).iterdir())
    with pytest.raises(ValueError, match="jobs"):
        ReproduceConfig(jobs=3)


def _untimed(d):
    """``d`` without its wall-clock entries (which differ between any two runs)."""
    if isinstance(d, dict):
        return {k: _untimed(v) for k, v in d.items() if "seconds" not in k}
    return d


def test_processes_of_a_run_train_each_shared_network_once(tmp_path):
    # The first caller trains and leaves the result; later callers (the other process) load it,
    # arrays exactly equal, with the trainer's time and loss.
    from experiments.common import _shared

    calls = []

    def train():
        calls.append(1)
        ema = {"w": jax.numpy.arange(6.0).reshape(2, 3)}
        return ema, {3: {"w": jax.numpy.ones((2, 3))}}, 1.5, 0.25

    first = _shared(tmp_path, "2d-eps", train)
    again = _shared(tmp_path, "2d-eps", train)
    assert len(calls) == 1 and again[2:] == (1.5, 0.25) and list(again[1]) == [3]
    np.testing.assert_array_equal(np.asarray(again[0]["w"]), np.asarray(first[0]["w"]))
    np.testing.assert_array_equal(np.asarray(again[1][3]["w"]), 1.0)
