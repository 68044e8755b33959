"""PyTorch fields on an accelerator (issue #36 §3): agreement with the CPU, throughput per
precision, and a quick diagnosis, in one run of under 5 minutes on one GPU.

    python -m benchmarks.gpu_check                       # cuda, the mid-size U-Net
    python -m benchmarks.gpu_check --device cpu --size tiny --out /tmp/gc   # the plumbing

1. **Agreement.** A mid-size ``UNet2DConditionModel`` (random weights, built from ``MID``
   below under a seed) as a :func:`wgfm.interop.torch_field` on ``--device`` in float32,
   bfloat16 and float16: its values, one JVP (``jax.jvp``) and one VJP (``jax.vjp``) at the
   same points against the same network in float32 on the CPU. The error is the relative L2
   error ``||a - b|| / ||b||`` over the batch. Tolerances (``TOL``):

   - float32: 1e-4. The same arithmetic in other kernels (cuDNN's convolution algorithms, other
     summation orders), TF32 switched off for this comparison; the project's tests hold
     PyTorch against XLA's float32 convolutions to 1e-4 of the scale for the same reason.
   - bfloat16: 5e-2; float16: 1e-2. Their unit roundoffs are 2^-9 (8 significant bits) and
     2^-12; the network rounds every activation and weight, so errors of some 10 roundoffs
     are normal, and each bound is a few times the error this script measures on the CPU for
     the same network and precision (the commit that set them gives the numbers), leaving room
     for the GPU's other kernels while still failing on a wrong weight, layout, dtype or
     timestep (errors of order 1).
2. **Throughput**: network passes per second through the field (forward, JVP, VJP; a batch of
   ``batch`` images per call, jitted, callbacks included) and the bare PyTorch forward, per
   precision, with PyTorch's default TF32 settings for float32, and the peak CUDA memory.
3. **Quick diagnosis** (claims 1 and 2, tiny sizes) of a tiny SDXL-type pipeline (random
   weights, the SDXL family's added conditions) on the device in float32, loaded by
   ``load_diffusers(..., device=)``, on random latents.

JAX and PyTorch share the GPU: JAX's preallocation is switched off before JAX starts
(``XLA_PYTHON_CLIENT_PREALLOCATE=false``; docs/diagnose_your_model.md says why). Writes
``gpu_check.json`` / ``.md`` (``gpu_check_<device>.*`` off CUDA) under ``--out`` with the
records of ``benchmarks._harness``.
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # before JAX's GPU client

import argparse  # noqa: E402
import copy  # noqa: E402
import functools  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from ._harness import block, record, time_call, write_results  # noqa: E402

# 52M parameters; latents 4 x 32 x 32 (D = 4096), a 77 x 768 text embedding.
MID: dict[str, Any] = dict(
    sample_size=32,
    in_channels=4,
    out_channels=4,
    block_out_channels=(128, 256, 512),
    layers_per_block=1,
    norm_num_groups=32,
    cross_attention_dim=768,
    attention_head_dim=8,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
)

TINY: dict[str, Any] = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    block_out_channels=(8, 16),
    layers_per_block=1,
    norm_num_groups=4,
    cross_attention_dim=8,
    attention_head_dim=4,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
)
# The SDXL family's tiny form: the six size ids of 4 and a pooled text embedding of 8 added.
SDXL_TINY: dict[str, Any] = dict(
    TINY,
    addition_embed_type="text_time",
    addition_time_embed_dim=4,
    projection_class_embeddings_input_dim=6 * 4 + 8,
)
SIZES = {  # config, text sequence length, batch, timed repeats
    "mid": (MID, 77, 4, 5),
    "tiny": (TINY, 3, 2, 1),
}
TOL = {"float32": 1e-4, "bfloat16": 5e-2, "float16": 1e-2}  # relative L2 (module docstring)
K = 1000  # training timesteps: wgfm time t is the diffusers timestep t K - 1


def _unet_call(unet, ehs, x, t):
    """``unet`` on ``x (N, C, H, W)`` at wgfm times ``t (N,)`` with one text embedding."""
    e = ehs.to(device=x.device, dtype=x.dtype)
    return unet(x, t * K - 1, encoder_hidden_states=e.expand(x.shape[0], *e.shape[1:])).sample


def _field(unet, ehs, device: str, dtype: str):
    from wgfm.interop.torch import contiguous_group_norms, torch_field

    contiguous_group_norms(unet)
    # A partial over the module: torch_field finds it and moves it to (device, dtype) once.
    return torch_field(functools.partial(_unet_call, unet, ehs), device=device, dtype=dtype)


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _passes(field, x, t, v):
    """``(values, JVPs, VJPs)`` of ``field`` over the batch ``x (B, C, H, W)``, jitted."""
    f = jax.vmap(field)
    fwd = jax.jit(f)
    jvp = jax.jit(lambda a, d: jax.jvp(lambda y: f(y, t), (a,), (d,))[1])
    vjp = jax.jit(lambda a, c: jax.vjp(lambda y: f(y, t), a)[1](c)[0])
    return {
        "forward": lambda: block(fwd(x, t)),
        "jvp": lambda: block(jvp(x, v)),
        "vjp": lambda: block(vjp(x, v)),
    }


def agreement(unet, ehs, device: str, dtypes, batch: int) -> list[dict]:
    """Forward, JVP and VJP on ``device`` in each dtype against float32 on the CPU."""
    import torch

    rng = np.random.default_rng(0)
    shape = (batch, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    x, v = (jnp.asarray(rng.standard_normal(shape), jnp.float32) for _ in range(2))
    t = jnp.linspace(0.2, 0.8, batch, dtype=jnp.float32)
    ref = {
        k: np.asarray(fn())
        for k, fn in _passes(_field(unet, ehs, "cpu", "float32"), x, t, v).items()
    }
    rows = []
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        for dtype in dtypes:
            field = _field(copy.deepcopy(unet), ehs, device, dtype)
            for name, fn in _passes(field, x, t, v).items():
                t0 = time.perf_counter()
                got = np.asarray(fn())
                err = _rel(got, ref[name])
                rows.append(
                    record(
                        "gpu_check",
                        f"agreement {name}",
                        f"{device} {dtype} vs cpu float32",
                        compile_s=None,
                        median_s=time.perf_counter() - t0,
                        repeats=1,
                        rel_l2_err=err,
                        tol=TOL[dtype],
                        agree=bool(err <= TOL[dtype]),
                        finite=bool(np.isfinite(got).all()),
                        tf32=False,
                    )
                )
            del field
            _free(device)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    return rows


def throughput(unet, ehs, device: str, dtypes, batch: int, repeats: int) -> list[dict]:
    """Passes per second through the field and through bare PyTorch, per dtype."""
    import torch

    rng = np.random.default_rng(1)
    shape = (batch, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    x, v = (jnp.asarray(rng.standard_normal(shape), jnp.float32) for _ in range(2))
    t = jnp.full((batch,), 0.5, jnp.float32)
    rows = []
    for dtype in dtypes:
        module = copy.deepcopy(unet)
        field = _field(module, ehs, device, dtype)
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        timed = _passes(field, x, t, v)
        xt = torch.from_numpy(np.asarray(x)).to(field.device, field.dtype)
        tt = torch.from_numpy(np.asarray(t)).to(field.device)

        def bare(xt=xt, tt=tt, module=module):
            with torch.no_grad():
                _unet_call(module, ehs, xt, tt)
            if xt.is_cuda:
                torch.cuda.synchronize()

        timed["forward (bare PyTorch)"] = bare
        for name, fn in timed.items():
            first, median = time_call(fn, repeats=repeats)
            impl = "torch eager" if "bare" in name else "torch_field"
            rows.append(
                record(
                    "gpu_check",
                    f"throughput {name.split()[0]}",
                    f"{impl} {device} {dtype}",
                    compile_s=max(first - median, 0.0),
                    median_s=median,
                    repeats=repeats,
                    batch=batch,
                    passes_per_s=batch / median,
                    peak_cuda_mem_gb=_peak_gb(device),
                )
            )
        del field, module, timed
        _free(device)
    return rows


def diagnosis(device: str) -> list[dict]:
    """A quick diagnosis (claims 1 and 2, tiny sizes) of a tiny SDXL-type pipeline (the
    ``text_time`` ``UNet2DConditionModel``: a text embedding, a pooled one and the size ids)
    loaded on ``device``, on random latents."""
    import json

    import torch
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
    from diffusers.schedulers.scheduling_euler_discrete import EulerDiscreteScheduler

    import wgfm
    from wgfm.diagnosis import CLAIMS, DiagnoseSizes
    from wgfm.interop import load_diffusers

    sizes = DiagnoseSizes(
        num_levels=3,
        num_samples=2,
        sub_jacobian_size=4,
        num_probes=4,
        max_exact_dim=64,
        batch_size=2,
        loop_levels=2,
        loop_samples=1,
        loop_points=8,
        bridge_steps=8,
        noisy_copies=3,
        noisy_points=4,
        num_generated=4,
        ddim_steps=4,
    )
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**SDXL_TINY)
    sched = EulerDiscreteScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012
    )  # SDXL's
    rng = np.random.default_rng(2)
    cond = {
        "encoder_hidden_states": rng.standard_normal((3, 8)).astype(np.float32),
        "text_embeds": rng.standard_normal(8).astype(np.float32),
    }
    images = rng.standard_normal((16, 8, 8, 4)).astype(np.float32)  # latents, N(0, I)
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        unet.save_pretrained(root / "unet")
        sched.save_pretrained(root / "scheduler")
        index = {"_class_name": "StableDiffusionXLPipeline", "_diffusers_version": "0"}
        index |= {"unet": ["diffusers", "UNet2DConditionModel"]}
        index |= {"scheduler": ["diffusers", "EulerDiscreteScheduler"]}
        (root / "model_index.json").write_text(json.dumps(index))
        t0 = time.perf_counter()
        field, process = load_diffusers(root, condition=cond, device=device)
        result = wgfm.diagnose(field, process, images, key=jax.random.key(0), sizes=sizes)
        wall = time.perf_counter() - t0
    js = json.loads(result.to_json())
    return [
        record(
            "gpu_check",
            "quick diagnosis",
            f"torch_field {device} float32",
            compile_s=None,
            median_s=wall,
            repeats=1,
            pipeline="tiny StableDiffusionXLPipeline (text_time UNet2DConditionModel, 8x8x4 "
            "latents, random weights, no VAE)",
            field=field.describe(),
            backend=field.backend,
            header=js["header"],
            claim1_rows=js["claims"][CLAIMS["differential"].title],
            nans=_nans(js),
            finite=_nans(js) == 0,
        )
    ]


def _nans(tree) -> int:
    """How many NaNs a diagnosis's JSON holds (``wgfm.report.jsonable`` writes them "nan";
    infinite standard errors of too few probes are legitimate, NaN never is)."""
    if isinstance(tree, dict):
        tree = list(tree.values())
    if isinstance(tree, list):
        return sum(_nans(v) for v in tree)
    return int(tree == "nan")


def _free(device: str) -> None:
    import gc

    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def _peak_gb(device: str) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None


def main(argv: list[str] | None = None) -> Path:
    import torch
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel

    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda (default), mps or cpu")
    p.add_argument("--size", choices=sorted(SIZES), default="mid")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    p.add_argument(
        "--dtypes",
        default="float32,bfloat16,float16",
        help="the precisions compared and timed, comma-separated (default: all three)",
    )
    p.add_argument(
        "--no-diagnosis", action="store_true", help="skip the quick diagnosis (compile-heavy)"
    )
    a = p.parse_args(argv)
    from wgfm.interop.torch import resolve_device

    try:
        device = str(resolve_device(a.device))
    except ValueError as e:
        sys.exit(f"gpu_check: {e}")
    dtypes = tuple(a.dtypes.split(","))
    if any(d not in TOL for d in dtypes):
        sys.exit(f"gpu_check: --dtypes must be among {', '.join(TOL)}, got {a.dtypes!r}")
    config, seq, batch, repeats = SIZES[a.size]
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**config).eval()
    ehs = torch.from_numpy(
        np.random.default_rng(4).standard_normal((1, seq, config["cross_attention_dim"]))
    ).float()
    t0 = time.perf_counter()
    rows = agreement(unet, ehs, device, dtypes, batch=2)
    rows += throughput(unet, ehs, device, dtypes, batch, repeats)
    if not a.no_diagnosis:
        rows += diagnosis(device)
    params = sum(p.numel() for p in unet.parameters())
    for r in rows:
        r["extra"] |= {"size": a.size, "unet_params": params, "torch": torch.__version__}
    name = "gpu_check" if device.startswith("cuda") else f"gpu_check_{device}"
    path = write_results(rows, a.out, name=name)
    print(f"{path} ({time.perf_counter() - t0:.0f} s)")
    bad = [r for r in rows if r["extra"].get("agree") is False or r["extra"].get("finite") is False]
    for r in bad:
        print(f"FAILED: {r['case']} {r['impl']}: {r['extra']}", file=sys.stderr)
    if bad:
        sys.exit(1)
    return path


if __name__ == "__main__":
    main()
