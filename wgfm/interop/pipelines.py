"""Any diffusers pipeline or model directory as a ``wgfm`` field: ``model_index.json`` chooses.

:func:`read_pipeline` finds the denoiser (``unet/`` or ``transformer/``), its class, the
scheduler and the autoencoder of a pipeline directory, of one of its component directories
(``pipe/unet``: the sibling ``scheduler/`` and ``model_index.json`` one level up are used), or
of a bare model directory. :func:`load_pipeline` then builds the field:

* ``UNet2DModel`` on the flax port (:func:`wgfm.interop.diffusers.load_unet2d`) when the port
  supports its config, else on PyTorch;
* ``UNet2DConditionModel``, ``DiTTransformer2DModel``, ``Transformer2DModel`` (patched,
  ``ada_norm_zero``: DiT) and class-conditional ``UNet2DModel`` through
  :func:`wgfm.interop.torch_field` (values by callback, tangents by ``torch.func.jvp``; no VJP);
* anything else raises, naming the class.

Both kinds of field take one sample ``(H, W, C)`` and a wgfm time, and carry ``kind``,
``process``, ``schedule``, ``sample_shape``, ``notes`` (what was diagnosed: conditioning, a
learned-variance half, the latent space) and ``latent`` (the pipeline's autoencoder, or None).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import warnings
from pathlib import Path
from typing import Any

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from ..pretrained import AbstractPretrainedField, torch_seed
from ..processes import AbstractProcess
from .schedulers import SchedulerMap, scheduler_map

DENOISERS = ("unet", "transformer")
AUTOENCODERS = ("vae", "vqvae")
TORCH_CLASSES = (
    "UNet2DModel",
    "UNet2DConditionModel",
    "DiTTransformer2DModel",
    "Transformer2DModel",
)
AUTOENCODER_CLASSES = ("AutoencoderKL", "VQModel", "AutoencoderTiny", "ConsistencyDecoderVAE")
# Classes that load but define no continuous field, and why.
NOT_FIELDS = {
    "UVit2DModel": "a masked-token model over discrete VQ codes (aMUSEd): it predicts token "
    "logits, not eps, x0 or a velocity, so it has no score to diagnose",
}


@dataclasses.dataclass(frozen=True)
class Latent:
    """A latent pipeline's autoencoder: its class, directory and ``scaling_factor``
    (``shift_factor``): the denoiser's samples are ``(encode(x) - shift) * scaling``."""

    cls: str
    path: Path
    scaling_factor: float
    shift_factor: float = 0.0

    def describe(self) -> str:
        shift = f", shift_factor {self.shift_factor:g}" if self.shift_factor else ""
        return f"the latent space of the pipeline's {self.cls} (scaling_factor {self.scaling_factor:g}{shift})"


@dataclasses.dataclass(frozen=True)
class PipelineDir:
    """What :func:`read_pipeline` found."""

    denoiser: Path  # the denoiser's directory (config.json + weights)
    cls: str  # the denoiser's class
    config: dict  # its config.json
    scheduler_config: dict | None  # None: none found
    latent: Latent | None
    pipeline: str | None  # the pipeline class of model_index.json
    root: Path | None  # the pipeline directory


def read_pipeline(path: str | Path) -> PipelineDir:
    """The denoiser, scheduler and autoencoder of ``path`` (module docstring)."""
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"`path` {str(path)!r} is not a directory.")
    index_file = path / "model_index.json"
    root: Path | None = None
    if index_file.is_file():
        root = path
    elif (path / "config.json").is_file() and (
        (path.parent / "model_index.json").is_file()
        or (path.parent / "scheduler" / "scheduler_config.json").is_file()
    ):
        root = path.parent  # a component of a pipeline: keep its siblings
    index = (
        _read_json(root / "model_index.json")
        if root and (root / "model_index.json").is_file()
        else {}
    )
    if root is not None and root != path:
        denoiser = path
    elif root is not None:
        names = [n for n in DENOISERS if n in index or (root / n / "config.json").is_file()]
        if not names:
            listed = ", ".join(k for k in index if not k.startswith("_")) or "nothing"
            raise ValueError(
                f"`path` {str(path)!r}: the pipeline ({index.get('_class_name', '?')}) has no "
                f"unet/ or transformer/ denoiser (it lists {listed})."
            )
        denoiser = root / names[0]
    else:
        denoiser = next((path / n for n in DENOISERS if (path / n / "config.json").is_file()), path)
        root = path if denoiser != path else None
    if not (denoiser / "config.json").is_file():
        raise ValueError(f"`path` {str(path)!r} has no config.json (nor unet/config.json).")
    config = _read_json(denoiser / "config.json")
    cls = config.get("_class_name") or _index_class(index, denoiser.name) or "UNet2DModel"
    sched = None
    for f in (
        *((root / "scheduler" / "scheduler_config.json",) if root else ()),
        path / "scheduler_config.json",
    ):
        if f.is_file():
            sched = _read_json(f)
            break
    latent = None
    if root is not None:
        for name in AUTOENCODERS:
            d = root / name
            if (d / "config.json").is_file() or name in index:
                cfg = _read_json(d / "config.json") if (d / "config.json").is_file() else {}
                vae_cls = cfg.get("_class_name") or _index_class(index, name) or name
                latent = Latent(
                    vae_cls,
                    d,
                    float(cfg.get("scaling_factor") or 1.0),
                    float(cfg.get("shift_factor") or 0.0),
                )
                break
    return PipelineDir(denoiser, cls, config, sched, latent, index.get("_class_name"), root)


def _read_json(f: Path) -> dict:
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{str(f)!r} is not valid JSON ({e}).") from None


def _index_class(index: dict, name: str) -> str | None:
    entry = index.get(name)
    return entry[1] if isinstance(entry, list) and len(entry) == 2 else None


# ---------------------------------------------------------------------------------------------
# Fields


class TorchDiffusersField(AbstractPretrainedField):
    """A diffusers PyTorch denoiser as a wgfm field ``(x (H, W, C), t) -> kind``, through
    :func:`wgfm.interop.torch_field` (forward mode only: JVPs, no VJP). The network sees
    ``schedule.model_input(x, t)`` at ``schedule.timestep(t)`` with the fixed conditioning
    ``notes`` names; ``learned_variance``: only the first half of its output channels."""

    net: Any  # a wgfm.interop.TorchField over (x (N, H, W, C), timestep (N,))
    schedule: SchedulerMap
    sample_shape: tuple[int, int, int] = eqx.field(static=True)
    cls: str = eqx.field(static=True)
    notes: tuple[str, ...] = eqx.field(static=True, default=())
    latent: Latent | None = eqx.field(static=True, default=None)
    # The torch module and the arguments that rebuild the field around a re-initialised one.
    module: Any = eqx.field(static=True, default=None)
    conditioning: Any = eqx.field(static=True, default=None)

    @property
    def kind(self) -> str:
        return self.schedule.kind

    @property
    def process(self) -> AbstractProcess:
        return self.schedule.process

    @property
    def prediction_type(self) -> str:
        return self.schedule.prediction_type

    def describe_process(self) -> str:
        return self.schedule.describe()

    @property
    def backend(self) -> str:
        return "PyTorch (torch_field: forward-mode JVPs, no VJP)"

    @property
    def host_callback(self) -> bool:
        return True

    @property
    def untrained_description(self) -> str:
        return (
            "the same architecture freshly initialised by PyTorch (diffusers' from_config, "
            "seeded from the diagnosis key)"
        )

    def __call__(self, x: Float[Array, "h w c"], t: Float[ArrayLike, ""]) -> Array:
        t = jnp.asarray(t, x.dtype)
        s = self.schedule
        return s.value(x, self.net(s.model_input(x, t), s.timestep(t)), t)

    def untrained(
        self, *, key: PRNGKeyArray, sample_shape: tuple[int, ...] = ()
    ) -> TorchDiffusersField:
        """The same field around the same architecture freshly initialised by diffusers
        (``from_config`` under ``torch.manual_seed`` of a seed drawn from ``key``): the
        untrained control."""
        import torch

        torch.manual_seed(torch_seed(key))
        dtype = next(self.module.parameters()).dtype
        fresh = type(self.module).from_config(self.module.config).eval().to(dtype)
        return TorchDiffusersField(
            _torch_net(fresh, self.conditioning),
            self.schedule,
            self.sample_shape,
            self.cls,
            self.notes,
            self.latent,
            fresh,
            self.conditioning,
        )


@dataclasses.dataclass(frozen=True)
class Conditioning:
    """The fixed conditioning of a torch denoiser's calls (hashable: arrays as bytes)."""

    channels: int  # input channels: a learned-variance output keeps this many
    learned_variance: bool = False
    class_label: int | None = None
    encoder_hidden_states: tuple | None = None  # (bytes, shape, dtype str)
    guidance_scale: float = 0.0  # w of (1 + w) F(x, c) - w F(x, null)
    null_label: int | None = None

    def ehs(self) -> np.ndarray | None:
        if self.encoder_hidden_states is None:
            return None
        raw, shape, dtype = self.encoder_hidden_states
        return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _torch_net(module, cond: Conditioning):
    from .torch import contiguous_group_norms, torch_field

    contiguous_group_norms(module)
    ehs = cond.ehs()
    ehs_t = None
    if ehs is not None:
        import torch

        ehs_t = torch.from_numpy(np.array(ehs, copy=True))
    fn = functools.partial(_module_call, module, cond, ehs_t)
    return torch_field(fn)


def _module_call(module, cond: Conditioning, ehs, x, t):
    """``module`` on a batch ``x (N, H, W, C)``, timesteps ``t (N,)``: NHWC in and out."""
    import torch

    n = x.shape[0]
    kw = {}
    w = cond.guidance_scale
    if w:  # one call on [conditional; unconditional], as the diffusers pipelines batch it
        x, t = torch.cat([x, x]), torch.cat([t, t])
    if cond.class_label is not None:
        labels = torch.full((n,), cond.class_label, dtype=torch.long)
        if w:
            null = int(cond.null_label)  # pyright: ignore[reportArgumentType]  (load checks it)
            labels = torch.cat([labels, torch.full((n,), null, dtype=torch.long)])
        kw["class_labels"] = labels
    if ehs is not None:
        kw["encoder_hidden_states"] = ehs.to(x.dtype).expand(x.shape[0], *ehs.shape[1:])
    out = module(x.permute(0, 3, 1, 2), timestep=t, **kw).sample
    if cond.learned_variance:
        out = out[:, : cond.channels]
    if w:
        # Guidance of the raw prediction is guidance of the field: value() is affine in it.
        out = (1 + w) * out[:n] - w * out[n:]
    return out.permute(0, 2, 3, 1)


# ---------------------------------------------------------------------------------------------
# Loading


def load_pipeline(
    path: str | Path,
    *,
    dtype=jnp.float32,
    scheduler_config: dict | None = None,
    mu: float | None = None,
    backend: str = "auto",
    class_label: int | None = None,
    encoder_hidden_states: ArrayLike | None = None,
    variant: str | None = None,
    guidance_scale: float | None = None,
):
    """``(field, process)`` of a diffusers pipeline or model directory (module docstring);
    exported as :func:`wgfm.interop.load_diffusers`.

    The scheduler comes from ``scheduler_config`` if given, else the pipeline's ``scheduler/``
    (also for ``pipe/unet``); a bare model directory without either gets diffusers'
    ``DDPMScheduler`` defaults (linear betas 1e-4..0.02, 1000 steps, epsilon), with a warning.
    ``mu``: a dynamically shifted flow-matching scheduler's shift
    (:func:`~wgfm.interop.schedulers.scheduler_map`). Use ``wgfm.as_field(process, field,
    kind=field.kind, to="score" | "velocity")`` for the score or the WGF velocity.
    ``backend``: ``"auto"`` (the flax port where it applies, else PyTorch), ``"flax"`` or
    ``"torch"``. ``class_label``: the class of a class-conditional denoiser (default: its null
    class where it has one); ``encoder_hidden_states``: the ``(seq, dim)`` or ``(1, seq, dim)``
    text embedding of a ``UNet2DConditionModel``. ``variant``: weights such as
    ``diffusion_pytorch_model.fp16.safetensors`` (cast to ``dtype``). ``guidance_scale`` ``w``:
    the classifier-free-guided field ``(1 + w) F(x, c) - w F(x, null)`` of a class-conditional
    denoiser with a null class (diffusers' ``guidance_scale`` is ``1 + w``)."""
    from .diffusers import DiffusersField, has_learned_variance, hwc_shape, load_unet2d

    if backend not in ("auto", "flax", "torch"):
        raise ValueError(f"`backend` must be 'auto', 'flax' or 'torch', got {backend!r}.")
    pd = read_pipeline(path)
    cls = pd.cls
    if cls in NOT_FIELDS:
        raise ValueError(f"`path` {str(path)!r}: {cls} is {NOT_FIELDS[cls]}.")
    if cls in AUTOENCODER_CLASSES:
        raise ValueError(
            f"`path` {str(path)!r} holds a {cls}, an autoencoder, not a denoiser: give the "
            "pipeline directory (its unet/ or transformer/ is the field)."
        )
    if cls not in TORCH_CLASSES:
        raise ValueError(
            f"`path` {str(path)!r}: the denoiser class {cls!r} is not supported (neither the "
            f"flax port, UNet2DModel, nor the PyTorch path: {', '.join(TORCH_CLASSES)})."
        )
    if scheduler_config is None:
        scheduler_config = pd.scheduler_config
    if scheduler_config is None:
        warnings.warn(
            f"no scheduler in {str(path)!r}: using diffusers' DDPMScheduler defaults "
            "(linear betas 1e-4..0.02, 1000 steps, epsilon prediction).",
            stacklevel=2,
        )
        scheduler_config = {}
    schedule = scheduler_map(scheduler_config, mu=mu)
    learned = has_learned_variance(pd.config)
    notes = []
    if learned:
        c = pd.config["in_channels"]
        notes.append(
            f"learned variance: the network outputs {2 * c} channels (prediction and variance, "
            f"Improved DDPM / ADM); the field is the first {c}, the {schedule.prediction_type} "
            "prediction"
        )
    if pd.latent is not None:
        notes.append(f"diagnosed in {pd.latent.describe()}")
    port_problem = None
    conditional = cls == "UNet2DModel" and (
        pd.config.get("num_class_embeds") or pd.config.get("class_embed_type")
    )
    if cls == "UNet2DModel" and backend != "torch" and not conditional:
        from ..models import unet2d_from_config

        try:
            unet2d_from_config(pd.config)
        except ValueError as e:
            port_problem = str(e)
        if port_problem is None or backend == "flax":
            if class_label is not None or encoder_hidden_states is not None or guidance_scale:
                raise ValueError(f"{cls} at {str(pd.denoiser)!r} is unconditional.")
            model, params, _ = load_unet2d(pd.denoiser, dtype=dtype, variant=variant)
            field = DiffusersField(model, params, schedule, learned, tuple(notes), pd.latent)
            return field, schedule.process
    elif backend == "flax":
        raise ValueError(
            f"the flax port is UNet2DModel only; {cls} needs backend 'torch' or 'auto'."
        )
    module = _load_module(pd, variant, dtype)
    cond = _conditioning(module, pd, learned, class_label, encoder_hidden_states, notes)
    if guidance_scale:
        if cond.class_label is None or cond.null_label in (None, cond.class_label):
            raise ValueError(
                f"`guidance_scale` needs a class-conditional denoiser with a null class and a "
                f"`class_label` other than it ({cls} at {str(pd.denoiser)!r})."
            )
        cond = dataclasses.replace(cond, guidance_scale=float(guidance_scale))
        notes.append(
            f"the classifier-free-guided field (1 + w) F(x, c) - w F(x, null) with w = "
            f"{float(guidance_scale):g}, c = {cond.class_label}, null = {cond.null_label}: not "
            "the score of a noised distribution, even for exact F"
        )
    if port_problem:
        notes.append(f"PyTorch, as the flax port does not support this config ({port_problem})")
    c = module.config
    shape = hwc_shape(c.get("sample_size"), c.get("in_channels"), cls)
    field = TorchDiffusersField(
        _torch_net(module, cond), schedule, shape, cls, tuple(notes), pd.latent, module, cond
    )
    return field, schedule.process


def _load_module(pd: PipelineDir, variant: str | None, dtype):
    try:
        import diffusers
        import torch
    except ImportError:
        raise ValueError(
            f"{pd.cls} runs on PyTorch: install torch and diffusers (the flax port is "
            "UNet2DModel only)."
        ) from None
    tdtype = {jnp.dtype(jnp.float32): torch.float32, jnp.dtype(jnp.float64): torch.float64}.get(
        jnp.dtype(dtype)
    )
    if tdtype is None:
        raise ValueError(f"`dtype` must be float32 or float64, got {dtype!r}.")
    cls = getattr(diffusers, pd.cls)
    try:
        module = cls.from_pretrained(str(pd.denoiser), variant=variant, torch_dtype=tdtype)
    except OSError as e:
        raise ValueError(f"{pd.cls} at {str(pd.denoiser)!r} could not be loaded: {e}") from None
    return module.eval()


def _conditioning(module, pd, learned, class_label, ehs, notes) -> Conditioning:
    cls = pd.cls
    c = int(module.config["in_channels"])
    ehs_key = None
    if cls == "UNet2DConditionModel":
        if ehs is None:
            raise ValueError(
                f"{cls} is conditioned on a text embedding: give `encoder_hidden_states` "
                f"(--prompt-embedding FILE.npy) of shape (seq, {module.config['cross_attention_dim']})."
            )
        e = np.asarray(ehs, np.float32)
        e = e[None] if e.ndim == 2 else e
        if e.ndim != 3 or e.shape[0] != 1:
            raise ValueError(
                f"`encoder_hidden_states` must have shape (seq, dim) or (1, seq, dim), got {e.shape}."
            )
        ehs_key = (e.tobytes(), e.shape, str(e.dtype))
        notes.append(f"conditioned on a given text embedding of shape {e.shape[1:]}")
    elif ehs is not None:
        raise ValueError(f"{cls} takes no text embedding (`encoder_hidden_states`).")
    label_emb = _label_embedding(module)
    null = None
    if label_emb is not None:
        n, null = label_emb
        if class_label is None:
            if null is None:
                raise ValueError(
                    f"{cls} is class-conditional ({n} classes, no null class): give `class_label`."
                )
            class_label = null
            notes.append(f"the unconditional field (the null class label {null})")
        else:
            if not 0 <= int(class_label) < n:
                raise ValueError(f"`class_label` must be in [0, {n}), got {class_label}.")
            notes.append(f"conditioned on class label {int(class_label)}")
    elif class_label is not None:
        raise ValueError(f"{cls} is not class-conditional: `class_label` does not apply.")
    label = None if class_label is None else int(class_label)
    return Conditioning(c, learned, label, ehs_key, null_label=null)


def _label_embedding(module) -> tuple[int, int | None] | None:
    """``(number of classes, null label or None)`` of a class-conditional module, else None."""
    import torch
    from diffusers.models.embeddings import LabelEmbedding

    for m in module.modules():
        if isinstance(m, LabelEmbedding):
            n = int(m.num_classes)
            return n, (n if m.embedding_table.num_embeddings > n else None)
    emb = getattr(module, "class_embedding", None)
    if isinstance(emb, torch.nn.Embedding):
        return int(emb.num_embeddings), None
    return None


# ---------------------------------------------------------------------------------------------
# Latents


def pixel_shape(latent: Latent, shape) -> tuple[int, int, int]:
    """The images a latent pipeline's autoencoder encodes to latents of ``shape``."""
    cfg = json.loads((latent.path / "config.json").read_text())
    f = 2 ** (len(cfg.get("block_out_channels", [0])) - 1)
    return shape[0] * f, shape[1] * f, int(cfg.get("in_channels", 3))


def encode_latents(latent: Latent, images: np.ndarray, batch: int = 16) -> np.ndarray:
    """``(encode(x) - shift_factor) * scaling_factor`` of ``images (N, H, W, C)`` in [-1, 1]
    by the pipeline's autoencoder (PyTorch, float32): the posterior mean of an
    ``AutoencoderKL``, the unquantised latents of a ``VQModel``."""
    try:
        import diffusers
        import torch
    except ImportError:
        raise ValueError(
            f"encoding images into the latent space of the pipeline's {latent.cls} needs torch "
            "and diffusers."
        ) from None
    vae = getattr(diffusers, latent.cls).from_pretrained(str(latent.path)).eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = torch.from_numpy(np.ascontiguousarray(images[i : i + batch].transpose(0, 3, 1, 2)))
            enc = vae.encode(x.float())
            z = enc.latent_dist.mode() if hasattr(enc, "latent_dist") else enc.latents
            out.append(((z - latent.shift_factor) * latent.scaling_factor).numpy())
    return np.concatenate(out).transpose(0, 2, 3, 1).astype(np.float32)


def decode_latents(latent: Latent, z: np.ndarray, batch: int = 16) -> np.ndarray:
    """Images ``(N, H, W, C)`` in [-1, 1] of latents ``z (N, h, w, c)`` in the denoiser's
    space: the autoencoder's ``decode(z / scaling_factor + shift_factor)``, the inverse of
    :func:`encode_latents` (for figures: what the diagnosed points look like)."""
    import diffusers
    import torch

    vae = getattr(diffusers, latent.cls).from_pretrained(str(latent.path)).eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(z), batch):
            zz = torch.from_numpy(np.ascontiguousarray(z[i : i + batch].transpose(0, 3, 1, 2)))
            zz = zz.float() / latent.scaling_factor + latent.shift_factor
            out.append(vae.decode(zz).sample.clamp(-1, 1).numpy())
    return np.concatenate(out).transpose(0, 2, 3, 1).astype(np.float32)
