"""The contract of a denoiser family: how a diffusers PyTorch denoiser is called as a wgfm field.

One :class:`AbstractDenoiser` per family (one module each in :mod:`wgfm.interop.denoisers`)
declares which classes and configs it accepts, how the state ``(H, W, C)`` becomes the network's
input (patching, packing, position ids), how the scheduler's timestep is passed, which
conditioning keywords the forward call needs (:class:`Condition`, per sample, named by the
forward's own keywords) and what its output means. :mod:`wgfm.interop.pipelines` reads nothing
else of a family, and the CLI help, the unsupported-class error and the table in
``docs/diagnose_your_model.md`` are written from the registry of these declarations.
"""

# No `from __future__ import annotations`: equinox reads AbstractClassVar annotations unstringified.

import dataclasses
import tomllib
from importlib import resources
from typing import TYPE_CHECKING, Any, ClassVar

import equinox as eqx
import numpy as np


@dataclasses.dataclass(frozen=True)
class Condition:
    """One conditioning keyword of a denoiser's forward call, for one sample (no batch axis).

    ``added``: passed inside ``added_cond_kwargs`` (UNet2DConditionModel, PixArt);
    ``integer``: an integer array (class labels); ``default``: the value the pipeline itself
    builds when none is given (flattened, as a tuple: the conditioning is hashed), or None when
    the condition is required; ``negative``: replaced by the negative (null) condition for
    classifier-free guidance; ``mask``: an attention mask over a free axis of another condition
    (a caption's tokens), which may be left out: every token is then attended, as the forward
    call's own default."""

    name: str
    shape: tuple[int | str, ...]  # a str: a free axis (a text's sequence length), named
    doc: str
    added: bool = False
    integer: bool = False
    default: tuple | None = None
    negative: bool = True
    limit: int | None = None  # integer values must lie in [0, limit)
    mask: bool = False

    def describe(self) -> str:
        return (
            f"{self.name} ({', '.join(str(n) for n in self.shape)}{',' * (len(self.shape) == 1)})"
        )

    def check(self, value: np.ndarray) -> np.ndarray:
        """``value`` as this condition's array, or a ValueError naming it and the shape."""
        a = np.asarray(value)
        if a.dtype.kind not in "iuf" or (self.integer and a.dtype.kind == "f"):
            kind = "integer" if self.integer else "numeric"
            raise ValueError(
                f"condition `{self.name}` must be a {kind} array, got dtype {a.dtype}."
            )
        fits = a.ndim == len(self.shape) and all(
            isinstance(n, str) or n == m for n, m in zip(self.shape, a.shape, strict=True)
        )
        if not fits:
            raise ValueError(
                f"condition `{self.name}` must have shape {self.describe().split(' ', 1)[1]} "
                f"(one sample, no batch axis), got {a.shape}."
            )
        if self.limit is not None and not ((a >= 0) & (a < self.limit)).all():
            raise ValueError(f"condition `{self.name}` must be in [0, {self.limit}), got {a}.")
        return a.astype(np.int64 if self.integer else np.float32)

    def default_array(self) -> np.ndarray | None:
        if self.default is None:
            return None
        dtype = np.int64 if self.integer else np.float32
        shape = tuple(int(n) for n in self.shape)  # defaults have no free axis
        return np.asarray(self.default, dtype).reshape(shape)


def _descriptions() -> dict[str, dict]:
    text = resources.files("wgfm.interop.denoisers").joinpath("families.toml").read_text()
    return tomllib.loads(text)


# Each family in words, by name (families.toml: its header says the fields).
DESCRIPTIONS = _descriptions()


class AbstractDenoiser(eqx.Module):
    """A denoiser family (module docstring). Its ``name`` keys its description in
    ``families.toml`` (:attr:`about`: classes, examples, state, timestep, output, guidance,
    needs), from which the registry reads its classes and guidance convention."""

    if TYPE_CHECKING:
        # Type checkers read eqx.AbstractClassVar annotations as constructor fields.
        name: ClassVar[str]
    else:
        name: eqx.AbstractClassVar[str]
    # The condition names the pipeline's own encode_prompt gives (empty: no prompt encoding).
    prompt_names: ClassVar[tuple[str, ...]] = ()

    @property
    def about(self) -> dict:
        """This family's section of ``families.toml``."""
        return DESCRIPTIONS[self.name]

    @property
    def classes(self) -> tuple[str, ...]:
        """The diffusers denoiser classes this family may read."""
        return tuple(self.about["classes"])

    @property
    def guidance(self) -> str:
        """``"class"``: ``(1 + w) F(c) - w F(null)``; ``"text"``: ``F(null) + w (F(c) -
        F(null))``, the pipeline's own convention; ``"none"``: no classifier-free guidance."""
        return self.about["guidance"]

    def reading(self) -> str:
        """How this family reads the network, in words (a note of the field: the report)."""
        a = self.about
        return f"read as {self.name}: input {a['state']}; timestep {a['timestep']}; output {a['output']}"

    def accepts(self, config: dict) -> bool:
        """Whether this family reads a denoiser of one of :attr:`classes` with ``config``."""
        return True

    def refusal(self, config: dict) -> str | None:
        """Why a config this family accepts cannot be read as a field, or None."""
        return None

    def state_channels(self, config: dict) -> int:
        """The channels ``C`` of the state ``(H, W, C)`` (packing may change the network's)."""
        return int(config["in_channels"])

    def output_channels(self, config: dict) -> int:
        """The channels the network outputs, in the state's layout."""
        return int(config.get("out_channels") or config["in_channels"])

    def default_size(self, config: dict) -> Any:
        """The latent height and width when the caller gives none: the config's sample_size."""
        return config.get("sample_size")

    def patch_size(self, config: dict) -> int:
        """Side of the patches the network sees as tokens (its image sequence length)."""
        return int(config.get("patch_size") or 1)

    def image_seq_len(self, config: dict, shape: tuple[int, int, int]) -> int:
        """The number of image tokens at state ``shape``: what a flow pipeline's ``mu`` reads."""
        p = self.patch_size(config)
        return (shape[0] // p) * (shape[1] // p)

    def conditions(
        self, config: dict, module: Any, shape: tuple[int, int, int], pixels: tuple[int, int]
    ) -> "tuple[Condition, ...]":
        """The conditioning keywords, per sample, for state ``shape`` and images of ``pixels``
        (height, width): the sizes some families pass as added conditions."""
        return ()

    def encode_prompt(
        self, pipe: Any, prompt: str, negative: str | None, guided: bool
    ) -> "tuple[tuple, tuple | None]":
        """The pipeline's own ``encode_prompt`` outputs for the condition and, with ``guided``,
        the negative one, as batched tensors in the order of :attr:`prompt_names`."""
        raise NotImplementedError(f"{self.name}: no prompt encoding.")

    def prompt_conditions(
        self, pipe: Any, prompt: str, negative: str | None, guided: bool
    ) -> "tuple[dict, dict | None]":
        """``(condition, negative condition or None)``, named (:mod:`wgfm.interop.prompts`)."""
        cond, neg = self.encode_prompt(pipe, prompt, negative, guided)
        named = lambda v: dict(zip(self.prompt_names, v, strict=True))  # noqa: E731
        return named(cond), (named(neg) if guided and neg is not None else None)

    def forward(self, module: Any, x: Any, timestep: Any, kw: dict, added: dict) -> Any:
        """The network's raw output ``(N, C_out, H, W)`` at ``x (N, C, H, W)`` and the
        scheduler's ``timestep (N,)``, with the conditions batched: ``kw`` as forward keywords,
        ``added`` inside ``added_cond_kwargs``."""
        if added:
            kw = {**kw, "added_cond_kwargs": added}
        return module(x, timestep=timestep, **kw).sample
