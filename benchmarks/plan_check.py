"""The plan of a run (:mod:`wgfm.diagnosis.plan`) against a measured medium-size diagnosis.

A per-pixel field (a 1x1 map to hidden channels, tanh, a 1x1 map back; random weights,
returning eps; :data:`CASES`) is diagnosed by ``wgfm.diagnose`` at :data:`MEDIUM` sizes (between quick and
full: 10 levels x 8 images for claim 1, 5 x 4 for claim 2, both with the Gaussian-fit control),
each claim alone, twice: the first run compiles, the second reuses the compiled programs. Then
the field's passes are timed (:func:`wgfm.diagnosis.plan.time_passes`) and
:func:`~wgfm.diagnosis.plan.plan_run` predicts each claim's seconds (it excludes compilation:
compare with the second run) and the peak memory beyond the field and the clean images (the
process's peak resident set minus its resident set once both were built, measured over the first
run, as ``benchmarks/diagnose_memory.py`` does). Each state shape runs in a fresh process.

    python -m benchmarks.plan_check

writes ``benchmarks/results/plan_check.json``; ``python -m benchmarks.publish`` renders
:func:`table` into docs/diagnose_your_model.md (``tests/test_published.py`` checks).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "plan_check.json"
# (state shape, hidden channels per input channel): a field whose passes cost far more than the
# diagnosis's own array work at D = 3,072 (as a network's do), and one at an SDXL latent's
# D = 65,536 thin enough that claim 2's 228 loop points at once stay near 1 GB
CASES = (((32, 32, 3), 64), ((128, 128, 4), 8))
NUM_IMAGES = 16


def medium_sizes():
    """Between QUICK and FULL: every phase of the full protocol at a few minutes' size."""
    from wgfm.diagnosis import FULL

    claim1 = dict(num_levels=10, num_samples=8, sub_jacobian_size=8, num_probes=4, batch_size=4)
    claim2 = dict(loop_levels=5, loop_samples=4, loop_points=32, bridge_steps=100)
    cycles = dict(noisy_copies=4, noisy_points=16, num_generated=NUM_IMAGES)
    probes = dict(jacobians="probes", rel_se=0.1, max_probes=32)
    return dataclasses.replace(FULL, **claim1, **claim2, **cycles, **probes)


def _rss_bytes() -> int:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def _peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def one(shape: tuple[int, int, int], hidden: int, seed: int = 0) -> dict:
    """The measured and predicted costs at ``shape``, in this process."""
    import jax
    import jax.numpy as jnp

    import wgfm
    from wgfm.diagnosis import CLAIMS, diagnose
    from wgfm.diagnosis.plan import (
        gaussian_stand_in,
        measured_probes,
        plan_run,
        time_passes,
    )

    c = shape[-1]
    rng = np.random.default_rng(seed)
    w1 = jnp.asarray(rng.standard_normal((c, hidden * c)) / np.sqrt(c), jnp.float32)
    w2 = jnp.asarray(rng.standard_normal((hidden * c, c)) / np.sqrt(hidden * c), jnp.float32)

    def field(x, t):
        return jnp.tanh(x @ w1 + t) @ w2

    process, sizes = wgfm.VP(), medium_sizes()
    images = (0.5 * rng.standard_normal((NUM_IMAGES, *shape))).astype(np.float32)
    jax.block_until_ready(field(jnp.asarray(images[0]), 0.5))
    base = _rss_bytes()
    measured: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    numbers: dict = {}
    for attempt in ("cold", "warm"):
        for claim in CLAIMS.values():
            t0, c0 = time.perf_counter(), time.process_time()
            d = diagnose(
                field,
                process,
                images,
                key=jax.random.key(seed),
                kind="eps",
                sizes=sizes,
                claims=(claim.key,),
            )
            measured.setdefault(claim.title, []).append(time.perf_counter() - t0)
            cpu.setdefault(claim.title, []).append(time.process_time() - c0)
            numbers.update(d.numbers)
        if attempt == "cold":
            peak = _peak_bytes()
    x, t = jnp.asarray(images[0]), jnp.asarray(0.5, jnp.float32)
    dim = int(x.size)
    # at the batches the diagnosis evaluates at once, as wgfm diagnose's plan does
    gauss = gaussian_stand_in(dim, NUM_IMAGES, process)
    plans = {}
    # wall seconds, and CPU seconds (what the plan counts, whatever other jobs take)
    for clock_name, clock in (("wall", time.perf_counter), ("cpu", time.process_time)):
        network, gaussian = (time_passes(f, x, t, sizes, clock=clock) for f in (field, gauss))
        plans[clock_name] = plan_run(
            sizes,
            network,
            gaussian,
            dim=dim,
            num_images=NUM_IMAGES,
            generated=False,
            untrained=False,  # a plain callable has no untrained control
            probes=measured_probes(numbers),
            preset="medium",
        )
    plan = plans["wall"]
    phase = {CLAIMS["differential"].title: "claim 1", CLAIMS["integral"].title: "claim 2"}
    return {
        "shape": list(shape),
        "hidden_channels": hidden * c,
        "dim": dim,
        "num_images": NUM_IMAGES,
        "probes_per_point": plan.probes,
        "pass_times": dataclasses.asdict(network),
        "gaussian_pass_times": dataclasses.asdict(gaussian),
        "claims": [
            {
                "claim": phase[title],
                "predicted_s": plan.seconds[phase[title]],
                "measured_warm_s": round(cold_warm[1], 2),
                "measured_cold_s": round(cold_warm[0], 2),
                "predicted_cpu_s": plans["cpu"].seconds[phase[title]],
                "measured_warm_cpu_s": round(cpu[title][1], 2),
            }
            for title, cold_warm in measured.items()
        ],
        "predicted_bytes": plan.peak_bytes,
        # the plan's peak holds the clean images, which the baseline already holds
        "predicted_beyond_images_bytes": plan.peak_bytes["peak"] - NUM_IMAGES * dim * 4,
        "baseline_rss_bytes": base,
        "measured_beyond_baseline_bytes": peak - base,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="The plan of a run against a measured one.")
    ap.add_argument(
        "--one", type=int, nargs=4, metavar=("H", "W", "C", "HIDDEN"), help=argparse.SUPPRESS
    )
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if args.one:
        h, w, c, hidden = args.one
        print(json.dumps(one((h, w, c), hidden)), flush=True)
        return 0
    from ._harness import machine_info, run_record, write_payload

    run = run_record("plan_check")
    records = []
    for shape, hidden in CASES:
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.plan_check",
            "--one",
            *map(str, shape),
            str(hidden),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
        records.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(records[-1]), flush=True)
    run["loadavg_1min_end"] = os.getloadavg()[0]
    payload = {
        "machine": machine_info(),
        "run": run,
        "settings": {
            "sizes": dataclasses.asdict(medium_sizes()),
            "field": "1x1 map to hidden channels, tanh, 1x1 map back (eps)",
        },
        "records": records,
    }
    return write_payload(args.out, payload)


def table(payload: dict) -> str:
    """The Markdown table of a run's JSON (for ``benchmarks.publish``)."""
    from ._harness import commit_label

    m, run, s = payload["machine"], payload["run"], payload["settings"]["sizes"]
    commit = commit_label(run)
    lines = [
        f"From `benchmarks/results/plan_check.json`: `{run['command'].strip()}`, "
        f"{m['time'][:16].replace('T', ' ')}, commit `{commit}`, jax {m['jax']} on "
        f"{m['platform']} ({run['cores']} cores shared with other jobs: 1-minute load "
        f"{run['loadavg_1min_start']:.1f} at the start, {run['loadavg_1min_end']:.1f} at the "
        f"end). `wgfm.diagnose` on a per-pixel field ({payload['settings']['field']}) with the "
        f"Gaussian-fit control, at medium sizes: claim 1 on {s['num_levels']} levels x "
        f"{s['num_samples']} images (probes until a {100 * s['rel_se']:g}% s.e.), claim 2 on "
        f"{s['loop_levels']} x {s['loop_samples']} ({2 * s['loop_points']} + "
        f"{s['bridge_steps']} + {s['noisy_copies'] * s['noisy_points']} loop points). "
        "Predicted: `wgfm.diagnosis.plan` from the field's timed passes (no compilation); "
        "measured: each claim run twice, the second reusing the first's compiled programs; "
        "both in wall seconds and in the process's CPU seconds (which other jobs on the "
        "host do not inflate). "
        "Memory: the process's peak resident set over the first run minus its resident set "
        "once the field and the clean images were built.",
        "",
        "| state | hidden channels | D | claim | predicted (s) | measured (s) | measured / "
        "predicted | CPU: predicted (s) | measured (s) | measured / predicted | first run, "
        "compiling (wall s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in payload["records"]:
        state = " x ".join(map(str, r["shape"]))
        for c in r["claims"]:
            lines.append(
                f"| {state} | {r['hidden_channels']} | {r['dim']:,} | {c['claim']} | "
                f"{c['predicted_s']:.3g} | {c['measured_warm_s']:.3g} | "
                f"{c['measured_warm_s'] / c['predicted_s']:.2f} | {c['predicted_cpu_s']:.3g} | "
                f"{c['measured_warm_cpu_s']:.3g} | "
                f"{c['measured_warm_cpu_s'] / c['predicted_cpu_s']:.2f} | "
                f"{c['measured_cold_s']:.3g} |"
            )
    lines += [
        "",
        "| state | D | predicted peak beyond the field and images (MB) | measured (MB) | "
        "measured / predicted |",
        "|---|---|---|---|---|",
    ]
    for r in payload["records"]:
        pred, got = r["predicted_beyond_images_bytes"], r["measured_beyond_baseline_bytes"]
        lines.append(
            f"| {' x '.join(map(str, r['shape']))} | {r['dim']:,} | {pred / 1e6:.0f} | "
            f"{got / 1e6:.0f} | {got / pred:.2f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
