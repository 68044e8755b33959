"""`wgfm diagnose --quick` on tiny random-weight SDXL-, SD3-, FLUX-, PixArt- and Sana-type
pipelines whose configurations are not the tests' own (other channel counts, sample sizes,
heads and schedulers: an EDM SDXL, a 16-channel SD3 with shift, a dynamically shifted FLUX.1-dev,
a PixArt-Sigma-like transformer, Sana on flow-matching Euler), each saved with save_pretrained
beside a condition .npz and run through the command as a user runs it.

    python -m experiments.families_check run      # the runs: docs/runs/families-quick/results.json
    python -m experiments.families_check publish  # docs/families_quick.md from that JSON, and
                                                  # the families table of README.md and docs/

Per family the JSON holds the command, its exit status and wall time, the dimension D, how
claim 1's Jacobians were taken (exact or probes, with the probe passes), the full-dimension
lambda of the trained network and of both controls by level, and the claim rows' verdicts.
tests/test_families_published.py fails when the page is not what the JSON renders to. The
pipelines' configurations are data: docs/runs/families-quick/pipelines.json."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from experiments.publish import replace_between
from wgfm.interop.denoisers import table

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "runs" / "families-quick" / "results.json"
PAGE = ROOT / "docs" / "families_quick.md"
DIAGNOSE = ("diagnose", "--quick")
# The registry's families table (wgfm.interop.denoisers.table) in these pages, between these.
DOC = "docs/diagnose_your_model.md"
TABLE_DOCS = (ROOT / "README.md", ROOT / DOC)
TABLE_MARKERS = ("<!-- families:start -->", "<!-- families:end -->")

# The pipelines' configurations (data: docs/runs/families-quick/pipelines.json says the fields).
PIPELINES_JSON = RESULTS.parent / "pipelines.json"


def pipelines() -> dict:
    """The tiny pipelines' specifications, by family."""
    return json.loads(PIPELINES_JSON.read_text())["pipelines"]


def build(name: str, spec: dict, root: Path) -> tuple[Path, Path]:
    """Save the pipeline ``spec`` under ``root/name`` (seeded random weights) and its condition
    .npz (standard normal arrays); returns both paths."""
    import diffusers
    import torch

    torch.manual_seed(0)
    d = root / name
    sub, cls, cfg = spec["denoiser"]
    parts = {sub: getattr(diffusers, cls)(**cfg)}
    sched_cls, sched_cfg = spec["scheduler"]
    parts["scheduler"] = getattr(diffusers, sched_cls)(**sched_cfg)
    if spec["vae"] is not None:
        v = dict(spec["vae"])
        blocks = {"down_block_types": "DownEncoderBlock2D", "up_block_types": "UpDecoderBlock2D"}
        v.update({k: [b] * len(v["block_out_channels"]) for k, b in blocks.items()})
        parts["vae"] = diffusers.AutoencoderKL(**v, norm_num_groups=4)  # pyright: ignore[reportPrivateImportUsage]
    index = {"_class_name": spec["pipeline"], "_diffusers_version": diffusers.__version__}
    for part, obj in parts.items():
        obj.save_pretrained(d / part)
        index[part] = ["diffusers", type(obj).__name__]
    (d / "model_index.json").write_text(json.dumps(index))
    rng = np.random.default_rng(0)
    arrays = {k: rng.standard_normal(s).astype(np.float32) for k, s in spec["condition"].items()}
    npz = root / f"{name}.npz"
    np.savez(npz, **arrays)  # pyright: ignore[reportArgumentType]
    return d, npz


def _sig(x) -> float:
    return float(f"{float(x):.4g}")  # four significant digits: the controls' lambda is ~1e-7


def summary(res: dict) -> dict:
    """Claim 1's full-dimension lambda by level (trained, controls) and the verdicts."""
    (c1,) = res["numbers"]["differential"].values()
    jac = c1["jacobian"]
    exact = bool(jac["exact"])
    lam = c1["median_ratio" if exact else "median_probe_ratio"]
    out = {
        "D": jac["dim"],
        "jacobians": "exact" if exact else "probes",
        "levels": c1["levels"],
        "lambda": {k: [_sig(x) for x in v] for k, v in lam.items()},
    }
    if not exact:
        out["lambda_se"] = {k: [_sig(x) for x in v] for k, v in c1["median_probe_ratio_se"].items()}
        out["probe_passes"] = c1["adaptive"]["total_passes"]
    out["verdicts"] = {
        r["claim"]: bool(r["verdict"]) for rows in res["claims"].values() for r in rows
    }
    return out


def run_all(names=None) -> dict:
    """Every pipeline of :func:`pipelines` (or ``names``) through ``wgfm diagnose --quick``."""
    import diffusers
    import torch

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, spec in pipelines().items():
            if names and name not in names:
                continue
            model, npz = build(name, spec, root)
            out = root / f"out-{name}"
            args = [*DIAGNOSE, "--model", name, "--condition", npz.name, "--out", out.name]
            args += list(spec.get("options", ()))
            load = os.getloadavg()[0]
            t0 = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, "-m", "wgfm", *args], cwd=root, capture_output=True, text=True
            )
            wall = time.perf_counter() - t0
            row = {
                "family": name,
                "pipeline": spec["pipeline"],
                "denoiser": spec["denoiser"][1],
                "scheduler": spec["scheduler"][0],
                "command": "wgfm " + " ".join(args),
                "exit_status": proc.returncode,
                "wall_s": round(wall, 1),
                "host_load_1min_at_start": round(load, 1),
            }
            if proc.returncode == 0:
                row.update(summary(json.loads((out / "results.json").read_text())))
            else:
                row["error"] = proc.stderr.strip().splitlines()[-1:]
            print(json.dumps(row), flush=True)
            rows.append(row)
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "wgfm", "experiments"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return {
        "commit": commit,
        "code_modified": bool(dirty),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, shared with other jobs",
        "diffusers": diffusers.__version__,
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "runs": rows,
    }


def _lam(values: list[float]) -> str:
    return f"{min(values):.3g}..{max(values):.3g}"


def render(data: dict) -> str:
    """The page :data:`PAGE`, from the committed JSON ``data``."""
    lines = [
        "# `wgfm diagnose --quick` on each family",
        "",
        "Generated by `python -m experiments.families_check publish` from "
        "`docs/runs/families-quick/results.json` (written by `python -m "
        "experiments.families_check run`); do not edit by hand.",
        "",
        "Tiny random-weight pipelines whose configurations are not the tests' own "
        "(`docs/runs/families-quick/pipelines.json`: what each differs in is its `about`), each "
        "saved with save_pretrained beside a condition .npz and diagnosed by the command shown "
        f"in a fresh process; commit {data['commit'][:10]}"
        f"{' (with uncommitted changes)' if data['code_modified'] else ''}, {data['machine']}, "
        f"diffusers {data['diffusers']}, torch {data['torch']}, {data['date']}. Wall times "
        "include loading, compilation and the untrained control, on a shared host (its load "
        "average at the start is given): upper bounds.",
        "",
        "| family | denoiser | scheduler | command | exit | wall (s) | load | D | claim 1 "
        "Jacobians | lambda trained | lambda untrained | lambda Gaussian fit |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["runs"]:
        cells = [
            r["family"],
            r["denoiser"],
            r["scheduler"],
            f"`{r['command']}`",
            str(r["exit_status"]),
            f"{r['wall_s']:.0f}",
            f"{r['host_load_1min_at_start']:.1f}",
        ]
        if r["exit_status"] == 0:
            jac = r["jacobians"]
            if jac == "probes":
                jac += f" ({int(r['probe_passes']['trained'])} passes in all, trained)"
            lam = r["lambda"]
            cells += [
                str(r["D"]),
                jac,
                _lam(lam["trained"]),
                _lam(lam["untrained"]),
                _lam(lam["oracle score"]),
            ]
        else:
            cells += ["", " ".join(r.get("error", [])), "", "", ""]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "lambda: claim 1's full-dimension ratio ||J - J^T||_F / ||J||_F, its smallest and "
        "largest median over the noise levels. Random weights: the numbers check that every "
        "family runs end to end with its conditions, not the paper's claims.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if argv[:1] == ["run"]:
        data = run_all(argv[1:] or None)
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(data, indent=1) + "\n")
        argv = ["publish"]
    if argv[:1] == ["publish"]:
        PAGE.write_text(render(json.loads(RESULTS.read_text())))
        for doc in TABLE_DOCS:
            body = table().rstrip("\n")
            doc.write_text(replace_between(doc.read_text(), *TABLE_MARKERS, body, doc.name))
        print(f"wrote {PAGE.relative_to(ROOT)} and the families table of README.md, {DOC}")
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
