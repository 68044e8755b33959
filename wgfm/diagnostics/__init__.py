"""Conservativity diagnostics: Jacobian asymmetry, loop integrals, transport residual."""

from .jacobian import (
    divergence,
    jacobian,
    make_probes,
    probe_divergence,
    random_indices,
    sub_jacobian,
)
from .residual import exact_divergence, transport_residual

__all__ = [
    "divergence",
    "exact_divergence",
    "jacobian",
    "make_probes",
    "probe_divergence",
    "random_indices",
    "sub_jacobian",
    "transport_residual",
]
