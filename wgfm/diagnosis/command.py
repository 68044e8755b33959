"""``wgfm diagnose``: :func:`wgfm.diagnose` on a pretrained model, into a resumable directory.

:func:`run` takes the command's options, a :class:`wgfm.diagnosis.config.DiagnoseConfig`;
it loads the model by spec (:func:`wgfm.interop.load_model`),
takes the clean images (:mod:`.sources`), measures every registered claim
(:data:`wgfm.diagnosis.registry.CLAIMS`) with :func:`wgfm.diagnosis.diagnose`, keeping each
finished claim in the output directory (:mod:`.outdir`), and writes the report with
:meth:`wgfm.diagnosis.Diagnosis.save`.
"""

from __future__ import annotations

import dataclasses
import platform
import re
import time
import zlib
from pathlib import Path

import jax
from rich.console import Console
from tqdm.auto import tqdm

from ..diagnostics.gaussian_fit import fit_sample_cap
from ..interop.load import is_callable_spec, load_model, model_fingerprint, model_name
from . import outdir, sources, spaces
from .api import Diagnosis, device_line, diagnose, measured_indices
from .asymmetry import JacobianAsymmetry
from .config import DiagnoseConfig
from .plan import plan_header
from .registry import CLAIMS
from .sizes import FULL, DiagnoseSizes


def run(
    config: DiagnoseConfig,
    *,
    sizes: DiagnoseSizes | None = None,
    mesh=None,
    plan: bool | None = None,
) -> Diagnosis:
    """Diagnose ``config.model`` into ``config.out`` (REPORT.md, results.json, figures/).

    Args:
        config: the options.
        sizes: overrides the mode's sizes (tests); ``config.jacobians`` still applies.
        mesh: a ``jax.sharding.Mesh`` (:func:`wgfm.distributed.setup_devices`) splitting the
            images over its devices.
        plan: time the model's passes and write the plan of every preset into the header
            (:func:`wgfm.diagnosis.plan.plan_header`: compiles a forward pass, a JVP and a
            VJP); default: unless ``sizes`` overrides the preset's.

    Returns:
        The :class:`wgfm.diagnosis.Diagnosis` written.
    """
    config.check()
    console = Console(stderr=True)
    sz = dataclasses.replace(sizes or config.sizes, jacobians=config.jacobians)
    t_all = time.perf_counter()
    field, process = load_model(
        config.model,
        class_label=config.class_label,
        prompt_embedding=config.prompt_embedding,
        variant=config.variant,
        mu=config.mu,
        guidance_scale=config.guidance_scale,
        condition=config.condition,
        negative_condition=config.negative_condition,
        prompt=config.prompt,
        negative_prompt=config.negative_prompt,
        sample_size=config.sample_size,
        device=config.torch_device,
        torch_dtype=config.dtype,
    )
    if config.pixel_run is not None and field.latent is None:
        raise ValueError(
            f"`--pixel-run` compares a latent pipeline with a pixel-space run, but "
            f"{str(config.model)!r} is not a latent pipeline."
        )
    out = Path(config.out)
    source = sources.describe_source(config.data, config.images)
    settings = {
        "sizes": dataclasses.asdict(sz),
        "seed": config.seed,
        "clean images": source,
        "field": field.describe(),
    }
    fingerprint = model_fingerprint(config.model)
    outdir.claim_directory(out, fingerprint, model_name(config.model), settings)
    root = jax.random.key(config.seed)
    shape = sources.sample_shape(field, config.data)
    # The key diagnose() would derive itself: one untrained control whichever claim runs.
    untrained = field.untrained(key=_key(root, "untrained"), sample_shape=shape)
    name = str(config.model).rsplit(":", 1)[-1] if is_callable_spec(config.model) else None
    label = re.sub(r"[^\w.-]", "_", name or Path(config.model).resolve().name) or "model"
    d = Diagnosis(label, {})
    with tqdm(total=1 + len(CLAIMS), desc="wgfm diagnose", unit="stage") as bar:
        bar.set_postfix_str("clean images")
        t0 = time.perf_counter()
        images, described = sources.clean_images(
            field,
            process,
            shape,
            sz,
            key=_key(root, "clean"),
            data=config.data,
            images=config.images,
            out=out,
        )
        console.log(f"clean images: {described} ({time.perf_counter() - t0:.1f} s)")
        bar.update()
        reused = []
        for claim in CLAIMS.values():
            bar.set_postfix_str(claim.title[:48])
            path = out / "claims" / f"{claim.key}.json"
            stored = outdir.stored_claim(path, settings)
            note = f"Clean images: {described}."
            if stored is None:
                t0 = time.perf_counter()
                m = diagnose(
                    field,
                    process,
                    images,
                    key=root,
                    sizes=sz,
                    untrained=untrained,
                    claims=(claim.key,),
                    label=label,
                    mesh=mesh,
                ).measurements[claim.title]
                seconds = time.perf_counter() - t0
                stored = outdir.store_claim(out, path, settings, m, seconds), seconds
            else:
                reused.append(str(claim.number))
                note += " Reused from an earlier run in this directory."
            d.measurements[claim.title], d.timings[claim.title] = stored
            d.notes[claim.title] = note
            console.log(
                f"{claim.title}: {'reused' if note.endswith('directory.') else 'done'} "
                f"in {d.timings[claim.title]:.1f} s"
            )
            bar.update()
    if field.latent is not None:
        title, m = JacobianAsymmetry.title, d.measurements[JacobianAsymmetry.title]
        pick = measured_indices(root, CLAIMS[JacobianAsymmetry.key], len(images), sz.num_samples)
        decoded = spaces.decoded_figure(field.latent, images[pick])
        figures = {**m.figures, f"latents_decoded_{label}": decoded}
        rows = list(m.rows)
        if config.pixel_run is not None:
            rows.append(spaces.pixel_vs_latent(m.numbers, config.pixel_run))
        d.measurements[title] = dataclasses.replace(m, rows=rows, figures=figures)
    header = {
        "mode": config.preset + (" (sizes overridden)" if sizes else ""),
        "model": str(config.model),  # as given: a report names no path of the machine it ran on
        "model fingerprint (sha256)": fingerprint[:16],
        "field diagnosed": field.describe(),
        "process": field.describe_process(),
        "clean images": described,
        "controls": f"exact score of the Gaussian fitted to up to {fit_sample_cap(images[0].size)} "
        f"clean images; {field.untrained_description}",
        "seed": config.seed,
        "devices": device_line(field, mesh),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "total run time (s)": round(time.perf_counter() - t_all, 1),
    }
    for claim in CLAIMS.values():
        header.update(claim.header(d.measurements[claim.title].numbers))
    header.update(cost_lines(d.timings, sz, FULL))
    if sizes is None if plan is None else plan:  # a preset's run plans the others
        header.update(
            plan_header(
                field,
                process,
                images,
                sz,
                numbers=d.numbers,
                generated=source.startswith("generated"),
                untrained=untrained is not None,
                host_callback=field.host_callback,
            )
        )
    if reused:
        header["claims reused from an earlier run (their own run times below)"] = ", ".join(reused)
    d = dataclasses.replace(d, header=header)
    md, js = d.save(out)
    console.log(f"Report: {md}  Results: {js}")
    return d


def _key(root, name: str):
    """The key ``diagnose`` derives from ``root`` by ``name``."""
    return jax.random.fold_in(root, zlib.crc32(name.encode()))


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
