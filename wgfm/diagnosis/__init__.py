"""The diagnosis of any field: the paper's claims 1 and 2 beside both controls.

:func:`diagnose` returns a :class:`Diagnosis` (rows, per-level numbers, figures; Markdown and
JSON); :func:`measure_asymmetry` and :func:`measure_circulation` are its two measurements on
their own; :mod:`wgfm.diagnosis.command` is ``wgfm diagnose``, which runs it on a diffusers
model directory into a resumable output directory.
"""

from .api import FULL, QUICK, TITLES, DiagnoseSizes, Diagnosis, diagnose
from .claims import compare_spaces, headline_lambda, measure_asymmetry, measure_circulation

__all__ = [
    "FULL",
    "QUICK",
    "TITLES",
    "DiagnoseSizes",
    "Diagnosis",
    "compare_spaces",
    "diagnose",
    "headline_lambda",
    "measure_asymmetry",
    "measure_circulation",
]
