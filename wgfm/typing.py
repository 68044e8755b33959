"""The types every layer shares: a field, a scalar time, and the quantity a field predicts.

A *field* is ``field(x, t) -> array shaped like x`` for one unbatched sample ``x`` and one scalar
time ``t`` (docs/design.md). What it returns is its *kind*: one of :data:`KINDS`. A network's
config says which kind it predicts (``Model.kind``, a diffusers scheduler's
``prediction_type``); once it is a wgfm field, that quantity is called its kind everywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from jaxtyping import Array, ArrayLike, Float

Field = Callable[..., Array]
Scalar = Float[ArrayLike, ""]
Kind = Literal["score", "eps", "x0", "velocity"]
KINDS: tuple[str, ...] = ("score", "eps", "x0", "velocity")
