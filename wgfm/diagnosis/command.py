"""``wgfm diagnose``: :func:`wgfm.diagnose` on a pretrained diffusers model, into a directory.

The model directory is loaded by :func:`wgfm.interop.load_diffusers` (flax port + the scheduler's
:class:`wgfm.processes.DiscreteVP`) and diagnosed by :func:`wgfm.diagnosis.diagnose`, the
measurement ``wgfm reproduce`` makes for claims 1 and 2, beside its two controls. Clean images
come from ``--data`` (CIFAR-10 / MNIST), ``--images`` (a folder of PNG/JPEG files) or, with
neither, from the model itself (DDIM).

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

import jax
import numpy as np
from rich.console import Console
from tqdm.auto import tqdm

from ..report import ClaimRow, Report, jsonable
from .api import FULL, GAUSSIAN_FIT_MAX, NUMBERS, QUICK, TITLES, DiagnoseSizes, diagnose

MANIFEST = "diagnose.json"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
GENERATION_CHUNK = 64  # images per DDIM call when the model generates its own


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
    from ..compile_cache import use_compile_cache
    from ..interop import load_diffusers

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
    shape = _sample_shape(field)
    label = re.sub(r"[^\w.-]", "_", Path(config.model).resolve().name) or "model"
    report = Report(out, title=f"wgfm diagnose report: {label}")
    with tqdm(total=3, desc="wgfm diagnose", unit="stage", dynamic_ncols=True) as bar:
        bar.set_postfix_str("clean images")
        t0 = time.perf_counter()
        clean = jax.random.fold_in(root, zlib.crc32(b"clean"))
        images, described = clean_images(config, field, process, shape, sz, clean)
        console.log(f"clean images: {described} ({time.perf_counter() - t0:.1f} s)")
        bar.update()
        reused_claims: list[str] = []
        for claim in (1, 2):
            title = TITLES[claim]
            bar.set_postfix_str(title[:48])

            def compute(claim=claim):
                d = diagnose(
                    field, process, images, key=root, sizes=sz, claims=(claim,), label=label
                )
                return d.measurements[TITLES[claim]]

            reused = _claim(
                report, claim, label, out / "claims" / f"{claim}.json", settings, compute
            )
            report.notes[title] = f"Clean images: {described}." + (
                " Reused from an earlier run in this directory." if reused else ""
            )
            reused_claims += [str(claim)] if reused else []
            console.log(
                f"{title}: {'reused' if reused else 'done'} in {report.timings[title]:.1f} s"
            )
            bar.update()
    header = {
        "mode": ("quick" if config.quick else "full") + (" (sizes overridden)" if sizes else ""),
        "model": str(Path(config.model).resolve()),
        "model fingerprint (sha256)": fingerprint[:16],
        "prediction type": field.prediction_type,
        "process": f"DiscreteVP from the scheduler ({len(process.betas)} steps)",
        "clean images": described,
        "controls": f"exact score of the Gaussian fitted to up to {GAUSSIAN_FIT_MAX} clean "
        "images; the same architecture with freshly drawn parameters",
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
    saved = {
        "settings": _jsonable(settings),
        "rows": [dataclasses.asdict(r) for r in m.rows],
        "numbers": numbers[label],
        "figures": report.figures.get(title, []),
        "seconds": report.timings[title],
    }
    _write_atomic(path, json.dumps(saved, indent=1))
    return False


def model_fingerprint(model_dir: Path) -> str:
    """sha256 over the U-Net's config and weights and the scheduler's config: what makes two
    model directories the same model."""
    h = hashlib.sha256()
    root = Path(model_dir)
    unet = root / "unet" if (root / "unet" / "config.json").is_file() else root
    for f in (
        sorted(unet.glob("config.json"))
        + sorted(unet.glob("diffusion_pytorch_model.*"))
        + sorted(root.glob("scheduler/scheduler_config.json"))
        + sorted(root.glob("scheduler_config.json"))
    ):
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
        return x, (
            f"{len(x)} images generated by the model itself (DDIM-{sz.ddim_steps}, "
            "clipped to [-1, 1]): no data was given, so the noise levels surround "
            "the model's own samples, not data"
        )
    if len(x) < 2:
        raise ValueError(f"{what}: the Gaussian-fit control needs at least 2 clean images.")
    if x.shape[1:] != shape:
        raise ValueError(
            f"the clean images have shape {x.shape[1:]} but the model takes {shape} (H, W, C)."
        )
    return x, what


def load_data(data_dir: Path) -> np.ndarray:
    """CIFAR-10 python batches or MNIST IDX files in ``data_dir`` (training split), in [-1, 1]."""
    from .. import data

    try:
        return data.load("auto", data_dir)
    except ValueError as e:
        raise ValueError(str(e).replace("`data_dir`", "`--data`")) from None


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
    from ..samplers import sample_ddim

    path = out / "generated.npy"
    if path.is_file():
        x = np.load(path)
        if x.shape == (sz.num_generated, *shape):
            return x
    # Equal chunks (one compiled sampler; the last is trimmed): memory stays that of one chunk.
    chunk = min(sz.num_generated, GENERATION_CHUNK)
    parts = []
    for i in tqdm(range(-(-sz.num_generated // chunk)), desc="DDIM", unit="chunk", leave=False):
        res = sample_ddim(
            field,
            process,
            key=jax.random.fold_in(key, i),
            num_samples=chunk,
            shape=shape,
            kind=field.kind,
            num_steps=sz.ddim_steps,
            num_train_steps=len(process.betas),
        )
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
            raise ValueError(
                f"`--out` {str(out)!r} holds a run of a different model "
                f"({have.get('model')}); choose another --out."
            )
        if have.get("settings") != want["settings"]:
            diff = [
                k
                for k in want["settings"]
                if have.get("settings", {}).get(k) != want["settings"][k]
            ]
            raise ValueError(
                f"`--out` {str(out)!r} holds a run of this model with other "
                f"settings ({', '.join(diff)} differ); choose another --out."
            )
        return
    if out.is_dir() and any(out.iterdir()):
        raise ValueError(
            f"`--out` {str(out)!r} is not empty and holds no wgfm diagnose run; "
            "choose another --out."
        )
    _write_atomic(manifest, json.dumps(want, indent=1))


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _jsonable(x):
    return json.loads(json.dumps(jsonable(x)))
