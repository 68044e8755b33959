"""Peak memory of a quick diagnosis (``wgfm.diagnose`` with ``QUICK`` sizes, claims 1 and 2,
both controls the field allows) beyond the model, at SDXL's and SD3/FLUX's latent sizes:
D = 128 x 128 x 4 = 65,536 and 128 x 128 x 16 = 262,144.

The field is cheap, so that the pipeline's own memory shows: a per-pixel two-layer map (a
1x1 convolution to 4C channels, tanh, a 1x1 convolution back; random weights, not a gradient)
returning eps. Each size runs in a fresh process: its resident set after building the field,
its weights and the clean images (the baseline) is subtracted from the process's peak
resident set (``getrusage``'s ``ru_maxrss``) at the end of the diagnosis. Anything quadratic in
D (a ``D x D`` covariance is 17 GB in float32 at 65,536) would show at once.

    python -m benchmarks.diagnose_memory

writes ``benchmarks/results/diagnose_memory.json``; ``python -m benchmarks.publish`` renders
:func:`table` into docs/diagnose_your_model.md (``tests/test_published.py`` checks).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "diagnose_memory.json"
SHAPES = ((128, 128, 4), (128, 128, 16))
NUM_IMAGES = 8
TARGET_GB = 4.0


def _rss_bytes() -> int:
    """The current resident set (``/proc/self/statm``'s second field, in pages)."""
    import os

    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def one(shape: tuple[int, int, int], seed: int = 0) -> dict:
    """The quick diagnosis at ``shape`` in this process: baseline and peak resident sets."""
    import jax
    import jax.numpy as jnp

    import wgfm
    from wgfm.diagnosis import QUICK, diagnose

    c = shape[-1]
    rng = np.random.default_rng(seed)
    w1 = jnp.asarray(rng.standard_normal((c, 4 * c)) / np.sqrt(c), jnp.float32)
    w2 = jnp.asarray(rng.standard_normal((4 * c, c)) / np.sqrt(4 * c), jnp.float32)

    def field(x, t):
        return jnp.tanh(x @ w1 + t) @ w2

    images = (0.5 * rng.standard_normal((NUM_IMAGES, *shape))).astype(np.float32)
    jax.block_until_ready(field(jnp.asarray(images[0]), 0.5))
    base = _rss_bytes()
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    res = diagnose(field, wgfm.VP(), images, key=jax.random.key(seed), kind="eps", sizes=QUICK)
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    jac = res.numbers["differential"]["jacobian"]
    return {
        "shape": list(shape),
        "dim": int(np.prod(shape)),
        "num_images": NUM_IMAGES,
        "weights_bytes": int(w1.nbytes + w2.nbytes),
        "images_bytes": int(images.nbytes),
        "baseline_rss_bytes": base,
        "peak_rss_before_bytes": peak_before,
        "peak_rss_bytes": peak,
        "beyond_baseline_bytes": peak - base,
        "wall_s": round(wall, 1),
        "jacobians": jac["description"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Peak memory of a quick diagnosis at large D.")
    ap.add_argument("--one", type=int, nargs=3, metavar=("H", "W", "C"), help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(one(tuple(args.one))), flush=True)
        return 0
    from ._harness import machine_info, write_payload
    from .probe_variance import run_info

    records = []
    for shape in SHAPES:
        cmd = [sys.executable, "-m", "benchmarks.diagnose_memory", "--one", *map(str, shape)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
        records.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(records[-1]), flush=True)
    run = run_info()
    run["command"] = "python -m benchmarks.diagnose_memory " + " ".join(sys.argv[1:])
    payload = {
        "machine": machine_info(),
        "run": run,
        "settings": {"sizes": "QUICK", "target_gb": TARGET_GB, "field": "1x1 map, tanh, 1x1"},
        "records": records,
    }
    return write_payload(args.out, payload)


def table(payload: dict) -> str:
    """The Markdown table of a run's JSON (for ``benchmarks.publish``)."""
    m, run = payload["machine"], payload["run"]
    commit = (run.get("commit") or "unknown")[:10]
    if run.get("code_modified"):
        commit += " with uncommitted changes to the code"
    gb = 1e9
    lines = [
        f"From `benchmarks/results/diagnose_memory.json`: `{run['command'].strip()}`, "
        f"{m['time'][:16].replace('T', ' ')}, commit `{commit}`, jax {m['jax']} on "
        f"{m['platform']}. `wgfm.diagnose` with the quick sizes (claims 1 and 2, the Gaussian "
        "fit as control) on a per-pixel field (1x1 map, tanh, 1x1 map); peak resident set of "
        "the process minus its resident set once the field and the clean images were built. "
        f"Target: at most {payload['settings']['target_gb']:g} GB.",
        "",
        "| state | D | clean images | beyond the field and images (GB) | peak (GB) | "
        "wall (s) | claim 1 took |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in payload["records"]:
        lines.append(
            f"| {' x '.join(map(str, r['shape']))} | {r['dim']:,} | {r['num_images']} | "
            f"{r['beyond_baseline_bytes'] / gb:.2f} | {r['peak_rss_bytes'] / gb:.2f} | "
            f"{r['wall_s']:.0f} | {r['jacobians']} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
