"""The contract of a pretrained model as a field: what a diagnosis reads of it (docs/design.md §2).

A *pretrained field* is a field ``field(x, t)`` of one unbatched sample that also declares
where it came from: its kind and process, the shape of one sample, the autoencoder of a latent
pipeline, the conditioning it was given, whether it runs through a host callback (PyTorch), and
how to build its untrained control. :func:`wgfm.diagnose` and the ``wgfm diagnose`` command read
these attributes and nothing else, so a new model family is a new implementation, never a new
branch in the diagnosis.

Implementations: the flax port of a diffusers ``UNet2DModel``
(:class:`wgfm.interop.DiffusersField`), a diffusers PyTorch denoiser
(:class:`wgfm.interop.TorchDiffusersField`), any batched PyTorch module
(:class:`wgfm.interop.torch.TorchModuleField`) and :class:`CallableField`, a JAX field with its
declared kind and process (what ``wgfm diagnose --model package.module:function`` loads).
"""

# No `from __future__ import annotations`: equinox reads AbstractVar annotations unstringified.
import abc
from typing import TYPE_CHECKING, Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .processes import AbstractProcess
from .typing import KINDS, Field


class AbstractPretrainedField(eqx.Module):
    """A field that declares its origin (module docstring). Subclasses provide each attribute as
    a field or a property.

    Attributes:
        kind: what the field returns, one of :data:`wgfm.typing.KINDS`.
        process: the forward process the field's time refers to.
        sample_shape: the shape of one sample (e.g. ``(H, W, C)``), or None when unknown.
        latent: the autoencoder of a latent pipeline (its samples are latents), or None.
        conditioning: what the model was given (class, text embedding, guidance), or None.
        notes: sentences saying what exactly is diagnosed (a learned-variance half, guidance).
        cls: the model's class name, as its framework calls it.
        backend: where it runs, in words (the report's header).
        host_callback: True when it runs through a host callback (PyTorch): JAX can then not
            split its evaluations over devices.
        untrained_description: the untrained control in words (the report's header).
    """

    if TYPE_CHECKING:
        # Type checkers read eqx.AbstractVar annotations as constructor fields of every
        # subclass; declared as read-only properties here, a subclass's field or property
        # satisfies them, as at run time.
        @property
        def kind(self) -> str: ...
        @property
        def process(self) -> AbstractProcess: ...
        @property
        def sample_shape(self) -> tuple[int, ...] | None: ...
        @property
        def latent(self) -> Any: ...
        @property
        def conditioning(self) -> Any: ...
        @property
        def notes(self) -> tuple[str, ...]: ...
        @property
        def cls(self) -> str: ...
        @property
        def backend(self) -> str: ...
        @property
        def host_callback(self) -> bool: ...
        @property
        def untrained_description(self) -> str: ...
    else:
        kind: eqx.AbstractVar[str]
        process: eqx.AbstractVar[AbstractProcess]
        sample_shape: eqx.AbstractVar[tuple[int, ...] | None]
        latent: eqx.AbstractVar[Any]
        conditioning: eqx.AbstractVar[Any]
        notes: eqx.AbstractVar[tuple[str, ...]]
        cls: eqx.AbstractVar[str]
        backend: eqx.AbstractVar[str]
        host_callback: eqx.AbstractVar[bool]
        untrained_description: eqx.AbstractVar[str]

    @abc.abstractmethod
    def __call__(self, x: Float[Array, "..."], t: Float[ArrayLike, ""]) -> Array:
        """The field's value of ``kind`` at one sample ``x`` and time ``t``."""

    @abc.abstractmethod
    def untrained(
        self, *, key: PRNGKeyArray, sample_shape: tuple[int, ...]
    ) -> "AbstractPretrainedField | None":
        """The untrained control: the same architecture freshly initialised (from ``key``), as a
        field of the same kind; None when the model carries no parameters to redraw.

        Args:
            key: the randomness of the initialisation.
            sample_shape: the shape of one sample (for models that initialise by tracing).
        """

    def describe(self) -> str:
        """One line: class, backend, kind and notes (the report's "field diagnosed")."""
        notes = "; ".join(self.notes)
        return f"{self.cls} on {self.backend}, kind {self.kind}" + (f"; {notes}" if notes else "")

    def describe_process(self) -> str:
        """The process in words (the report's "process"); a scheduler's map says more."""
        return f"{type(self.process).__name__} (given by the model's function)"


def torch_seed(key: PRNGKeyArray) -> int:
    """A PyTorch seed drawn from a JAX key, so that a PyTorch model's untrained control comes
    from the same key as a JAX model's (the diagnosis derives every key from its seed)."""
    return int(jax.random.randint(key, (), 0, jnp.iinfo(jnp.int32).max))


class CallableField(AbstractPretrainedField):
    """A JAX field with a declared ``kind`` and ``process``: the contract around any callable.

    A field carrying ``model`` and ``params`` (such as :class:`wgfm.models.ModelField`) gets an
    untrained control with freshly drawn parameters
    (:func:`wgfm.diagnostics.controls.untrained_field`); any other gets none."""

    fn: Field
    kind: str = eqx.field(static=True)
    process: AbstractProcess
    sample_shape: tuple[int, ...] | None = eqx.field(static=True, default=None)
    notes: tuple[str, ...] = eqx.field(static=True, default=())
    latent: Any = eqx.field(static=True, default=None)
    conditioning: Any = eqx.field(static=True, default=None)

    def __check_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"`kind` must be one of {KINDS}, got {self.kind!r}.")
        if not callable(self.fn):
            raise ValueError(f"`fn` must be callable, got {type(self.fn).__name__}.")

    @property
    def cls(self) -> str:
        return getattr(self.fn, "cls", None) or type(self.fn).__name__

    @property
    def backend(self) -> str:
        return "JAX, calling PyTorch" if self.host_callback else "JAX"

    @property
    def host_callback(self) -> bool:
        # A JAX function may still call a torch_field inside: look for one among its leaves.
        nodes = jax.tree_util.tree_leaves(
            self.fn, is_leaf=lambda n: type(n).__module__.startswith("wgfm.interop.torch")
        )
        return any(type(n).__module__.startswith("wgfm.interop.torch") for n in nodes)

    @property
    def _redrawable(self) -> bool:
        model = getattr(self.fn, "model", None)
        return hasattr(model, "init") and getattr(self.fn, "params", None) is not None

    @property
    def untrained_description(self) -> str:
        if self._redrawable:
            return "the same architecture with freshly drawn parameters"
        return "no untrained control (the field carries no parameters to redraw)"

    def __call__(self, x: Float[Array, "..."], t: Float[ArrayLike, ""]) -> Array:
        return self.fn(x, t)

    def untrained(
        self, *, key: PRNGKeyArray, sample_shape: tuple[int, ...]
    ) -> "CallableField | None":
        if not self._redrawable:
            return None
        from .diagnostics.controls import untrained_field

        return eqx.tree_at(lambda f: f.fn, self, untrained_field(self.fn, key, sample_shape))
