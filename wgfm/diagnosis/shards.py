"""``wgfm diagnose`` split over processes: which share is this process's, and the assembly.

A run's unit of work is one noise level of one claim: every level is measured on the same
images, with the noise, loops and probes a single process draws for it
(:meth:`wgfm.diagnosis.claim.AbstractClaim.level_values`), so levels measured by different
processes join into the single-process result. Process ``i`` of ``n`` takes the levels
``i, i + n, ...`` of every claim (low and high noise alike) and keeps each in its own file
of the output directory (:func:`wgfm.diagnosis.outdir.level_path`); a killed process loses only
the level it was measuring. :func:`merge` joins the levels into REPORT.md and results.json,
refusing (and changing nothing) while a level is missing or a file belongs to another run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

from ..diagnostics import times_grid
from ..distributed.hosts import int_env
from ..processes import AbstractProcess
from ..report import combined_resources
from . import outdir, spaces
from .api import Diagnosis
from .asymmetry import JacobianAsymmetry
from .claim import AbstractClaim, ClaimInputs, Controls
from .plan import plan_lines
from .registry import CLAIMS
from .sizes import FULL, DiagnoseSizes


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` as ``(I, N)``, with ``0 <= I < N``; a ``ValueError`` naming ``--shard``."""
    try:
        i, n = (int(v) for v in str(text).split("/"))
    except ValueError:
        i, n = -1, 0
    if not 0 <= i < n:
        raise ValueError(f"`--shard` must be I/N with 0 <= I < N (e.g. 0/4), got {text!r}.")
    return i, n


def this_process(shard: str | None, log=print) -> tuple[int, int]:
    """This process's ``(index, count)``: ``shard`` (``--shard I/N``), else the launcher's
    environment (:func:`shard_from_env`), else ``(0, 1)``.

    Args:
        shard: ``"I/N"`` or None.
        log: called with a line naming where a launcher's share was read.

    Returns:
        ``(index, count)``.
    """
    if shard is not None:
        return parse_shard(shard)
    found = shard_from_env(os.environ, (jax.process_index(), jax.process_count()))
    if found is None:
        return 0, 1
    log(f"process {found[0]} of {found[1]} (from {found[2]})")
    return found[0], found[1]


def shard_from_env(
    env: Mapping[str, str], process: tuple[int, int] = (0, 1)
) -> tuple[int, int, str] | None:
    """This process's share of a run launched as many: ``(index, count, where it was read)``,
    or None for a single process. In order: ``process`` (``jax.process_index()`` and
    ``jax.process_count()`` once ``jax.distributed`` is initialised), torchrun's ``RANK`` and
    ``WORLD_SIZE``, Slurm's array task (``SLURM_ARRAY_TASK_ID`` from ``SLURM_ARRAY_TASK_MIN`` to
    ``..._MAX``) times its tasks (``SLURM_PROCID`` of ``SLURM_NTASKS``).

    Args:
        env: the environment (``os.environ``).
        process: ``(index, count)`` of JAX's processes.

    Returns:
        ``(index, count, source)`` with ``count > 1``, or None.
    """

    def num(name: str, default: int | None = None) -> int:
        value = int_env(name, env.get(name))
        if value is None and default is None:
            raise ValueError(f"environment variable {name} is needed beside the others.")
        return default if value is None else value  # pyright: ignore[reportReturnType]

    if process[1] > 1:
        return process[0], process[1], "jax.distributed"
    if env.get("WORLD_SIZE") and num("WORLD_SIZE") > 1:
        return num("RANK"), num("WORLD_SIZE"), "RANK/WORLD_SIZE"
    index, count, source = 0, 1, []
    if env.get("SLURM_ARRAY_TASK_ID"):
        lo, hi = num("SLURM_ARRAY_TASK_MIN"), num("SLURM_ARRAY_TASK_MAX")
        if num("SLURM_ARRAY_TASK_STEP", 1) != 1:
            raise ValueError("a Slurm array must step by 1 (--array=0-N) to split a diagnosis.")
        index, count = num("SLURM_ARRAY_TASK_ID") - lo, hi - lo + 1
        source.append("SLURM_ARRAY_TASK_ID")
    tasks = num("SLURM_NTASKS", 1)
    if tasks > 1:
        index, count = index * tasks + num("SLURM_PROCID"), count * tasks
        source.append("SLURM_PROCID/SLURM_NTASKS")
    return (index, count, " and ".join(source)) if count > 1 else None


def levels_of(index: int, count: int, num_levels: int) -> list[int]:
    """The levels of a claim's ``num_levels`` that process ``index`` of ``count`` measures:
    every ``count``-th from ``index``, so each process gets low and high noise alike."""
    return list(range(index, num_levels, count))


def run_stamp(manifest: dict[str, Any]) -> dict[str, str]:
    """What every level file of a run carries: the model's fingerprint and a digest of the
    settings, from the directory's manifest."""
    settings = json.dumps(manifest["settings"], sort_keys=True).encode()
    return {
        "fingerprint": manifest["fingerprint"],
        "settings": hashlib.sha256(settings).hexdigest()[:16],
    }


def measure_levels(
    claim: AbstractClaim,
    score,
    process: AbstractProcess,
    x0,
    sizes: DiagnoseSizes,
    *,
    key,
    controls: Controls,
    out: Path,
    shard: tuple[int, int],
    mesh=None,
) -> int:
    """Measure ``claim`` at this process's levels (:func:`levels_of`) that ``out`` does not
    hold yet, keeping each level as it finishes. The claim's plan (exact Jacobians or probes)
    is made by the first process to get there and read back by every other.

    Returns:
        How many of this process's levels were already there (reused).
    """
    manifest = json.loads((out / outdir.MANIFEST).read_text())
    stamp = run_stamp(manifest)
    ts = times_grid(process, claim.num_levels(sizes))
    mine = levels_of(*shard, len(ts))
    todo = [i for i in mine if not outdir.level_path(out, claim.key, i).is_file()]
    if not todo:
        return len(mine)
    plan_path = out / "parts" / claim.key / "plan.json"

    inputs = ClaimInputs(score, process, x0, sizes, key, controls, mesh)

    def write_plan(tmp: Path) -> None:
        tmp.write_text(json.dumps(outdir.as_json(claim.plan(inputs))))

    outdir.publish_once(plan_path, write_plan)
    plan = json.loads(plan_path.read_text())
    t0 = time.perf_counter()
    for i, values in claim.level_values(inputs, plan, todo):
        meta = {"stamp": stamp, "t": float(ts[i]), "seconds": time.perf_counter() - t0}
        outdir.store_level(outdir.level_path(out, claim.key, i), values, meta)
        t0 = time.perf_counter()
    return len(mine) - len(todo)


def record_path(out: Path, shard: tuple[int, int]) -> Path:
    """Where process ``shard = (I, N)`` records that it started, then what it finished."""
    return out / "shards" / f"shard-{shard[0]}-of-{shard[1]}.json"


def start(out: Path, shard: tuple[int, int]) -> None:
    """Record that this process has started (a merge can then name it while it is missing)."""
    if not record_path(out, shard).is_file():
        text = json.dumps({"shard": list(shard), "finished": False})
        outdir.write_atomic(record_path(out, shard), text)


def finish(out: Path, shard: tuple[int, int], record: dict, sizes: DiagnoseSizes) -> bool:
    """Record what this process finished (``record``: the header lines, label, notes and
    reused levels the merge reads); returns whether every level of the run is now there."""
    record = {"shard": list(shard), "finished": True, **record}
    outdir.write_atomic(record_path(out, shard), json.dumps(outdir.as_json(record), indent=1))
    return not missing_levels(out, sizes)


def missing_levels(out: Path, sizes: DiagnoseSizes) -> dict[str, list[int]]:
    """Per claim key, the levels ``out`` does not hold yet (claims with none left out)."""
    missing = {}
    for claim in CLAIMS.values():
        gone = [
            i
            for i in range(claim.num_levels(sizes))
            if not outdir.level_path(out, claim.key, i).is_file()
        ]
        if gone:
            missing[claim.key] = gone
    return missing


def merge(out: Path | str) -> Diagnosis:
    """Join the levels kept in ``out`` by every process into REPORT.md, results.json and
    figures/, as one process would have written them (:meth:`Diagnosis.save`).

    Args:
        out: a ``wgfm diagnose`` output directory whose every level has been measured.

    Returns:
        The :class:`wgfm.diagnosis.Diagnosis` written. A missing level (naming the processes
        that measure it) or a level of another run is a ``ValueError``, and nothing is written.
    """
    out = Path(out)
    if not (out / outdir.MANIFEST).is_file():
        raise ValueError(f"`--merge` {str(out)!r} holds no wgfm diagnose run.")
    manifest = json.loads((out / outdir.MANIFEST).read_text())
    sizes = DiagnoseSizes(**manifest["settings"]["sizes"])
    started = [json.loads(p.read_text()) for p in sorted((out / "shards").glob("shard-*.json"))]
    records = [r for r in started if r["finished"]]
    missing = missing_levels(out, sizes)
    if missing or not records:
        counts = sorted({r["shard"][1] for r in started}) or [1]
        owners = sorted({f"{i % n}/{n}" for ls in missing.values() for i in ls for n in counts})
        what = "; ".join(f"claim {CLAIMS[k].number} levels {ls}" for k, ls in missing.items())
        raise ValueError(
            f"`--merge` {str(out)!r} is incomplete ({what or 'no process has finished'}): "
            f"rerun `wgfm diagnose` with --shard {', '.join(owners) or '0/1'} "
            "(what they finished is kept)."
        )
    stamp = run_stamp(manifest)
    record = min(records, key=lambda r: r["shard"][0])
    d = Diagnosis(record["label"], {})
    for claim in CLAIMS.values():
        paths = [outdir.level_path(out, claim.key, i) for i in range(claim.num_levels(sizes))]
        parts = [outdir.load_level(p) for p in paths]
        foreign = [
            p.name for p, (_, meta) in zip(paths, parts, strict=True) if meta["stamp"] != stamp
        ]
        if foreign:
            raise ValueError(
                f"`--merge`: {claim.key} {', '.join(foreign)} in {str(out)!r} belong to "
                "another run (model or settings); delete them and rerun their shards."
            )
        values = jax.tree.map(lambda *v: np.concatenate(v, axis=1), *(v for v, _ in parts))
        plan = json.loads((out / "parts" / claim.key / "plan.json").read_text())
        ts = np.asarray([meta["t"] for _, meta in parts])
        d.measurements[claim.title] = claim.summarize(
            values,
            plan,
            sizes,
            ts=ts,
            label=record["label"],
            control_name=record["control_name"],
            image=record["image"],
        )
        d.timings[claim.title] = float(sum(meta["seconds"] for _, meta in parts))
        # (at most every level: processes of an earlier split may have reused them too)
        reused = min(len(ts), sum(r["reused"].get(claim.key, 0) for r in records))
        d.notes[claim.title] = f"Clean images: {record['clean images']}." + (
            f" {reused} of {len(ts)} levels reused from an earlier run in this directory."
            if reused
            else ""
        )
    _latent_extras(d, record)
    header = dict(record["header"])
    header["total run time (s)"] = max(r["run time (s)"] for r in records)
    for claim in CLAIMS.values():
        header.update(claim.header(d.measurements[claim.title].numbers))
    header.update(cost_lines(d.timings, sizes, FULL))
    header.update(plan_lines(record.get("plan"), sizes, d.numbers))  # wgfm.diagnosis.plan
    # Each process's own record (a process rerun after a kill: its last attempt's).
    used = combined_resources([r["resources"] for r in records])
    d = dataclasses.replace(d, header=header, resources=used)
    save(d, out)
    return d


def _latent_extras(d: Diagnosis, record: dict) -> None:
    """Claim 1 of a latent pipeline: the decoded figure the processes wrote, and the
    comparison with a pixel-space run (``--pixel-run``)."""
    if record.get("latent_figure") is None:
        return
    title = JacobianAsymmetry.title
    m = d.measurements[title]
    rows = list(m.rows)
    if record.get("pixel_run") is not None:
        rows.append(spaces.pixel_vs_latent(m.numbers, Path(record["pixel_run"])))
    figures = {**m.figures, **record["latent_figure"]}
    d.measurements[title] = dataclasses.replace(m, rows=rows, figures=figures)


def save(d: Diagnosis, out: Path) -> None:
    """:meth:`Diagnosis.save` into ``out`` file by file through a temporary directory, so
    that two processes merging at once leave whole files (the same ones)."""
    tmp = out / f".merge-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        d.save(tmp)
        for f in sorted(tmp.rglob("*"), key=lambda p: p.name in ("results.json", "REPORT.md")):
            if f.is_file():
                target = out / f.relative_to(tmp)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(f, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def cost_lines(timings: dict[str, float], sz: DiagnoseSizes, full: DiagnoseSizes) -> dict:
    """Header lines that size a bigger run: each claim's seconds per image and level (its run
    time, compilation included, over the images x levels it measured) and that rate times the
    ``full`` sizes' images x levels. A lower bound for the full run where its per-image work
    grows too (more probes, longer loops).

    Args:
        timings: seconds per claim title.
        sz: the sizes measured.
        full: the sizes to extrapolate to.

    Returns:
        Two header lines per timed claim.
    """
    out = {}
    for claim in CLAIMS.values():
        secs = timings.get(claim.title)
        if secs is None:
            continue
        per = secs / claim.units(sz)
        n = claim.number
        out[f"claim {n}: seconds per image and level (compilation included)"] = round(per, 2)
        out[
            f"claim {n}: the same rate at the full sizes' {claim.units(full)} images x levels (s)"
        ] = round(per * claim.units(full))
    return out
