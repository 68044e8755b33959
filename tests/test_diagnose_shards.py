"""``wgfm diagnose`` split over processes (``--shard I/N``): two concurrent processes give the
single-process results.json; a process SIGKILLed while writing a level and rerun loses nothing;
merges that cannot work are refused in one line and change nothing; the launchers' environment
variables name the share."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import _shard_worker as worker
import numpy as np
import pytest

from wgfm import cli
from wgfm.diagnosis import outdir, shards
from wgfm.diagnosis.command import run
from wgfm.diagnosis.shards import levels_of, parse_shard, shard_from_env

WORKER = Path(worker.__file__)
# Entries that say how long and where a run took, not what it measured.
TIMING = ("total run time (s)", "seconds per image and level", "the same rate at the full")


def _spawn(out: Path, shard: str, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), str(WORKER.parent)])}
    return subprocess.Popen(
        [sys.executable, str(WORKER), str(out), shard, *extra],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _measured(out: Path) -> dict:
    """results.json less what depends on the clock or the machine: the rows, the numbers, the
    figures' names and the header lines that are not timings."""
    res = json.loads((out / "results.json").read_text())
    header = {k: v for k, v in res["header"].items() if not any(t in k for t in TIMING)}
    return {"header": header, **{k: res[k] for k in ("claims", "numbers", "figures", "title")}}


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The single-process run, in this process (its compiled programs are cached for the
    subprocesses)."""
    out = tmp_path_factory.mktemp("single") / "run"
    t0 = time.perf_counter()
    d = run(worker.config(out, None), sizes=worker.SIZES)
    assert d is not None
    return out, time.perf_counter() - t0


def _seeded(ref: Path, out: Path) -> Path:
    """A fresh directory of the same run holding only the manifest and the generated images
    (as after a first process generated them): the processes skip the generation."""
    out.mkdir()
    for name in ("diagnose.json", "generated.npy"):
        shutil.copy(ref / name, out / name)
    return out


def test_two_processes_give_the_single_process_results(single, tmp_path):
    ref, _ = single
    out = _seeded(ref, tmp_path / "run")
    t0 = time.perf_counter()
    procs = [_spawn(out, f"{i}/2") for i in range(2)]  # at once, into one directory
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-2000:]
    seconds = time.perf_counter() - t0
    # Every level is measured by one process on the single run's points, keys and batch (a
    # level's samples vmapped together): equal to the last bit, not to a tolerance.
    assert _measured(out) == _measured(ref), seconds
    left = [p.name for p in out.rglob("*") if p.name.startswith(".")]
    assert not left, left  # no temporary file left behind
    records = sorted(p.name for p in (out / "shards").iterdir())
    assert records == ["shard-0-of-2.json", "shard-1-of-2.json"]
    # What the run used joins both processes' own records: CPU summed, wall from the first start
    # to the last end (so at least each process's stated run time, which is rounded to 0.1 s
    # and the wall time to 0.01 s: 0.06 s of slack).
    used = json.loads((out / "results.json").read_text())["resources"]
    own = [json.loads((out / "shards" / r).read_text()) for r in records]
    assert used["processes"] == 2, used
    assert used["cpu_s"] == pytest.approx(sum(r["resources"]["cpu_s"] for r in own), abs=0.02)
    assert used["wall_s"] >= max(r["run time (s)"] for r in own) - 0.06, used


def test_a_process_killed_while_writing_and_rerun_loses_nothing(single, tmp_path, capsys):
    ref, _ = single
    out = _seeded(ref, tmp_path / "run")
    assert run(worker.config(out, "0/2"), sizes=worker.SIZES) is None  # levels of 1/2 missing
    proc = _spawn(out, "1/2", "die")
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == -9, err[-2000:]  # died halfway through its second level
    kept = outdir.level_path(out, "differential", 1)
    assert kept.is_file() and not outdir.level_path(out, "integral", 1).is_file()
    torn = [p for p in (out / "parts" / "integral").iterdir() if p.name.endswith(".tmp")]
    assert len(torn) == 1  # the torn write is a temporary file, never a level
    before = _snapshot(out)
    capsys.readouterr()
    assert cli.main(["diagnose", "--merge", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "claim 2 levels [1]" in err[0] and "--shard 1/2 " in err[0], err
    assert _snapshot(out) == before  # the refused merge wrote nothing
    written = kept.stat().st_mtime_ns
    d = run(worker.config(out, "1/2"), sizes=worker.SIZES)
    assert d is not None and _measured(out) == _measured(ref)
    assert kept.stat().st_mtime_ns == written  # the level kept before the kill was reused
    assert "1 of 3 levels reused" in d.notes[list(d.notes)[0]]


def test_a_level_of_another_run_is_refused(single, tmp_path):
    ref, _ = single
    out = tmp_path / "run"
    shutil.copytree(ref, out)
    path = outdir.level_path(out, "integral", 0)
    values, meta = outdir.load_level(path)
    outdir.store_level(path, values, {**meta, "stamp": {**meta["stamp"], "fingerprint": "x"}})
    (out / "results.json").unlink()
    before = _snapshot(out)
    with pytest.raises(ValueError, match=r"integral level-000.npz .* another run"):
        shards.merge(out)
    # a process of another run (here another seed) is refused before it writes anything
    other = dataclasses.replace(worker.config(out, "1/2"), seed=1)
    with pytest.raises(ValueError, match="other settings \\(seed differ\\)"):
        run(other, sizes=worker.SIZES)
    assert _snapshot(out) == before


def test_shard_from_the_launchers_environment():
    assert shard_from_env({}) is None
    assert shard_from_env({"SLURM_NTASKS": "1", "SLURM_PROCID": "0"}) is None
    assert shard_from_env({}, (2, 4)) == (2, 4, "jax.distributed")
    assert shard_from_env({"RANK": "3", "WORLD_SIZE": "8"}) == (3, 8, "RANK/WORLD_SIZE")
    # torchrun inside a Slurm job: torchrun's ranks
    env = {"RANK": "1", "WORLD_SIZE": "2", "SLURM_PROCID": "0", "SLURM_NTASKS": "4"}
    assert shard_from_env(env)[:2] == (1, 2)  # pyright: ignore[reportOptionalSubscript]
    assert shard_from_env({"SLURM_PROCID": "2", "SLURM_NTASKS": "3"})[:2] == (2, 3)  # pyright: ignore[reportOptionalSubscript]
    array = {"SLURM_ARRAY_TASK_ID": "12", "SLURM_ARRAY_TASK_MIN": "10"}
    array["SLURM_ARRAY_TASK_MAX"] = "13"
    assert shard_from_env(array) == (2, 4, "SLURM_ARRAY_TASK_ID")
    # an array of 4 tasks of 2 processes each: 8 shares
    both = {**array, "SLURM_PROCID": "1", "SLURM_NTASKS": "2"}
    assert shard_from_env(both)[:2] == (5, 8)  # pyright: ignore[reportOptionalSubscript]
    with pytest.raises(ValueError, match="step by 1"):
        shard_from_env({**array, "SLURM_ARRAY_TASK_STEP": "2"})
    with pytest.raises(ValueError, match="WORLD_SIZE must be an integer"):
        shard_from_env({"RANK": "0", "WORLD_SIZE": "two"})
    with pytest.raises(ValueError, match="SLURM_ARRAY_TASK_MIN is needed"):
        shard_from_env({"SLURM_ARRAY_TASK_ID": "1"})


def test_parse_shard_and_levels(tmp_path, capsys):
    assert parse_shard("1/3") == (1, 3)
    for bad in ("3/3", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(ValueError, match="`--shard` must be I/N"):
            parse_shard(bad)
    # every level once, each process low and high noise alike
    parts = [levels_of(i, 3, 10) for i in range(3)]
    assert sorted(sum(parts, [])) == list(range(10)) and parts[1] == [1, 4, 7]
    assert np.all([levels_of(i, 12, 10) == ([i] if i < 10 else []) for i in range(12)])
    # the command's one-line errors
    assert cli.main(["diagnose", "--model", "pkg.mod:fn", "--shard", "2/2"]) == 2
    assert capsys.readouterr().err.strip() == (
        "wgfm diagnose: `--shard` must be I/N with 0 <= I < N (e.g. 0/4), got '2/2'."
    )
    assert cli.main(["diagnose", "--merge", str(tmp_path)]) == 2
    assert "holds no wgfm diagnose run" in capsys.readouterr().err
    assert cli.main(["diagnose", "--out", str(tmp_path)]) == 2
    assert "`--model` is required (or `--merge OUT`" in capsys.readouterr().err


def test_sweep_select_gives_the_full_sweeps_rows():
    """One level of a keyed sweep, alone, is that level's row of the whole sweep: its samples
    and keys are those the grid gives it."""
    import jax
    import jax.numpy as jnp

    from wgfm.diagnostics import sweep

    def noisy_norm(field, x, t, *, key):
        return jnp.sum(field(x, t) * jax.random.normal(key, x.shape))

    xs = jnp.arange(3 * 2 * 4, dtype=jnp.float32).reshape(3, 2, 4) / 10
    ts = jnp.asarray([0.1, 0.5, 0.9], jnp.float32)
    field = lambda x, t: jnp.sin(x) * t  # noqa: E731
    whole = sweep(noisy_norm, field, xs, ts, key=jax.random.key(1)).values
    for i in range(3):
        one = sweep(noisy_norm, field, xs, ts, key=jax.random.key(1), select=[i])
        np.testing.assert_array_equal(one.values[0], whole[i])
    with pytest.raises(ValueError, match="`select` must be time indices in \\[0, 3\\)"):
        sweep(noisy_norm, field, xs, ts, key=jax.random.key(1), select=[3])


def test_levels_measured_one_by_one_are_the_claims_measurement():
    """What a process measures (a claim's plan, then its levels one at a time, summarized) is
    the library's claim.measure on the same points: the probe path's keys and the loops'."""
    import jax

    from wgfm.diagnosis import CLAIMS
    from wgfm.diagnosis.api import claim_points, prepare
    from wgfm.diagnosis.claim import ClaimInputs

    field, process, _ = worker.model()
    sizes = dataclasses.replace(worker.SIZES, jacobians="probes", rel_se=None)
    x = np.asarray(jax.random.normal(jax.random.key(3), (4, 6)), np.float32)
    score, controls, x = prepare(field, process, x, key=jax.random.key(0), kind="score")
    controls = dataclasses.replace(controls, untrained=None)
    for claim in CLAIMS.values():
        x0, key = claim_points(jax.random.key(0), claim, x, sizes)
        want = claim.measure(score, process, x0, sizes, key=key, controls=controls)
        inputs = ClaimInputs(score, process, x0, sizes, key, controls)
        plan = claim.plan(inputs)
        parts = claim.level_values(inputs, plan, range(claim.num_levels(sizes)))
        values = jax.tree.map(lambda *v: np.concatenate(v, 1), *(v for _, v in parts))
        ts = np.asarray(want.numbers["levels"])
        got = claim.summarize(values, plan, sizes, ts=ts, control_name=controls.control_name)
        assert [r.claim for r in got.rows] == [r.claim for r in want.rows]
        flat_got, flat_want = outdir.flatten(got.numbers), outdir.flatten(want.numbers)
        assert flat_got.keys() == flat_want.keys()
        for k, v in flat_want.items():
            if v.dtype.kind not in "fc":
                np.testing.assert_array_equal(flat_got[k], v, err_msg=k)
            elif claim.key == "integral" and "oracle score" in k:
                # The Gaussian fit's circulation is float32 rounding of the loop sum (of
                # scores of size 1/sigma^2 at low noise), different in each program (one
                # level's against all levels' in one): only its size is a number.
                g = flat_got[k]
                assert np.all((g == v) | ((g < 10 * v) & (v < 10 * g))), (k, g, v)
            else:
                # float32 rounding of the same arithmetic: a loop integral's rounding is that
                # of the largest terms it sums, so the bound is 1e-5 of the largest value of
                # the quantity (a low-noise circle's I is 1e-4 of a high-noise one's)
                atol = 1e-5 * np.max(np.abs(v))
                np.testing.assert_allclose(flat_got[k], v, rtol=1e-5, atol=atol, err_msg=k)
