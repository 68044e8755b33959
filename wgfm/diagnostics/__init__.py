"""Conservativity diagnostics: Jacobian asymmetry, loop integrals, transport residual."""

from .jacobian import (
    Asymmetry,
    ProbeAsymmetry,
    asymmetry,
    curl_2d,
    divergence,
    jacobian,
    make_probes,
    probe_asymmetry,
    probe_divergence,
    random_indices,
    sub_jacobian,
)
from .residual import exact_divergence, transport_residual

__all__ = [
    "Asymmetry",
    "ProbeAsymmetry",
    "asymmetry",
    "curl_2d",
    "probe_asymmetry",
    "divergence",
    "exact_divergence",
    "jacobian",
    "make_probes",
    "probe_divergence",
    "random_indices",
    "sub_jacobian",
    "transport_residual",
]
