"""``wgfm diagnose``: :func:`wgfm.diagnose` on a pretrained model, into a resumable directory.

:func:`run` takes the command's options, a :class:`wgfm.diagnosis.config.DiagnoseConfig`;
it loads the model by spec (:func:`wgfm.interop.load_model`), takes the clean images
(:mod:`.sources`) and measures every registered claim (:data:`wgfm.diagnosis.registry.CLAIMS`)
level by level, keeping each level in the output directory (:mod:`.outdir`). A run split over
processes (``--shard I/N``, or the launcher's environment) measures its share of the levels
(:mod:`.shards`); whichever process finds every level there writes the report
(:func:`wgfm.diagnosis.shards.merge`, as :meth:`wgfm.diagnosis.Diagnosis.save` does).
"""

from __future__ import annotations

import dataclasses
import platform
import time
from pathlib import Path

import jax
from rich.console import Console
from tqdm.auto import tqdm

from ..diagnostics.gaussian_fit import fit_sample_cap
from ..interop.load import model_fingerprint, model_label, model_name
from ..report import resources, usage_now
from . import api, outdir, shards, sources, spaces
from .asymmetry import JacobianAsymmetry
from .config import DiagnoseConfig
from .plan import time_model
from .registry import CLAIMS
from .sizes import DiagnoseSizes


def run(
    config: DiagnoseConfig,
    *,
    sizes: DiagnoseSizes | None = None,
    mesh=None,
    plan: bool | None = None,
) -> api.Diagnosis | None:
    """Diagnose ``config.model`` into ``config.out`` (REPORT.md, results.json, figures/), or
    this process's share of it (``config.shard`` or the launcher's environment).

    Args:
        config: the options (with ``merge``, only the assembly of that directory).
        sizes: overrides the mode's sizes (tests); ``config.jacobians`` still applies.
        mesh: a ``jax.sharding.Mesh`` (:func:`wgfm.distributed.setup_devices`) splitting the
            images over its devices.
        plan: time the model's passes (process 0 of a split run) and write the plan of every
            preset into the header (:mod:`wgfm.diagnosis.plan`: compiles a forward pass, a JVP
            and a VJP); default: unless ``sizes`` overrides the preset's.

    Returns:
        The :class:`wgfm.diagnosis.Diagnosis` written, or None when levels of other processes
        are still missing (the last process to finish writes it).
    """
    config.check()
    if config.merge is not None:
        return shards.merge(config.merge)
    started = usage_now()
    console = Console(stderr=True)
    sz = dataclasses.replace(sizes or config.sizes, jacobians=config.jacobians)
    t_all = time.perf_counter()
    shard = shards.this_process(config.shard, console.log)
    field, process = config.load()
    out = Path(config.out)
    settings = {
        "sizes": dataclasses.asdict(sz),
        "seed": config.seed,
        "clean images": sources.describe_source(config.data, config.images),
        "field": field.describe(),
    }
    fingerprint = model_fingerprint(config.model)  # pyright: ignore[reportArgumentType]
    outdir.claim_directory(out, fingerprint, model_name(config.model), settings)  # pyright: ignore[reportArgumentType]
    root = jax.random.key(config.seed)
    shape = sources.sample_shape(field, config.data)
    t0 = time.perf_counter()
    images, described = sources.clean_images(
        field, process, shape, sz, key=api.derived_key(root, "clean"), data=config.data,
        images=config.images, out=out,
    )  # fmt: skip
    console.log(f"clean images: {described} ({time.perf_counter() - t0:.1f} s)")
    # The key diagnose() would derive itself: one untrained control whichever claim runs.
    untrained = field.untrained(key=api.derived_key(root, "untrained"), sample_shape=shape)
    score, controls, x = api.prepare(field, process, images, key=root, untrained=untrained)
    label = model_label(config.model)  # pyright: ignore[reportArgumentType]
    shards.start(out, shard)
    reused = {}
    for claim in tqdm(CLAIMS.values(), desc=f"wgfm diagnose {shard[0]}/{shard[1]}", unit="claim"):
        x0, key = api.claim_points(root, claim, x, sz)
        reused[claim.key] = shards.measure_levels(
            claim, score, process, x0, sz, key=key, controls=controls, out=out, shard=shard,
            mesh=None if api.on_torch(field) else mesh,
        )  # fmt: skip
    pick = api.measured_indices(root, CLAIMS[JacobianAsymmetry.key], len(x), sz.num_samples)
    record = {
        "label": label,
        "header": _header(config, field, fingerprint, described, mesh, sizes, x[0].size),
        "clean images": described,
        "control_name": controls.control_name,
        "image": x.ndim > 2,
        "pixel_run": None if config.pixel_run is None else str(config.pixel_run),
        "latent_figure": spaces.keep_decoded_figure(field.latent, x[pick], out, label),
        "reused": reused,
        "run time (s)": round(time.perf_counter() - t_all, 1),
        "resources": resources(started),
    }
    if shard[0] == 0 and (sizes is None if plan is None else plan):  # a preset's run plans all
        record["plan"] = time_model(
            field, process, x, sz, generated=config.data is None and config.images is None,
            untrained=untrained is not None, host_callback=field.host_callback,
        )  # fmt: skip
    if not shards.finish(out, shard, record, sz):
        console.log(f"process {shard[0]}/{shard[1]} done; levels of other processes missing")
        return None
    d = shards.merge(out)
    console.log(f"Report: {out / 'REPORT.md'}  Results: {out / 'results.json'}")
    return d


def _header(config: DiagnoseConfig, field, fingerprint, described, mesh, sizes, dim) -> dict:
    """The report header's lines on the run (the claims' lines and run times come at merge)."""
    return {
        "mode": config.preset + (" (sizes overridden)" if sizes is not None else ""),
        "model": str(config.model),  # as given: a report names no path of the machine it ran on
        "model fingerprint (sha256)": fingerprint[:16],
        "field diagnosed": field.describe(),
        "process": field.describe_process(),
        "clean images": described,
        "controls": f"exact score of the Gaussian fitted to up to "
        f"{fit_sample_cap(int(dim))} clean images; "
        f"{field.untrained_description}",
        "seed": config.seed,
        "devices": api.device_line(field, mesh),
        "python": platform.python_version(),
        "jax": jax.__version__,
    }
