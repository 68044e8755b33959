"""``wgfm diagnose``: the paper's two experiments on a pretrained diffusers model.

The model directory is loaded by :func:`wgfm.interop.load_diffusers` (flax port + the scheduler's
:class:`wgfm.processes.DiscreteVP`), and claims 1 and 2 run through the same
:func:`experiments.differential.measure_asymmetry` and
:func:`experiments.integral.measure_circulation` as ``wgfm reproduce``, beside two controls: the
same architecture with freshly initialised parameters, and the exact score of the Gaussian fitted
to the clean images (a true gradient). Clean images come from ``--data`` (CIFAR-10 / MNIST),
``--images`` (a folder of PNG/JPEG files) or, with neither, from the model itself (DDIM).

The output directory is resumable and belongs to one (model, settings) pair: ``diagnose.json``
records both, each finished claim is kept in ``claims/<n>.json`` and generated images in
``generated.npy``, and a rerun reuses them. A directory holding anything else is refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import re
import time
import zlib
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from rich.console import Console
from tqdm.auto import tqdm

from experiments.assets import gaussian_fit_score
from experiments.config import times_grid
from experiments.report import ClaimRow, Measurement, Report

TITLES = {
    1: "1. Differential constraint: Jacobian asymmetry",
    2: "2. Integral constraint: loop circulation",
}
# results.json keys of the claims' numbers, as in `wgfm reproduce` (then one entry per model).
NUMBERS = {1: "differential", 2: "integral"}
MANIFEST = "diagnose.json"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
GENERATION_CHUNK = 64  # images per DDIM call when the model generates its own
GAUSSIAN_FIT_MAX = 10_000  # images for the Gaussian fit (as the reproduction's control)


@dataclasses.dataclass(frozen=True)
class DiagnoseSizes:
    """Every size of a diagnosis. ``QUICK`` runs in minutes on a CPU for the ddpm-cifar10-32
    U-Net (35.7 M parameters); ``FULL`` is the authors' protocol, meant for a GPU."""

    num_levels: int  # noise levels of claim 1 (the authors: 100, t = 1, 11, ..., 991 of 1000)
    num_samples: int  # images per level, claim 1
    sub_jacobian_size: int  # K of the K x K sub-Jacobians (beyond max_exact_dim)
    num_probes: int  # probes of the full-Jacobian estimate (one JVP and one VJP each)
    max_exact_dim: int  # exact Jacobians up to this many coordinates
    batch_size: int  # images at a time in claim 1
    loop_levels: int  # noise levels of claim 2
    loop_samples: int  # images per level, claim 2
    loop_points: int  # points of the circle and pair-rotation loops
    bridge_steps: int  # Brownian-bridge steps (the authors: 1000)
    noisy_copies: int  # noisy-copy cycle: copies (the authors: 10)
    noisy_points: int  # points per segment (the authors: 100)
    num_generated: int  # images the model generates when no data is given
    ddim_steps: int  # DDIM steps of that generation (the authors: 50)


QUICK = DiagnoseSizes(
    num_levels=4, num_samples=2, sub_jacobian_size=8, num_probes=4, max_exact_dim=64,
    batch_size=2, loop_levels=3, loop_samples=1, loop_points=16, bridge_steps=32,
    noisy_copies=3, noisy_points=8, num_generated=8, ddim_steps=10,
)  # fmt: skip
FULL = DiagnoseSizes(
    num_levels=100, num_samples=128, sub_jacobian_size=64, num_probes=32, max_exact_dim=64,
    batch_size=16, loop_levels=100, loop_samples=256, loop_points=256, bridge_steps=1000,
    noisy_copies=10, noisy_points=100, num_generated=1024, ddim_steps=50,
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class DiagnoseConfig:
    """``wgfm diagnose`` options (see :func:`wgfm.cli.diagnose`)."""

    model: Path
    data: Path | None = None
    images: Path | None = None
    quick: bool = False
    out: Path = Path("results/diagnose")
    seed: int = 0
    compile_cache: bool = True

    def __post_init__(self):
        if not Path(self.model).is_dir():
            raise ValueError(f"`--model` {str(self.model)!r} is not a directory.")
        if self.data is not None and self.images is not None:
            raise ValueError("`--data` and `--images` are alternatives: give one of them.")
        for name in ("data", "images"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_dir():
                raise ValueError(f"`--{name}` {str(path)!r} is not a directory.")
        if Path(self.out).exists() and not Path(self.out).is_dir():
            raise ValueError(f"`--out` {str(self.out)!r} exists and is not a directory.")

    @property
    def sizes(self) -> DiagnoseSizes:
        return QUICK if self.quick else FULL


def run(config: DiagnoseConfig, *, sizes: DiagnoseSizes | None = None) -> Report:
    """Diagnose ``config.model``: claims 1 and 2 with both controls, written to ``config.out``
    (REPORT.md, results.json, figures/). ``sizes`` overrides the mode's (tests)."""
    from experiments.reproduce import use_compile_cache
    from wgfm.interop import load_diffusers

    console = Console(stderr=True)
    sz = sizes or config.sizes
    t_all = time.perf_counter()
    field, process = load_diffusers(config.model)
    out = Path(config.out)
    settings = {
        "sizes": dataclasses.asdict(sz),
        "seed": config.seed,
        "clean images": _source(config),
    }
    fingerprint = model_fingerprint(config.model)
    _claim_directory(out, fingerprint, str(Path(config.model).resolve()), settings)
    if config.compile_cache:
        use_compile_cache()
    root = jax.random.key(config.seed)

    def key(name: str):
        return jax.random.fold_in(root, zlib.crc32(name.encode()))

    shape = _sample_shape(field)
    score = _score(field, process)
    label = re.sub(r"[^\w.-]", "_", Path(config.model).resolve().name) or "model"
    report = Report(out, title=f"wgfm diagnose report: {label}")
    with tqdm(total=3, desc="wgfm diagnose", unit="stage", dynamic_ncols=True) as bar:
        bar.set_postfix_str("clean images")
        t0 = time.perf_counter()
        images, described = clean_images(config, field, process, shape, sz, key("clean"))
        fit = images[: min(len(images), GAUSSIAN_FIT_MAX)]
        gradient = gaussian_fit_score(fit, process)
        control = f"exact score of the Gaussian fitted to {len(fit)} clean images"
        console.log(f"clean images: {described} ({time.perf_counter() - t0:.1f} s)")
        untrained = _score(_fresh(field, shape, key("untrained")), process)
        bar.update()
        reused_claims: list[str] = []
        for claim, measure, n in ((1, _claim1, sz.num_samples), (2, _claim2, sz.loop_samples)):
            title = TITLES[claim]
            bar.set_postfix_str(title[:48])
            if n > len(images):
                raise ValueError(f"claim {claim} needs {n} clean images, only {len(images)} found.")
            pick = np.asarray(
                jax.random.choice(key(f"x0-{claim}"), len(images), (n,), replace=False)
            )
            x0 = jnp.asarray(images[np.sort(pick)])
            kwargs = dict(key=key(f"claim-{claim}"), gradient=gradient, untrained=untrained,
                          label=label, control_name=control)  # fmt: skip
            reused = _claim(report, claim, label, out / "claims" / f"{claim}.json", settings,
                            lambda measure=measure, x0=x0, kwargs=kwargs:
                            measure(score, process, x0, sz, **kwargs))  # fmt: skip
            report.notes[title] = f"Clean images: {described}." + (
                " Reused from an earlier run in this directory." if reused else ""
            )
            reused_claims += [str(claim)] if reused else []
            console.log(f"{title}: {'reused' if reused else 'done'} in "
                        f"{report.timings[title]:.1f} s")  # fmt: skip
            bar.update()
    header = {
        "mode": ("quick" if config.quick else "full") + (" (sizes overridden)" if sizes else ""),
        "model": str(Path(config.model).resolve()),
        "model fingerprint (sha256)": fingerprint[:16],
        "prediction type": field.prediction_type,
        "process": f"DiscreteVP from the scheduler ({len(process.betas)} steps)",
        "clean images": described,
        "seed": config.seed,
        "device": f"{jax.devices()[0].platform} ({jax.devices()[0].device_kind})",
        "python": platform.python_version(),
        "jax": jax.__version__,
        "total run time (s)": round(time.perf_counter() - t_all, 1),
    }
    if reused_claims:
        header["claims reused from an earlier run (their own run times below)"] = ", ".join(
            reused_claims
        )
    md, js = report.write(header)
    console.log(f"Report: {md}  Results: {js}  Figures: {report.fig_dir}")
    return report


# ---------------------------------------------------------------------------------------------
# The two claims (the reproduction's measurements at this run's sizes).


def _claim1(score, process, x0, sz: DiagnoseSizes, **kwargs) -> Measurement:
    from experiments.differential import measure_asymmetry

    ts = times_grid(process, sz.num_levels)
    return measure_asymmetry(score, process, x0, ts, max_exact_dim=sz.max_exact_dim,
                             sub_jacobian_size=sz.sub_jacobian_size, num_probes=sz.num_probes,
                             batch_size=sz.batch_size, **kwargs)  # fmt: skip


def _claim2(score, process, x0, sz: DiagnoseSizes, **kwargs) -> Measurement:
    from experiments.integral import measure_circulation

    ts = times_grid(process, sz.loop_levels)
    # One image at a time: every loop point is a U-Net evaluation.
    return measure_circulation(score, process, x0, ts, loop_points=sz.loop_points,
                               bridge_steps=sz.bridge_steps, noisy_copies=sz.noisy_copies,
                               noisy_points=sz.noisy_points, batch_size=1, **kwargs)  # fmt: skip


def _claim(report: Report, claim: int, label: str, path: Path, settings: dict, compute) -> bool:
    """Put ``claim`` into ``report``: from ``path`` if an earlier run with the same ``settings``
    finished it (True), else computed and saved there (False)."""
    title = TITLES[claim]
    numbers = report.numbers.setdefault(NUMBERS[claim], {})
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("settings") == _jsonable(settings):
            report.rows[title] = [ClaimRow(**r) for r in saved["rows"]]
            report.figures[title] = list(saved["figures"])
            numbers[label] = saved["numbers"]
            report.timings[title] = float(saved["seconds"])
            return True
    t0 = time.perf_counter()
    m = compute()
    report.add_measurement(title, m)
    report.timings[title] = time.perf_counter() - t0
    numbers[label] = _jsonable(m.numbers)
    saved = {"settings": _jsonable(settings), "rows": [dataclasses.asdict(r) for r in m.rows],
             "numbers": numbers[label], "figures": report.figures.get(title, []),
             "seconds": report.timings[title]}  # fmt: skip
    _write_atomic(path, json.dumps(saved, indent=1))
    return False


# ---------------------------------------------------------------------------------------------
# The model and its controls.


def model_fingerprint(model_dir: Path) -> str:
    """sha256 over the U-Net's config and weights and the scheduler's config: what makes two
    model directories the same model."""
    h = hashlib.sha256()
    root = Path(model_dir)
    unet = root / "unet" if (root / "unet" / "config.json").is_file() else root
    for f in sorted(unet.glob("config.json")) + sorted(unet.glob("diffusion_pytorch_model.*")) + \
            sorted(root.glob("scheduler/scheduler_config.json")) + \
            sorted(root.glob("scheduler_config.json")):  # fmt: skip
        h.update(f.name.encode())
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()


def _sample_shape(field) -> tuple[int, int, int]:
    net = field.model.net
    size = net.sample_size
    if size is None:
        raise ValueError("the model's config has no `sample_size`: the image size is unknown.")
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    return int(h), int(w), int(net.in_channels)


def _score(field, process):
    from wgfm import as_field

    return as_field(process, field, src=field.kind, dst="score")


def _fresh(field, shape, key):
    """The same architecture with freshly initialised parameters (flax's default initialisers;
    no layer starts at zero, so the untrained Jacobian is not trivially 0)."""
    params = field.model.init(key, shape, jnp.float32)
    return eqx.tree_at(lambda f: f.params, field, params)


# ---------------------------------------------------------------------------------------------
# Clean images.


def _source(config: DiagnoseConfig) -> str:
    if config.data is not None:
        return f"data {Path(config.data).resolve()}"
    if config.images is not None:
        return f"images {Path(config.images).resolve()}"
    return "generated by the model (DDIM)"


def clean_images(config: DiagnoseConfig, field, process, shape, sz: DiagnoseSizes, key):
    """``(images (N, H, W, C) in [-1, 1], description)`` for the run."""
    if config.data is not None:
        x = load_data(config.data)
        what = f"{len(x)} images of {config.data}"
    elif config.images is not None:
        x = load_images(config.images, shape)
        what = f"{len(x)} images of {config.images}, resized to {shape[0]}x{shape[1]}"
    else:
        x = _generated(config.out, field, process, shape, sz, key)
        return x, (f"{len(x)} images generated by the model itself (DDIM-{sz.ddim_steps}, "
                   "clipped to [-1, 1]): no data was given, so the noise levels surround "
                   "the model's own samples, not data")  # fmt: skip
    if len(x) < 2:
        raise ValueError(f"{what}: the Gaussian-fit control needs at least 2 clean images.")
    if x.shape[1:] != shape:
        raise ValueError(f"the clean images have shape {x.shape[1:]} but the model takes "
                         f"{shape} (H, W, C).")  # fmt: skip
    return x, what


def load_data(data_dir: Path) -> np.ndarray:
    """CIFAR-10 python batches or MNIST IDX files in ``data_dir`` (training split), in [-1, 1]."""
    from wgfm import data as wdata

    root = Path(data_dir)
    if any((d / "data_batch_1").is_file() for d in (root, root / "cifar-10-batches-py")):
        return wdata.load_cifar10(root, "train")[0]
    if any(root.glob("train-images-idx3-ubyte*")):
        return wdata.load_mnist(root, "train")[0]
    raise ValueError(f"`--data` {str(root)!r} holds neither CIFAR-10 python batches "
                     "(data_batch_1 ...) nor MNIST IDX files (train-images-idx3-ubyte ...).")  # fmt: skip


def load_images(folder: Path, shape: tuple[int, int, int]) -> np.ndarray:
    """Every PNG/JPEG in ``folder`` as ``(N, H, W, C)`` float32 in [-1, 1]: centre-cropped to
    the aspect ratio of ``shape``, resized (bicubic) and converted to RGB or greyscale."""
    try:
        from PIL import Image
    except ImportError:
        raise ValueError("`--images` needs Pillow (pip install pillow).") from None
    h, w, c = shape
    if c not in (1, 3):
        raise ValueError(f"`--images` works for 1- or 3-channel models; this one takes {c}.")
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"`--images` {str(folder)!r} holds no PNG or JPEG files.")
    out = np.empty((len(files), h, w, c), np.float32)
    for i, f in enumerate(files):
        try:
            with Image.open(f) as im:
                im = im.convert("RGB" if c == 3 else "L")
                fw, fh = im.size
                scale = min(fw / w, fh / h)
                cw, ch = w * scale, h * scale
                box = ((fw - cw) / 2, (fh - ch) / 2, (fw + cw) / 2, (fh + ch) / 2)
                im = im.resize((w, h), Image.Resampling.BICUBIC, box=box)
                arr = np.asarray(im, np.float32)
        except OSError as e:
            raise ValueError(f"`--images`: {f.name} is not a readable image ({e}).") from None
        out[i] = (arr.reshape(h, w, c) / 127.5) - 1.0
    return out


def _generated(out: Path, field, process, shape, sz: DiagnoseSizes, key) -> np.ndarray:
    """``sz.num_generated`` DDIM samples of the model, kept in ``out/generated.npy``."""
    from wgfm.samplers import sample_ddim

    path = out / "generated.npy"
    if path.is_file():
        x = np.load(path)
        if x.shape == (sz.num_generated, *shape):
            return x
    # Equal chunks (one compiled sampler; the last is trimmed): memory stays that of one chunk.
    chunk = min(sz.num_generated, GENERATION_CHUNK)
    parts = []
    for i in tqdm(range(-(-sz.num_generated // chunk)), desc="DDIM", unit="chunk", leave=False):
        res = sample_ddim(field, process, key=jax.random.fold_in(key, i), num_samples=chunk,
                          shape=shape, kind=field.kind, num_steps=sz.ddim_steps,
                          num_train_steps=len(process.betas))  # fmt: skip
        parts.append(np.asarray(res.samples, np.float32))
    x = np.concatenate(parts)[: sz.num_generated]
    # As the diffusers pipelines return images: clipped to the data range.
    x = np.clip(x, -1.0, 1.0)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, x)
    os.replace(tmp, path)
    return x


# ---------------------------------------------------------------------------------------------
# The output directory.


def _claim_directory(out: Path, fingerprint: str, model: str, settings: dict) -> None:
    """Make ``out`` this run's directory, or refuse: it must be absent, empty, or an earlier
    ``wgfm diagnose`` run of the same model with the same settings (which is resumed)."""
    manifest = out / MANIFEST
    want = {"model": model, "fingerprint": fingerprint, "settings": _jsonable(settings)}
    if manifest.is_file():
        have = json.loads(manifest.read_text())
        if have.get("fingerprint") != fingerprint:
            raise ValueError(f"`--out` {str(out)!r} holds a run of a different model "
                             f"({have.get('model')}); choose another --out.")  # fmt: skip
        if have.get("settings") != want["settings"]:
            diff = [
                k
                for k in want["settings"]
                if have.get("settings", {}).get(k) != want["settings"][k]
            ]
            raise ValueError(f"`--out` {str(out)!r} holds a run of this model with other "
                             f"settings ({', '.join(diff)} differ); choose another --out.")  # fmt: skip
        return
    if out.is_dir() and any(out.iterdir()):
        raise ValueError(f"`--out` {str(out)!r} is not empty and holds no wgfm diagnose run; "
                         "choose another --out.")  # fmt: skip
    _write_atomic(manifest, json.dumps(want, indent=1))


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _jsonable(x):
    from experiments.report import _jsonable as to_json

    return json.loads(json.dumps(to_json(x)))
