"""Any model by spec: a diffusers directory or ``package.module:function``, as a pretrained field.

:func:`load_model` is what ``wgfm diagnose --model`` reads: a diffusers pipeline or model
directory goes to :func:`wgfm.interop.load_diffusers`; ``package.module:function`` is called
with no arguments (:func:`load_callable`). Either way the result is an
:class:`wgfm.pretrained.AbstractPretrainedField` and its process. :func:`model_fingerprint`
says when two specs are the same model (the diagnosis's resumable directory keys on it).
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import re
import sys
from pathlib import Path

import numpy as np

from ..pretrained import AbstractPretrainedField, CallableField
from ..processes import AbstractProcess
from ..typing import KINDS, Field

CALLABLE_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def is_callable_spec(spec: str | Path) -> bool:
    """Whether ``spec`` names a function, ``package.module:function``, rather than a directory.

    Args:
        spec: a model spec as :func:`load_model` takes it.

    Returns:
        True when ``spec`` reads ``package.module:function`` and is not a directory.
    """
    return bool(CALLABLE_SPEC.match(str(spec))) and not Path(spec).is_dir()


def load_model(
    spec: str | Path,
    *,
    class_label: int | None = None,
    prompt_embedding: Path | None = None,
    variant: str | None = None,
    mu: float | None = None,
    guidance_scale: float | None = None,
    condition: Path | None = None,
    negative_condition: Path | None = None,
    prompt: str | None = None,
    negative_prompt: str | None = None,
    sample_size: int | None = None,
    device: str | None = None,
    torch_dtype: str | None = None,
) -> tuple[AbstractPretrainedField, AbstractProcess]:
    """The model ``spec`` names, as ``(field, process)``.

    Args:
        spec: a diffusers pipeline or model directory, or ``package.module:function``
            (:func:`load_callable`).
        class_label: a class-conditional denoiser's class (directories only).
        prompt_embedding: a ``.npy`` text embedding ``(seq, dim)`` for a
            ``UNet2DConditionModel`` (directories only).
        variant: the weights variant, e.g. ``"fp16"``.
        mu: the shift of a flow-matching scheduler with dynamic shifting.
        guidance_scale: ``w`` of the classifier-free-guided field (directories only).
        condition: a ``.npz`` of the denoiser's conditions, one sample each (directories only).
        negative_condition: a ``.npz`` of the null conditions of text guidance.
        prompt: a prompt encoded by the pipeline's own text encoders.
        negative_prompt: the negative prompt of text guidance.
        sample_size: the latent height and width.
        device: where a PyTorch model runs (:func:`wgfm.interop.torch.resolve_device`).
        torch_dtype: a PyTorch model's weights and activations (``"bfloat16"``, ...).

    Returns:
        The field (it declares its ``kind``, ``sample_shape`` and untrained control) and its
        process.

    Raises:
        ValueError: conditions given to a ``package.module:function`` model, or as
            :func:`wgfm.interop.load_pipeline` and :func:`load_callable` raise.
    """
    if is_callable_spec(spec):
        given = (class_label, prompt_embedding, guidance_scale, condition, negative_condition)
        if any(v is not None for v in (*given, prompt, negative_prompt, sample_size)):
            raise ValueError(
                "`--class-label`, `--prompt-embedding`, `--condition`, `--prompt`, `--guidance-scale` "
                "and `--sample-size` apply to diffusers "
                "directories; a `package.module:function` model conditions its own field."
            )
        return load_callable(str(spec), device=device, torch_dtype=torch_dtype)
    from .pipelines import load_pipeline

    ehs = None if prompt_embedding is None else np.load(prompt_embedding)
    return load_pipeline(
        spec,
        class_label=class_label,
        encoder_hidden_states=ehs,
        variant=variant,
        mu=mu,
        guidance_scale=guidance_scale,
        condition=None if condition is None else _npz(condition, "--condition"),
        negative_condition=(
            None if negative_condition is None else _npz(negative_condition, "--negative-condition")
        ),
        prompt=prompt,
        negative_prompt=negative_prompt,
        sample_size=sample_size,
        device=device,
        torch_dtype=torch_dtype,
    )


def _npz(path: Path, flag: str) -> dict[str, np.ndarray]:
    """The arrays of a ``.npz`` file by name."""
    try:
        with np.load(path) as f:
            return {k: f[k] for k in f.files}
    except (OSError, ValueError, AttributeError) as e:
        raise ValueError(f"`{flag}` {str(path)!r} is not a .npz of named arrays ({e}).") from None


def load_callable(
    spec: str, *, device: str | None = None, torch_dtype: str | None = None
) -> tuple[AbstractPretrainedField, AbstractProcess]:
    """``(field, process)`` from ``package.module:function``.

    The function, called with no arguments, returns ``(field, process)`` (the field carrying
    ``kind``) or ``(field, process, kind)``. A ``torch.nn.Module`` field (batched: ``(N, *shape),
    (N,) -> (N, *shape)`` in the process's time) is wrapped by
    :func:`wgfm.interop.torch.module_field`; any other callable is a JAX field, whose optional
    ``sample_shape`` attribute is the shape of one sample.

    Args:
        spec: ``package.module:function`` (the function may be an attribute path).
        device: where a ``torch.nn.Module`` field runs (:func:`wgfm.interop.torch.module_field`).
        torch_dtype: its weights' and activations' dtype (``"bfloat16"``, ...).

    Returns:
        The field as an :class:`wgfm.pretrained.AbstractPretrainedField` and its process.

    Raises:
        ValueError: the module cannot be imported, has no such function, or the function or the
            field it returns is not callable or not as described.
    """
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
        from .torch import module_field

        return module_field(field, kind, process, device=device, dtype=torch_dtype), process
    if isinstance(field, AbstractPretrainedField):
        return field, process
    if not callable(field):
        raise ValueError(f"`--model` {spec!r}: the field is not callable.")
    # The spec's documented optional attribute: the shape of one sample.
    shape = getattr(field, "sample_shape", None)
    shape = None if shape is None else tuple(int(v) for v in shape)
    fn: Field = field  # pyright: ignore[reportAssignmentType]  (checked callable above)
    return CallableField(fn, kind, process, sample_shape=shape), process


def _is_torch_module(obj) -> bool:
    torch = sys.modules.get("torch")  # loaded by the spec's module if it is one
    return torch is not None and isinstance(obj, torch.nn.Module)


def model_name(spec: str | Path) -> str:
    """``spec`` as the manifest records it: a callable spec as given, a directory resolved."""
    return str(spec) if is_callable_spec(spec) else str(Path(spec).resolve())


def model_label(spec: str | Path) -> str:
    """The model's name in rows and figures: its function's or directory's name.

    Args:
        spec: as :func:`load_model` takes it.

    Returns:
        The name, with characters other than letters, digits, ``.``, ``_`` and ``-`` as ``_``.
    """
    name = str(spec).rsplit(":", 1)[-1] if is_callable_spec(spec) else None
    return re.sub(r"[^\w.-]", "_", name or Path(spec).resolve().name) or "model"


def model_fingerprint(spec: str | Path) -> str:
    """sha256 over what makes two models the same.

    Args:
        spec: as :func:`load_model` takes it.

    Returns:
        The hex digest over, for a diffusers directory, the denoiser's config and weights (every
        shard and variant), the scheduler's config and ``model_index.json``; for
        ``package.module:function``, the spec and the source of its module.
    """
    h = hashlib.sha256()
    if is_callable_spec(spec):
        h.update(str(spec).encode())
        mod = importlib.import_module(str(spec).split(":")[0])
        src = inspect.getsourcefile(mod)
        files = [Path(src)] if src else []
    else:
        from .pipelines import read_pipeline

        root = Path(spec)
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
