"""Conservativity diagnostics: Jacobian asymmetry, loop integrals, transport residual."""

from .residual import exact_divergence, transport_residual

__all__ = ["exact_divergence", "transport_residual"]
