"""The options of ``wgfm diagnose``, written once: :class:`DiagnoseConfig`.

The CLI hands this dataclass to tyro, which reads each field's docstring as its help; a new
option is one field here (with its help) and its use where it applies.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Literal

import tyro

from ..interop.denoisers import supported_line
from .sizes import PRESETS, DiagnoseSizes
from .spaces import results_json

# The families from their registry (wgfm.interop.denoisers), not a list written here.
MODEL_HELP = (
    "a diffusers pipeline or model directory: model_index.json chooses the denoiser, read as "
    f"one of the families {supported_line()}. An unconditional UNet2DModel runs on the flax "
    "port, every other through PyTorch. Or package.module:function returning (field, process) "
    "or (field, process, kind)."
)


# The options of load_model that DiagnoseConfig holds under the same names.
_LOAD = (
    "class_label",
    "prompt_embedding",
    "variant",
    "mu",
    "guidance_scale",
    "condition",
    "negative_condition",
    "prompt",
    "negative_prompt",
    "sample_size",
)


@dataclasses.dataclass(frozen=True)
class DiagnoseConfig:
    """Diagnose a pretrained diffusers model: the paper's claims 1 (Jacobian asymmetry at every
    noise level) and 2 (circulation around its three loop families and a circle) beside an
    untrained network of the same architecture and the exact score of a Gaussian fitted to the
    clean images (REPORT.md, results.json and figures/ under --out). Rerunning resumes --out."""

    model: Annotated[Path | None, tyro.conf.arg(help=MODEL_HELP)] = None
    data: Path | None = None
    """CIFAR-10 python batches or MNIST IDX files, noised as the clean images."""
    images: Path | None = None
    """a folder of PNG/JPEG images (resized to the model's sample_size) instead."""
    quick: bool = False
    """minutes on a CPU for a ddpm-cifar10-32-sized model (few levels and images): --size
    quick."""
    size: Literal["quick", "full", "large"] | None = None
    """the sizes: quick (as --quick), full (the authors' protocol, 128 images per level for
    claim 1 and 256 for claim 2 at 100 levels; the default) or large (256 for both); the
    report estimates the time and memory of each for the model given."""
    out: Path = Path("results/diagnose")
    """output directory: new, empty, or an earlier run of the same model and settings."""
    seed: int = 0
    """random seed of noise, loops, probes and the untrained network."""
    compile_cache: bool = True
    """keep compiled programs in JAX's persistent cache."""
    class_label: int | None = None
    """the class of a class-conditional denoiser (default: its null class)."""
    prompt_embedding: Path | None = None
    """a .npy text embedding (seq, dim) for a UNet2DConditionModel."""
    condition: Path | None = None
    """a .npz of the denoiser's conditions, one array per forward keyword, one sample each
    without a batch axis (encoder_hidden_states, text_embeds, pooled_projections, guidance ...;
    a missing or misshapen one is named with every name and shape the family takes)."""
    negative_condition: Path | None = None
    """a .npz of the null conditions of a text model's guidance (with --guidance-scale)."""
    prompt: str | None = None
    """a prompt, encoded by the pipeline's own tokenizers and text encoders (wgfm[text])."""
    negative_prompt: str | None = None
    """the negative prompt of a text model's guidance (default: the pipeline's null one)."""
    sample_size: int | None = None
    """the latent height and width (default: the config's sample_size; FLUX.1: 128)."""
    variant: str | None = None
    """weights variant, e.g. fp16 (diffusion_pytorch_model.fp16.safetensors)."""
    mu: float | None = None
    """the shift of a flow-matching scheduler with use_dynamic_shifting."""
    guidance_scale: float | None = None
    """w, for the classifier-free-guided field: class-conditional models (1 + w) F(x, c) -
    w F(x, null) with the null class (needs --class-label); text models the pipeline's own
    F(x, null) + w (F(x, c) - F(x, null)) (the null from --negative-prompt,
    --negative-condition or the pipeline's default with --prompt)."""
    jacobians: Literal["auto", "exact", "probes"] = "auto"
    """claim 1's Jacobians: auto (exact D x D ones when their cost, from a measured JVP time,
    fits the mode's budget: 60 s quick, 4 h full; else probe estimates with standard errors),
    exact, or probes."""
    rel_se: float = 0.1
    """claim 1's probe path: draw probes in rounds until lambda's standard error is at most
    this fraction of it, or the mode's probe budget is spent (64 quick, 256 full); 0: one
    round, the mode's fixed probe count (4 quick, 32 full)."""
    devices: int | None = None
    """split the images over this many devices (a jax.sharding mesh; on a CPU host simulated
    devices, set before JAX starts); a PyTorch-path model runs on one."""
    pixel_run: Path | None = None
    """for a latent pipeline, the --out of a pixel-space `wgfm diagnose` run on the same
    images: claim 1 compares the two spaces level by level."""
    torch_device: str | None = None
    """where a PyTorch model runs: cuda, mps or cpu (default: the accelerator when one is
    present). JAX's GPU preallocation is off, so both share one GPU."""
    dtype: str | None = None
    """a PyTorch model's weights and activations: bfloat16, float16 or float32 (default: as
    loaded); the estimators' arithmetic stays float32."""
    shard: str | None = None
    """I/N: measure only this process's share of the noise levels (every N-th from I), as
    process I of N writing into the same --out; the last to finish writes the report.
    Default: from jax.distributed, torchrun (RANK, WORLD_SIZE) or Slurm (SLURM_ARRAY_TASK_ID,
    SLURM_PROCID, SLURM_NTASKS) when they launched several processes, else the whole run."""
    merge: Path | None = None
    """OUT: only write REPORT.md and results.json of a run whose processes have all
    finished (it names those missing)."""

    def check(self) -> None:
        """Raise a ``ValueError`` naming the first option that cannot work."""
        from ..interop.load import is_callable_spec  # loads flax: not at CLI start

        if self.merge is not None:
            if not Path(self.merge).is_dir():
                raise ValueError(f"`--merge` {str(self.merge)!r} is not a directory.")
            return
        if self.model is None:
            raise ValueError("`--model` is required (or `--merge OUT` to assemble a run).")
        if self.shard is not None:
            from .shards import parse_shard

            parse_shard(self.shard)
        if not Path(self.model).is_dir() and not is_callable_spec(self.model):
            raise ValueError(
                f"`--model` {str(self.model)!r} is neither a directory nor package.module:function."
            )
        for name in ("prompt_embedding", "condition", "negative_condition"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                flag = "--" + name.replace("_", "-")
                raise ValueError(f"`{flag}` {str(path)!r} is not a file.")
        if self.data is not None and self.images is not None:
            raise ValueError("`--data` and `--images` are alternatives: give one of them.")
        for name in ("data", "images"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_dir():
                raise ValueError(f"`--{name}` {str(path)!r} is not a directory.")
        if self.pixel_run is not None and not results_json(self.pixel_run).is_file():
            raise ValueError(
                f"`--pixel-run` {str(self.pixel_run)!r} is neither a `wgfm diagnose` output "
                "directory nor its results.json."
            )
        if not (self.rel_se >= 0 and self.rel_se < float("inf")):
            raise ValueError(f"`--rel-se` must be a number >= 0, got {self.rel_se!r}.")
        if self.torch_device not in (None, "cuda", "mps", "cpu"):
            raise ValueError(
                f"`--torch-device` must be cuda, mps or cpu, got {self.torch_device!r}."
            )
        if self.dtype not in (None, "bfloat16", "float16", "float32"):
            raise ValueError(f"`--dtype` must be bfloat16, float16 or float32, got {self.dtype!r}.")
        if self.quick and self.size not in (None, "quick"):
            raise ValueError(f"`--quick` and `--size {self.size}` disagree: give one of them.")
        if Path(self.out).exists() and not Path(self.out).is_dir():
            raise ValueError(f"`--out` {str(self.out)!r} exists and is not a directory.")

    def load(self):
        """``(field, process)`` of ``model`` with the options that shape it
        (:func:`wgfm.interop.load_model`).

        Returns:
            The field (an :class:`wgfm.pretrained.AbstractPretrainedField`) and its process.
        """
        from ..interop.load import load_model

        field, process = load_model(
            self.model,  # pyright: ignore[reportArgumentType]
            **{k: getattr(self, k) for k in _LOAD},
            device=self.torch_device,
            torch_dtype=self.dtype,
        )
        if self.pixel_run is not None and field.latent is None:
            raise ValueError(
                f"`--pixel-run` compares a latent pipeline with a pixel-space run, but "
                f"{str(self.model)!r} is not a latent pipeline."
            )
        return field, process

    @property
    def preset(self) -> str:
        """The name of the sizes preset (:data:`wgfm.diagnosis.sizes.PRESETS`)."""
        return "quick" if self.quick else self.size or "full"

    @property
    def sizes(self) -> DiagnoseSizes:
        """The preset's sizes with this run's exact-or-probes choice and target s.e."""
        return dataclasses.replace(
            PRESETS[self.preset], jacobians=self.jacobians, rel_se=self.rel_se or None
        )
