"""Load a ``diffusers`` ``UNet2DModel`` directory (and its scheduler) without PyTorch.

``load_diffusers(dir) -> (field, process)`` takes any pipeline or model directory
(:mod:`wgfm.interop.pipelines` chooses the denoiser by class); a ``UNet2DModel`` lands here: a
model directory written by ``UNet2DModel.save_pretrained`` (``config.json`` +
``diffusion_pytorch_model.safetensors``, sharded or a ``variant``) or a pipeline directory with
``unet/`` and ``scheduler/``. Weights are read with ``safetensors``' NumPy reader and mapped
one-to-one onto :class:`wgfm.models.UNet2D`'s flax parameters; the scheduler becomes a process
and a calling convention (:func:`wgfm.interop.schedulers.scheduler_map`).

Time convention of the DDPM family: diffusers' training step ``k`` (``0 .. K-1``) is ``wgfm``
time ``t = (k + 1)/K``, so the field calls the network at timestep ``t K - 1`` and
``process.alpha(t)^2`` equals the scheduler's ``alphas_cumprod[k]`` at every step."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from ..models import Model, UNet2D, unet2d_from_config
from .scheduled import AbstractScheduledField
from .schedulers import SchedulerMap

WEIGHTS = "diffusion_pytorch_model.safetensors"
WEIGHTS_BIN = "diffusion_pytorch_model.bin"
# google/ddpm-cifar10-32's published unet/config.json (the paper's data set; 35.7 M parameters):
# with random weights, the model the tests, the benchmark and `wgfm diagnose --quick` are sized for.
DDPM_CIFAR10_32: dict = {
    "act_fn": "silu", "attention_head_dim": None, "block_out_channels": [128, 256, 256, 256],
    "center_input_sample": False, "down_block_types": ["DownBlock2D", "AttnDownBlock2D",
    "DownBlock2D", "DownBlock2D"], "downsample_padding": 0, "flip_sin_to_cos": False,
    "freq_shift": 1, "in_channels": 3, "layers_per_block": 2, "mid_block_scale_factor": 1,
    "norm_eps": 1e-06, "norm_num_groups": 32, "out_channels": 3, "sample_size": 32,
    "time_embedding_type": "positional", "up_block_types": ["UpBlock2D", "UpBlock2D",
    "AttnUpBlock2D", "UpBlock2D"],
}  # fmt: skip

# Pre-0.14 attention names, renamed by diffusers on load (`_fix_state_dict_keys_on_load`).
_LEGACY_ATTN = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out_0"}


class DiffusersField(AbstractScheduledField):
    """A diffusers ``UNet2DModel`` (flax port) as a wgfm field ``(x (H, W, C), t) -> kind``.

    The scheduler's :class:`~wgfm.interop.schedulers.SchedulerMap` says how: the network sees
    ``schedule.model_input(x, t)`` at timestep ``schedule.timestep(t)`` and its output becomes
    a value of ``kind`` (for DDPM schedulers: timestep ``t K - 1``, v-prediction returned as
    ``eps = sigma_t x + alpha_t v``). ``learned_variance``: the network also predicts a
    variance (``out_channels = 2 in_channels``, Improved DDPM / ADM); only the first half of
    its channels, the eps (or x0 / v) prediction, is returned."""

    model: Model
    params: dict
    schedule: SchedulerMap
    learned_variance: bool = eqx.field(static=True, default=False)
    notes: tuple[str, ...] = eqx.field(static=True, default=())
    latent: Any = eqx.field(static=True, default=None)  # a pipelines.Latent, or None
    cls: str = eqx.field(static=True, default="UNet2DModel")
    backend: str = eqx.field(static=True, default="JAX (the flax port of UNet2DModel)")
    conditioning: Any = eqx.field(static=True, default=None)  # the port is unconditional
    host_callback: bool = eqx.field(static=True, default=False)
    untrained_description: str = eqx.field(
        static=True, default="the same architecture with freshly drawn parameters"
    )

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """``(H, W, C)`` of one sample, from the config's ``sample_size`` and ``in_channels``."""
        return hwc_shape(self.model.net.sample_size, self.model.net.in_channels, "UNet2DModel")

    def __call__(self, x: Float[Array, "h w c"], t: Float[ArrayLike, ""]) -> Array:
        t = jnp.asarray(t, x.dtype)
        s = self.schedule
        out = self.model.apply(self.params, s.model_input(x, t), s.timestep(t))
        if self.learned_variance:
            out = out[..., : x.shape[-1]]
        return s.value(x, out, t)

    def untrained(self, *, key: PRNGKeyArray, sample_shape: tuple[int, ...]) -> DiffusersField:
        """The same U-Net with :func:`~wgfm.diagnostics.controls.untrained_params`: the untrained
        control.

        Args:
            key: the draw.
            sample_shape: unused (the field's own :attr:`sample_shape` is used).

        Returns:
            A :class:`DiffusersField` with fresh parameters.
        """
        from ..diagnostics.controls import untrained_field

        return untrained_field(self, key, self.sample_shape)


def load_unet2d(
    path: str | Path, *, dtype=jnp.float32, variant: str | None = None
) -> tuple[Model, dict, dict]:
    """A diffusers ``UNet2DModel`` directory on the flax port.

    ``model.apply(params, x, timestep)`` takes diffusers timesteps (not ``wgfm`` times) and
    predicts whatever the checkpoint was trained for (``model.kind`` is only a label here).

    Args:
        path: the model directory (``config.json`` and weights), or a pipeline directory holding
            ``unet/``.
        dtype: the parameters' dtype.
        variant: weights such as ``diffusion_pytorch_model.<variant>.safetensors`` (e.g.
            ``"fp16"``); one ``.safetensors`` file or shards listed by
            ``.safetensors.index.json``.

    Returns:
        ``(model, params, config)``: the flax port (:class:`wgfm.models.Model`), its parameters
        in ``dtype`` and the raw config dict.

    Raises:
        ValueError: no weights, a config the port does not support, or weights that do not fit
            it (:func:`convert_state_dict`).
    """
    unet_dir = _unet_dir(Path(path))
    config = json.loads((unet_dir / "config.json").read_text())
    net = unet2d_from_config(config)
    state = _read_weights(unet_dir, variant)
    params = convert_state_dict(state, net, dtype=dtype)
    return Model(net, "eps"), params, config


def convert_state_dict(state: dict[str, np.ndarray], net: UNet2D, *, dtype=jnp.float32) -> dict:
    """A PyTorch state dict mapped onto ``net``'s flax parameters: conv kernels from OIHW to
    HWIO, linear weights from ``(out, in)`` to ``(in, out)``.

    Args:
        state: ``{name: array}`` of the PyTorch module (NumPy arrays).
        net: the flax ``UNet2D`` the tensors are for.
        dtype: the parameters' dtype.

    Returns:
        The flax parameter tree (nested dicts of arrays in ``dtype``).

    Raises:
        ValueError: naming every tensor whose shape does not fit, every tensor the port does not
            use and every parameter no tensor provides.
    """
    expected = _expected_params(net)
    flat, problems, used = {}, [], set()
    for key, value in state.items():
        name = _flax_name(key)
        for leaf in ("kernel", "scale", "weight") if key.endswith(".weight") else ("bias",):
            if (name, leaf) in expected:
                break
        else:
            continue
        path, want = expected[(name, leaf)]
        arr = np.asarray(value)
        got = arr.transpose(2, 3, 1, 0) if arr.ndim == 4 else arr.T if arr.ndim == 2 else arr
        if got.shape != want:
            problems.append(
                f"tensor `{key}` has shape {arr.shape} (-> {got.shape} in flax layout), but "
                f"`{'/'.join(path)}` expects {want}"
            )
        used.add(key)
        flat[path] = jnp.asarray(got, dtype)
    unused = sorted(set(state) - used)
    missing = sorted("/".join(p) for p, _ in expected.values() if p not in flat)
    if unused:
        problems.append(f"{len(unused)} tensor(s) not used by the port: {_head(unused)}")
    if missing:
        problems.append(f"{len(missing)} parameter(s) with no tensor: {_head(missing)}")
    if problems:
        raise ValueError(
            "checkpoint does not fit the UNet2DModel port:\n  " + "\n  ".join(problems)
        )
    tree: dict = {}
    for path, arr in flat.items():
        node = tree
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = arr
    return tree


# ---------------------------------------------------------------------------------------------
# Files


def hwc_shape(size, channels, what: str) -> tuple[int, int, int]:
    if size is None:
        raise ValueError(f"the {what} config has no `sample_size`: the image size is unknown.")
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    return int(h), int(w), int(channels)


def has_learned_variance(config: dict) -> bool:
    """Whether the network's output carries a variance half (``out_channels = 2 in_channels``)."""
    c_in = config.get("in_channels")
    c_out = config.get("out_channels") or c_in
    return c_in is not None and c_out == 2 * c_in


def _unet_dir(path: Path) -> Path:
    for d in (path / "unet", path):
        if (d / "config.json").is_file():
            return d
    raise ValueError(f"`path` {str(path)!r} has no config.json (nor unet/config.json).")


def _read_weights(unet_dir: Path, variant: str | None = None) -> dict[str, np.ndarray]:
    """The state dict of ``unet_dir``: a single file, or shards from its index (``variant``:
    ``name.<variant>.ext``, as diffusers names them)."""
    st, bin_ = (unet_dir / _variant(f, variant) for f in (WEIGHTS, WEIGHTS_BIN))
    index = unet_dir / _variant(WEIGHTS + ".index.json", variant)
    if st.is_file():
        from safetensors.numpy import load_file

        return load_file(str(st))
    if index.is_file():
        from safetensors.numpy import load_file

        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state: dict[str, np.ndarray] = {}
        for name in shards:
            if not (unet_dir / name).is_file():
                raise ValueError(f"{str(index)!r} lists the shard {name!r}, which is missing.")
            state.update(load_file(str(unet_dir / name)))
        return state
    if bin_.is_file():
        try:
            import torch
        except ImportError:
            raise ValueError(
                f"{str(bin_)!r} is a PyTorch pickle and torch is not installed; convert it to "
                f"{WEIGHTS} or install torch."
            ) from None
        sd = torch.load(str(bin_), map_location="cpu", weights_only=True)
        return {k: v.float().numpy() for k, v in sd.items()}
    others = sorted(p.name for p in unet_dir.glob("diffusion_pytorch_model*"))
    hint = f" (it holds {', '.join(others)}: pass `variant`?)" if others else ""
    raise ValueError(f"`path` {str(unet_dir)!r} has no {st.name} (nor {bin_.name}){hint}.")


def _variant(name: str, variant: str | None) -> str:
    """``diffusion_pytorch_model.safetensors`` -> ``diffusion_pytorch_model.fp16.safetensors``."""
    if not variant:
        return name
    stem, _, ext = name.partition(".")
    return f"{stem}.{variant}.{ext}"


def _expected_params(net: UNet2D) -> dict[tuple[str, str], tuple[tuple[str, ...], tuple]]:
    """``(module name, leaf) -> (flax path, shape)`` from an abstract init (no FLOPs)."""
    factor = 2 ** (len(net.block_out_channels) - 1)
    x = jax.ShapeDtypeStruct((1, 4 * factor, 4 * factor, net.in_channels), jnp.float32)
    t = jax.ShapeDtypeStruct((1,), jnp.float32)
    shapes = jax.eval_shape(net.init, jax.random.key(0), x, t)
    out = {}
    for kp, leaf in jax.tree_util.tree_leaves_with_path(shapes):
        path = tuple(str(k.key) for k in kp)  # pyright: ignore[reportAttributeAccessIssue]
        out[("_".join(path[1:-1]), path[-1])] = (path, tuple(leaf.shape))
    return out


def _flax_name(key: str) -> str:
    """``down_blocks.0.attentions.1.query.weight`` -> ``down_blocks_0_attentions_1_to_q``."""
    parts = key.split(".")[:-1]
    if "attentions" in parts[:-1]:
        parts[-1] = _LEGACY_ATTN.get(parts[-1], parts[-1])
    return "_".join(parts)


def _head(names: list[str], n: int = 8) -> str:
    return ", ".join(names[:n]) + (f", ... ({len(names) - n} more)" if len(names) > n else "")
