"""The registry of claims: every diagnostic :func:`wgfm.diagnose` measures, in report order.

A new diagnostic is a module holding an :class:`wgfm.diagnosis.claim.AbstractClaim` subclass
and one entry here (docs/design.md §2 lists the steps); the diagnosis, the ``wgfm diagnose``
command, its resumable directory, its report header and the reproduction all iterate this
mapping instead of naming claims.
"""

from __future__ import annotations

from .asymmetry import JacobianAsymmetry
from .circulation import LoopCirculation
from .claim import AbstractClaim

CLAIMS: dict[str, AbstractClaim] = {c.key: c for c in (JacobianAsymmetry(), LoopCirculation())}


def claim_of_title(title: str) -> AbstractClaim:
    """The registered claim whose report section is ``title``."""
    for claim in CLAIMS.values():
        if claim.title == title:
            return claim
    raise ValueError(f"no registered claim is titled {title!r}; titles: {titles()}.")


def titles() -> list[str]:
    """The registered claims' report sections, in order."""
    return [c.title for c in CLAIMS.values()]
