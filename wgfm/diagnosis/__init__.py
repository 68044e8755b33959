"""The diagnosis of any field: the paper's claims 1 and 2 beside both controls.

:func:`diagnose` returns a :class:`Diagnosis` (rows, per-level numbers, figures; Markdown and
JSON); :data:`CLAIMS` registers its claims (:class:`AbstractClaim`), whose measurements
:func:`measure_asymmetry` and :func:`measure_circulation` also run on their own; sizes are
:class:`DiagnoseSizes` (:data:`QUICK`, :data:`FULL`, :data:`LARGE`; :data:`PRESETS` by name). :mod:`wgfm.diagnosis.command` is
``wgfm diagnose``, which runs it on a pretrained model into a resumable output directory.
"""

from .api import Diagnosis, diagnose
from .asymmetry import JacobianAsymmetry, compare_spaces, headline_lambda, measure_asymmetry
from .budget import JacobianPolicy
from .circulation import LoopCirculation, measure_circulation
from .claim import AbstractClaim, Controls
from .registry import CLAIMS
from .sizes import FULL, LARGE, PRESETS, QUICK, DiagnoseSizes

__all__ = [
    "CLAIMS",
    "FULL",
    "LARGE",
    "PRESETS",
    "QUICK",
    "AbstractClaim",
    "Controls",
    "DiagnoseSizes",
    "Diagnosis",
    "JacobianAsymmetry",
    "JacobianPolicy",
    "LoopCirculation",
    "compare_spaces",
    "diagnose",
    "headline_lambda",
    "measure_asymmetry",
    "measure_circulation",
]
