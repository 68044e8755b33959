"""``wgfm diagnose``: :func:`wgfm.diagnose` on a pretrained model, into a directory.

The model is a diffusers pipeline or model directory, loaded by
:func:`wgfm.interop.load_diffusers` (``model_index.json`` chooses: the flax port of
``UNet2DModel``, or PyTorch through ``torch_field`` for the other denoisers; the scheduler's
process), or ``package.module:function`` returning ``(field, process)`` or
``(field, process, kind)`` (:func:`load_callable`). It is diagnosed by
:func:`wgfm.diagnosis.diagnose`, the measurement ``wgfm reproduce`` makes for claims 1 and 2,
beside its two controls. Clean images come from ``--data`` (CIFAR-10 / MNIST), ``--images`` (a
folder of PNG/JPEG files) or, with neither, from the model itself (DDIM on a DDPM schedule,
else the probability-flow ODE). A latent pipeline is diagnosed in its latent space: given
images are encoded by the pipeline's autoencoder (times its ``scaling_factor``).

The output directory is resumable and belongs to one (model, settings) pair: ``diagnose.json``
records both, each finished claim is kept in ``claims/<n>.json`` and generated images in
``generated.npy``, and a rerun reuses them. A directory holding anything else is refused."""

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
from typing import Any

import jax
import numpy as np
from rich.console import Console
from tqdm.auto import tqdm

from ..pretrained import AbstractPretrainedField, CallableField
from ..report import ClaimRow, Report, jsonable
from ..typing import Field
from .api import (
    FULL,
    GAUSSIAN_FIT_MAX,
    NUMBERS,
    QUICK,
    TITLES,
    DiagnoseSizes,
    device_line,
    diagnose,
    measured_indices,
)

MANIFEST = "diagnose.json"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
GENERATION_CHUNK = 64  # images per DDIM call when the model generates its own
# --jacobians -> diagnose's `exact`: by the mode's budget, or forced either way.
JACOBIANS = {"auto": None, "exact": True, "probes": False}


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
    class_label: int | None = None
    prompt_embedding: Path | None = None
    variant: str | None = None
    mu: float | None = None
    guidance_scale: float | None = None
    jacobians: str = "auto"  # claim 1: "auto" (the mode's budget), "exact" or "probes"
    pixel_run: Path | None = None  # a pixel-space diagnosis (its --out or results.json)

    def __post_init__(self):
        if self.jacobians not in JACOBIANS:
            raise ValueError(
                f"`--jacobians` must be one of {', '.join(JACOBIANS)}, got {self.jacobians!r}."
            )
        if not Path(self.model).is_dir() and not is_callable_spec(str(self.model)):
            raise ValueError(
                f"`--model` {str(self.model)!r} is neither a directory nor package.module:function."
            )
        if self.prompt_embedding is not None and not Path(self.prompt_embedding).is_file():
            raise ValueError(f"`--prompt-embedding` {str(self.prompt_embedding)!r} is not a file.")
        if self.data is not None and self.images is not None:
            raise ValueError("`--data` and `--images` are alternatives: give one of them.")
        for name in ("data", "images"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_dir():
                raise ValueError(f"`--{name}` {str(path)!r} is not a directory.")
        if self.pixel_run is not None and not _results_json(self.pixel_run).is_file():
            raise ValueError(
                f"`--pixel-run` {str(self.pixel_run)!r} is neither a `wgfm diagnose` output "
                "directory nor its results.json."
            )
        if Path(self.out).exists() and not Path(self.out).is_dir():
            raise ValueError(f"`--out` {str(self.out)!r} exists and is not a directory.")

    @property
    def sizes(self) -> DiagnoseSizes:
        return QUICK if self.quick else FULL


def run(config: DiagnoseConfig, *, sizes: DiagnoseSizes | None = None, mesh=None) -> Report:
    """Diagnose ``config.model``: claims 1 and 2 with both controls, written to ``config.out``
    (REPORT.md, results.json, figures/). ``sizes`` overrides the mode's (tests); ``mesh``
    (:func:`wgfm.distributed.setup_devices`) splits the images over its devices."""
    from ..compile_cache import use_compile_cache

    console = Console(stderr=True)
    sz = sizes or config.sizes
    t_all = time.perf_counter()
    field, process, kind = load_model(config)
    if config.pixel_run is not None and field.latent is None:
        raise ValueError(
            f"`--pixel-run` compares a latent pipeline with a pixel-space run, but "
            f"{str(config.model)!r} is not a latent pipeline."
        )
    out = Path(config.out)
    settings = {
        "sizes": dataclasses.asdict(sz),
        "jacobians": config.jacobians,
        "seed": config.seed,
        "clean images": _source(config),
        "field": field.describe(),
    }
    fingerprint = model_fingerprint(config.model)
    _claim_directory(out, fingerprint, _model_name(config.model), settings)
    if config.compile_cache:
        use_compile_cache()
    root = jax.random.key(config.seed)
    shape = _sample_shape(field, config)
    # The key diagnose() would derive itself: one untrained control whichever calls it.
    untrained = field.untrained(
        key=jax.random.fold_in(root, zlib.crc32(b"untrained")), sample_shape=shape
    )
    untrained_note = field.untrained_description
    name = (
        str(config.model).rsplit(":", 1)[-1]
        if is_callable_spec(str(config.model))
        else (Path(config.model).resolve().name)
    )
    label = re.sub(r"[^\w.-]", "_", name) or "model"
    report = Report(out, title=f"wgfm diagnose report: {label}")
    with tqdm(total=3, desc="wgfm diagnose", unit="stage", dynamic_ncols=True) as bar:
        bar.set_postfix_str("clean images")
        t0 = time.perf_counter()
        clean = jax.random.fold_in(root, zlib.crc32(b"clean"))
        images, described = clean_images(config, field, process, shape, sz, clean, kind)
        console.log(f"clean images: {described} ({time.perf_counter() - t0:.1f} s)")
        latent = field.latent
        bar.update()
        reused_claims: list[str] = []
        for claim in (1, 2):
            title = TITLES[claim]
            bar.set_postfix_str(title[:48])

            def compute(claim=claim):
                d = diagnose(
                    field,
                    process,
                    images,
                    key=root,
                    kind=kind,  # pyright: ignore[reportArgumentType]
                    sizes=sz,
                    untrained=untrained,
                    claims=(claim,),
                    label=label,
                    exact=JACOBIANS[config.jacobians],
                    mesh=mesh,
                )
                return d.measurements[TITLES[claim]]

            reused = _claim(
                report, claim, label, out / "claims" / f"{claim}.json", settings, compute
            )
            report.notes[title] = f"Clean images: {described}." + (
                " Reused from an earlier run in this directory." if reused else ""
            )
            reused_claims += [str(claim)] if reused else []
            if claim == 1 and latent is not None:
                pick = measured_indices(root, 1, len(images), sz.num_samples)
                _latent_figure(report, title, latent, np.asarray(images)[pick], label)
                if config.pixel_run is not None:
                    report.add(title, _pixel_vs_latent(report, label, config.pixel_run))
            console.log(
                f"{title}: {'reused' if reused else 'done'} in {report.timings[title]:.1f} s"
            )
            bar.update()
    header = {
        "mode": ("quick" if config.quick else "full") + (" (sizes overridden)" if sizes else ""),
        "model": str(config.model),  # as given: a report names no path of the machine it ran on
        "model fingerprint (sha256)": fingerprint[:16],
        "field diagnosed": field.describe(),
        "process": field.describe_process(),
        "clean images": described,
        "controls": f"exact score of the Gaussian fitted to up to {GAUSSIAN_FIT_MAX} clean "
        f"images; {untrained_note}",
        "seed": config.seed,
        "devices": device_line(field, mesh),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "total run time (s)": round(time.perf_counter() - t_all, 1),
    }
    jac = report.numbers.get(NUMBERS[1], {}).get(label, {}).get("jacobian")
    if jac is not None:
        header["claim 1 Jacobians"] = jac["description"]
    header.update(cost_lines(report.timings, sz, FULL))
    if reused_claims:
        header["claims reused from an earlier run (their own run times below)"] = ", ".join(
            reused_claims
        )
    md, js = report.write(header)
    console.log(f"Report: {md}  Results: {js}  Figures: {report.fig_dir}")
    return report


def _units(claim: int, sz: DiagnoseSizes) -> int:
    """Images x levels a claim measures at sizes ``sz`` (each for the model and its controls)."""
    return sz.num_levels * sz.num_samples if claim == 1 else sz.loop_levels * sz.loop_samples


def cost_lines(timings: dict, sz: DiagnoseSizes, full: DiagnoseSizes) -> dict:
    """Header lines that size a bigger run: each claim's seconds per image and level (its run
    time, compilation included, over the images x levels it measured) and that rate times the
    ``full`` sizes' images x levels. A lower bound for the full run where its per-image work
    grows too (more probes, longer loops: claim 2's loops at full sizes hold about
    ``full.loop_points / sz.loop_points`` times more points)."""
    out = {}
    for claim in (1, 2):
        secs = timings.get(TITLES[claim])
        if secs is None:
            continue
        per = secs / _units(claim, sz)
        out[f"claim {claim}: seconds per image and level (compilation included)"] = round(per, 2)
        out[
            f"claim {claim}: the same rate at the full sizes' {_units(claim, full)} images x "
            "levels (s)"
        ] = round(per * _units(claim, full))
    return out


def _results_json(path: Path) -> Path:
    path = Path(path)
    return path / "results.json" if path.is_dir() else path


def _latent_figure(report: Report, title: str, latent, images, label: str) -> None:
    """The clean latents claim 1 measured (up to 8), decoded by the pipeline's autoencoder: the
    diagnosis runs in latent space, the figure shows which images those points are."""
    from ..figures import image_grid
    from ..interop.pipelines import decode_latents

    shown = decode_latents(latent, np.asarray(images[:8]))
    fig = image_grid(
        shown, f"clean latents claim 1 measured, decoded by its {latent.cls}", cols=len(shown)
    )
    report.save_figure(title, fig, f"latents_decoded_{label}")


def _pixel_vs_latent(report: Report, label: str, pixel_run: Path) -> ClaimRow:
    """Claim 1 of this latent run beside that of a pixel-space ``wgfm diagnose`` run (the
    full-dimension lambda of each, on their shared noise levels)."""
    from .claims import compare_spaces, headline_lambda

    pixel = json.loads(_results_json(pixel_run).read_text())
    runs = pixel.get("numbers", {}).get(NUMBERS[1], {})
    if len(runs) != 1:
        raise ValueError(
            f"`--pixel-run` {str(pixel_run)!r} must hold the claim-1 numbers of one model, "
            f"found {len(runs)}."
        )
    (pixel_label, pix), lat = next(iter(runs.items())), report.numbers[NUMBERS[1]][label]
    pl, pv, pwhat = headline_lambda(pix)
    ll, lv, lwhat = headline_lambda(lat)
    return compare_spaces(
        (ll, lv),
        (pl, pv),
        what=f"pixel run {pixel_label}: {pwhat}; latent: {lwhat}",
        quantity="median full-dimension lambda",
    )


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


CALLABLE_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def is_callable_spec(model: str) -> bool:
    """Whether ``model`` reads ``package.module:function`` (and is not a directory)."""
    return bool(CALLABLE_SPEC.match(model)) and not Path(model).is_dir()


def load_model(config: DiagnoseConfig) -> tuple[AbstractPretrainedField, Any, str]:
    """``(field, process, kind)`` of ``config.model``: a diffusers directory or a callable."""
    if is_callable_spec(str(config.model)):
        if (
            config.class_label is not None
            or config.prompt_embedding is not None
            or config.guidance_scale is not None
        ):
            raise ValueError(
                "`--class-label`, `--prompt-embedding` and `--guidance-scale` apply to diffusers "
                "directories; a "
                "`package.module:function` model conditions its own field."
            )
        return load_callable(str(config.model))
    from ..interop import load_diffusers

    ehs = None if config.prompt_embedding is None else np.load(config.prompt_embedding)
    field, process = load_diffusers(
        config.model,
        class_label=config.class_label,
        encoder_hidden_states=ehs,
        variant=config.variant,
        mu=config.mu,
        guidance_scale=config.guidance_scale,
    )
    return field, process, field.kind


def load_callable(spec: str) -> tuple[AbstractPretrainedField, Any, str]:
    """``(field, process, kind)`` from ``package.module:function``: the function, called with no
    arguments, returns ``(field, process)`` (the field carrying ``kind``) or
    ``(field, process, kind)``. A ``torch.nn.Module`` field (batched: ``(N, *shape), (N,) ->
    (N, *shape)`` in the process's time) is wrapped by :func:`wgfm.interop.torch_field`; any
    other is a JAX field. ``field.sample_shape``, if present, is the shape of one sample."""
    import importlib

    from ..processes import AbstractProcess
    from ..typing import KINDS

    mod_name, fn_name = spec.split(":")
    try:
        obj: object = importlib.import_module(mod_name)
    except ImportError as e:
        raise ValueError(f"`--model` {spec!r}: cannot import {mod_name!r} ({e}).") from None
    for part in fn_name.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"`--model` {spec!r}: {mod_name!r} has no {fn_name!r}.")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"`--model` {spec!r} is not callable.")
    got = obj()
    if not isinstance(got, tuple) or len(got) not in (2, 3):
        raise ValueError(
            f"`--model` {spec!r} must return (field, process) or (field, process, kind), got "
            f"{type(got).__name__}."
        )
    field, process = got[0], got[1]
    kind = got[2] if len(got) == 3 else getattr(field, "kind", None)
    if kind not in KINDS:
        raise ValueError(
            f"`--model` {spec!r}: the field's kind must be one of {KINDS} (a `kind` attribute "
            f"or the third returned value), got {kind!r}."
        )
    if not isinstance(process, AbstractProcess):
        raise ValueError(
            f"`--model` {spec!r}: the second returned value must be a wgfm process, got "
            f"{type(process).__name__}."
        )
    if _is_torch_module(field):
        from ..interop.torch import module_field

        return module_field(field, kind, process), process, kind
    if isinstance(field, AbstractPretrainedField):
        return field, process, kind
    if not callable(field):
        raise ValueError(f"`--model` {spec!r}: the field is not callable.")
    # The spec's documented optional attribute: the shape of one sample.
    shape = getattr(field, "sample_shape", None)
    shape = None if shape is None else tuple(int(v) for v in shape)
    fn: Field = field  # pyright: ignore[reportAssignmentType]  (checked callable above)
    return CallableField(fn, kind, process, sample_shape=shape), process, kind


def _is_torch_module(obj) -> bool:
    import sys

    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.nn.Module)


def _model_name(model) -> str:
    return str(model) if is_callable_spec(str(model)) else str(Path(model).resolve())


def model_fingerprint(model) -> str:
    """sha256 over what makes two models the same: for a diffusers directory the denoiser's
    config and weights (every shard and variant), the scheduler's config and model_index.json;
    for ``package.module:function`` the spec and the source of its module."""
    h = hashlib.sha256()
    if is_callable_spec(str(model)):
        import importlib
        import inspect

        h.update(str(model).encode())
        mod = importlib.import_module(str(model).split(":")[0])
        src = inspect.getsourcefile(mod)
        files = [Path(src)] if src else []
    else:
        from ..interop import read_pipeline

        root = Path(model)
        pd = read_pipeline(root)
        top = pd.root or root
        files = (
            sorted(pd.denoiser.glob("config.json"))
            + sorted(pd.denoiser.glob("diffusion_pytorch_model*"))
            + sorted(top.glob("scheduler/scheduler_config.json"))
            + sorted(root.glob("scheduler_config.json"))
            + sorted(top.glob("model_index.json"))
        )
    for f in files:
        h.update(f.name.encode())
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()


def _sample_shape(field, config: DiagnoseConfig) -> tuple[int, ...]:
    shape = field.sample_shape
    if shape is not None:
        return tuple(int(v) for v in shape)
    if config.data is not None:
        return tuple(load_data(config.data).shape[1:])
    raise ValueError(
        "the field has no `sample_shape` and no --data was given: the sample shape is unknown "
        "(give the field a `sample_shape` attribute)."
    )


def _source(config: DiagnoseConfig) -> str:
    if config.data is not None:
        return f"data {Path(config.data).resolve()}"
    if config.images is not None:
        return f"images {Path(config.images).resolve()}"
    return "generated by the model (DDIM)"


def clean_images(
    config: DiagnoseConfig, field, process, shape, sz: DiagnoseSizes, key, kind: str | None = None
):
    """``(images (N, *shape), description)`` for the run: in [-1, 1], or for a latent pipeline
    the given images' latents under its autoencoder."""
    kind = kind or field.kind
    latent = field.latent
    pixel_shape = shape
    if latent is not None and (config.data is not None or config.images is not None):
        from ..interop.pipelines import pixel_shape as _pixel_shape

        pixel_shape = _pixel_shape(latent, shape)
    if config.data is not None:
        x = load_data(config.data)
        what = f"{len(x)} images of {config.data}"
    elif config.images is not None:
        x = load_images(config.images, pixel_shape)
        what = f"{len(x)} images of {config.images}, resized to {pixel_shape[0]}x{pixel_shape[1]}"
    else:
        x = _generated(config.out, field, process, shape, sz, key, kind)
        how = (
            f"DDIM-{sz.ddim_steps}"
            if hasattr(process, "betas")
            else (f"the probability-flow ODE, {sz.ddim_steps} Euler steps")
        )
        where = f" (in {latent.describe()})" if latent is not None else ""
        return x, (
            f"{len(x)} samples generated by the model itself{where} ({how}"
            + (", clipped to [-1, 1]" if latent is None else "")
            + "): no data was given, so the noise levels surround the model's own samples, "
            "not data"
        )
    if len(x) < 2:
        raise ValueError(f"{what}: the Gaussian-fit control needs at least 2 clean images.")
    if x.shape[1:] != pixel_shape:
        raise ValueError(
            f"the clean images have shape {x.shape[1:]} but the model takes {pixel_shape} "
            "(H, W, C)" + (f" (the pixel size of its {latent.cls})" if latent else "") + "."
        )
    if latent is not None:
        from ..interop.pipelines import encode_latents

        x = encode_latents(latent, x)
        what += f", encoded into {latent.describe()}"
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


def _generated(out: Path, field, process, shape, sz: DiagnoseSizes, key, kind: str) -> np.ndarray:
    """``sz.num_generated`` samples of the model (DDIM on a DDPM schedule, else Euler steps of
    the probability-flow ODE), kept in ``out/generated.npy``."""
    import diffrax

    from ..samplers import sample_ddim
    from ..transport import sample_ode

    path = out / "generated.npy"
    if path.is_file():
        x = np.load(path)
        if x.shape == (sz.num_generated, *shape):
            return x
    # Equal chunks (one compiled sampler; the last is trimmed): memory stays that of one chunk.
    chunk = min(sz.num_generated, GENERATION_CHUNK)
    parts = []
    for i in tqdm(range(-(-sz.num_generated // chunk)), desc="generate", unit="chunk", leave=False):
        k = jax.random.fold_in(key, i)
        if hasattr(process, "betas"):
            res = sample_ddim(
                field,
                process,
                key=k,
                num_samples=chunk,
                shape=shape,
                kind=kind,  # pyright: ignore[reportArgumentType]
                num_steps=sz.ddim_steps,
                num_train_steps=len(process.betas),
            )
        else:
            res = sample_ode(
                field,
                process,
                key=k,
                num_samples=chunk,
                shape=shape,
                kind=kind,  # pyright: ignore[reportArgumentType]
                solver=diffrax.Euler(),
                stepsize_controller=diffrax.ConstantStepSize(),
                dt0=-(process.t_max - process.t_min) / sz.ddim_steps,
            )
        parts.append(np.asarray(res.samples, np.float32))
    x = np.concatenate(parts)[: sz.num_generated]
    if field.latent is None:
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
