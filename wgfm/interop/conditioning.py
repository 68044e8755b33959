"""The fixed conditioning of a diffusers denoiser's calls: ``condition={name: array}`` checked
against the family's declared :class:`~wgfm.interop.denoisers.Condition` s, and
classifier-free guidance in the family's convention.

Names are the denoiser's own forward keywords (``added_cond_kwargs`` keys by their own names),
one sample each, without a batch axis. Every error is one line naming the condition."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from .denoisers import AbstractDenoiser, Condition

Values = tuple[tuple[str, bytes, tuple[int, ...], str, bool], ...]  # name, raw, shape, dtype, added


@dataclasses.dataclass(frozen=True)
class Conditioning:
    """What a torch denoiser is called with (hashable: arrays as bytes).

    ``values``: the condition; ``null``: the negative (null) condition of classifier-free
    guidance, or None; the field is ``weight F(x, c) + (1 - weight) F(x, null)``."""

    channels: int  # state channels: a learned-variance output keeps this many
    learned_variance: bool = False
    values: Values = ()
    null: Values | None = None
    weight: float = 1.0

    def arrays(self, null: bool = False) -> dict[str, tuple[np.ndarray, bool]]:
        """``{name: (array, added)}`` of the condition (``null``: of the null condition)."""
        vals = self.null if null else self.values
        return {
            n: (np.frombuffer(raw, dtype=d).reshape(s), added) for n, raw, s, d, added in vals or ()
        }


def _pack(conds: tuple[Condition, ...], arrays: dict[str, np.ndarray]) -> Values:
    added = {c.name: c.added for c in conds}
    return tuple(
        (n, np.ascontiguousarray(a).tobytes(), tuple(a.shape), str(a.dtype), added[n])
        for n, a in sorted(arrays.items())
    )


def resolve(
    cls: str, conds: tuple[Condition, ...], given: Mapping[str, object] | None, arg: str
) -> dict[str, np.ndarray]:
    """The conditions' arrays from ``given`` and the declared defaults; ValueErrors name an
    unknown name, a wrong shape, or the missing ones with every name and shape required."""
    given = dict(given or {})
    by_name = {c.name: c for c in conds}
    for name in given:
        if name == "class_labels" and name not in by_name:
            raise ValueError(f"{cls} is not class-conditional: `class_label` does not apply.")
        if name not in by_name:
            known = ", ".join(c.describe() for c in conds) or "none"
            raise ValueError(
                f"`{arg}` names `{name}`, which {cls} does not take (its conditions: {known})."
            )
    out = {}
    for c in conds:
        if c.name in given:
            out[c.name] = c.check(given[c.name])  # pyright: ignore[reportArgumentType]
        elif c.default is not None:
            out[c.name] = c.default_array()
    _check_axes(conds, out, arg)
    missing = [c for c in conds if c.name not in out and not c.mask]
    if missing:
        what = (
            "a text embedding"
            if any(c.name == "encoder_hidden_states" for c in missing)
            else "class labels and has no null class"
            if any(c.name == "class_labels" for c in missing)
            else "inputs it has no default for"
        )
        optional = lambda c: c.default is not None or c.mask  # noqa: E731
        need = ", ".join(c.describe() + " optional" * optional(c) for c in conds)
        raise ValueError(
            f"{cls} is conditioned on {what}: give `{arg}` (--condition FILE.npz) with "
            f"{', '.join(c.name for c in missing)} (it takes {need})."
        )
    return out


def _check_axes(conds: tuple[Condition, ...], arrays: dict[str, np.ndarray], arg: str) -> None:
    """A free axis named by several conditions (a caption's tokens: its hidden states and its
    attention mask) has one length; a ValueError names both conditions otherwise."""
    seen: dict[str, tuple[str, int]] = {}
    for c in conds:
        if c.name not in arrays:
            continue
        for axis, n in zip(c.shape, arrays[c.name].shape, strict=True):
            if isinstance(axis, str):
                other, m = seen.setdefault(axis, (c.name, n))
                if m != n:
                    raise ValueError(
                        f"`{arg}`: `{c.name}` has {n} along its {axis} axis, `{other}` {m}: "
                        "they must match."
                    )


def _fill_masks(conds: tuple[Condition, ...], *sets: dict[str, np.ndarray]) -> None:
    """Where one of ``sets`` holds an attention mask and another does not, the latter gets the
    forward's own default, every token attended (ones along the axis the mask names)."""
    for c in conds:
        if not c.mask or not any(c.name in s for s in sets):
            continue
        (axis,) = c.shape
        for s in sets:
            if c.name not in s:
                # The length of that axis in this set, from the condition sharing it.
                n = next(
                    s[o.name].shape[o.shape.index(axis)]
                    for o in conds
                    if o.name in s and axis in o.shape
                )
                s[c.name] = np.ones(n, np.float32)


def conditioning(
    family: AbstractDenoiser,
    cls: str,
    conds: tuple[Condition, ...],
    channels: int,
    learned: bool,
    condition: Mapping[str, object] | None,
    negative: Mapping[str, object] | None,
    guidance_scale: float | None,
) -> tuple[Conditioning, list[str]]:
    """The :class:`Conditioning` of a call and the notes saying what it is (module docstring).

    ``guidance_scale`` ``w``: class-conditional families give ``(1 + w) F(c) - w F(null)`` with
    the null class; text families ``F(null) + w (F(c) - F(null))`` with ``negative`` as the
    null condition (the pipeline's convention, its ``guidance_scale`` itself)."""
    values = resolve(cls, conds, condition, "condition")
    notes = _notes(conds, values, condition)
    packed = Conditioning(channels, learned, _pack(conds, values))
    if negative is not None and not guidance_scale:
        raise ValueError("`negative_condition` applies only with `guidance_scale`.")
    if not guidance_scale:
        return packed, notes
    w = float(guidance_scale)
    if family.guidance == "none":
        raise ValueError(
            f"{cls} ({family.name}) is not guided by classifier-free guidance: FLUX.1-dev's "
            "distilled guidance is its `guidance` condition (--condition), not `guidance_scale`."
        )
    if family.guidance == "class":
        nulls, note = _class_guidance(cls, conds, values, w)
        weight = 1 + w
    else:
        nulls, note = _text_guidance(cls, conds, values, negative, w)
        weight = w
    # Packed again: a guided null's mask may have given the condition one (ones) too.
    packed = Conditioning(channels, learned, _pack(conds, values), _pack(conds, nulls), weight)
    return packed, [*notes, note]


def _notes(conds: tuple[Condition, ...], values: dict, condition) -> list[str]:
    """What each condition of a call is: a class label, a given array or the default."""
    notes = []
    for c in conds:
        if c.name not in values:
            notes.append(f"no {c.name}: every token attended")  # a mask left out
            continue
        a = values[c.name]
        given = c.name in (condition or {})
        if c.name == "class_labels":
            label = int(a)
            default = c.default_array()
            if default is not None and label == int(default):
                notes.append(f"the unconditional field (the null class label {label})")
            else:
                notes.append(f"conditioned on class label {label}")
        elif given:
            notes.append(f"conditioned on a given {c.name} ({c.doc}) of shape {a.shape}")
        else:
            notes.append(f"{c.name} {a.tolist()} (the pipeline's default: {c.doc})")
    return notes


def _class_guidance(cls: str, conds: tuple[Condition, ...], values: dict, w: float):
    """The null values and the note of class-conditional guidance, ``(1 + w) F(c) - w F(null)``
    with the null class."""
    label = next((c for c in conds if c.name == "class_labels"), None)
    null = None if label is None else label.default_array()
    if null is None or int(values["class_labels"]) == int(null):
        raise ValueError(
            f"`guidance_scale` needs a class-conditional denoiser with a null class and a "
            f"`class_label` other than it ({cls})."
        )
    note = (
        f"the classifier-free-guided field (1 + w) F(x, c) - w F(x, null) with w = {w:g}, "
        f"c = {int(values['class_labels'])}, null = {int(null)}: not the score of a noised "
        "distribution, even for exact F"
    )
    return {**values, "class_labels": null}, note


def _text_guidance(cls: str, conds: tuple[Condition, ...], values: dict, negative, w: float):
    """The null values and the note of text guidance, ``F(null) + w (F(c) - F(null))`` with
    ``negative`` as the null condition (the pipeline's ``guidance_scale`` convention)."""
    negs = [c for c in conds if c.negative]
    if negative is None:
        need = ", ".join(c.describe() for c in negs)
        raise ValueError(
            f"`guidance_scale` for {cls} needs the negative (null) condition: give "
            f"`negative_condition` (the encoded empty or negative prompt) with {need}."
        )
    for name in negative:
        if name not in {c.name for c in negs}:
            raise ValueError(
                f"`negative_condition` names `{name}`, which is not a condition {cls} replaces "
                f"for guidance ({', '.join(c.name for c in negs)})."
            )
    # A mask belongs to its caption: the condition's is not the null one's.
    kept = {k: v for k, v in values.items() if not next(c for c in conds if c.name == k).mask}
    nulls = {**kept, **resolve(cls, tuple(negs), negative, "negative_condition")}
    _fill_masks(conds, values, nulls)  # values too: the two are batched with the same keys
    for name, a in nulls.items():
        if a.shape != values[name].shape:
            raise ValueError(
                f"`negative_condition`'s `{name}` has shape {a.shape}, the condition's "
                f"{values[name].shape}: the pipeline batches the two, so they must match."
            )
    note = (
        f"the classifier-free-guided field F(x, null) + w (F(x, c) - F(x, null)) with w = {w:g} "
        "(the pipeline's guidance_scale convention), null: the given negative condition; not the "
        "score of a noised distribution, even for exact F"
    )
    return nulls, note
