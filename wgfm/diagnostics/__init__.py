"""Conservativity diagnostics: Jacobian asymmetry, loop integrals, transport residual.

``jacobian``, ``sub_jacobian``, ``probe_asymmetry``, ``divergence``, ``probe_divergence``,
``curl_2d``, ``loop_report(s)`` and ``transport_residual`` take ``checked`` (default True).
Checked, a non-finite value raises:
eagerly a ``ValueError`` naming the input, under ``jit`` an ``equinox.error_if``. That is a
host callback, and JAX's persistent compilation cache does not keep programs holding one, so
a jitted sweep is compiled anew in every process. ``checked=False`` leaves the checks out of
the program (non-finite values then propagate to the outputs): for sweeps that check their
outputs on the host instead (``sweep(..., checked=False)``, :func:`require_finite`), as the
reproduction's experiments do.
"""

from .adaptive import AdaptiveProbeAsymmetry, adaptive_probe_asymmetry
from .controls import gaussian_fit_score, untrained_field, untrained_params
from .helmholtz import HelmholtzSplit, grid_2d, helmholtz_split, helmholtz_split_field
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
from .kernels import FAMILIES, Circulation, ExactAsymmetry, SubAndProbe
from .loops import (
    LoopReport,
    PathDependence,
    brownian_bridge,
    circle,
    line_integral,
    loop_report,
    loop_reports,
    noisy_copy_cycle,
    pair_rotation,
    parametric_line_integral,
    parametric_loop,
    path_dependence,
    polyline,
    rectangle,
    refine,
    triangle_identity,
)
from .residual import transport_residual
from .spectrum import estimate_effective_rank, skew_effective_rank
from .sweep import DIAGNOSTICS, SweepResult, noised_samples, require_finite, sweep, times_grid

__all__ = [
    "FAMILIES",
    "Circulation",
    "ExactAsymmetry",
    "SubAndProbe",
    "gaussian_fit_score",
    "untrained_field",
    "untrained_params",
    "times_grid",
    "DIAGNOSTICS",
    "SweepResult",
    "noised_samples",
    "require_finite",
    "sweep",
    "HelmholtzSplit",
    "grid_2d",
    "helmholtz_split",
    "helmholtz_split_field",
    "LoopReport",
    "PathDependence",
    "brownian_bridge",
    "circle",
    "line_integral",
    "loop_report",
    "loop_reports",
    "noisy_copy_cycle",
    "pair_rotation",
    "parametric_line_integral",
    "parametric_loop",
    "path_dependence",
    "polyline",
    "rectangle",
    "refine",
    "triangle_identity",
    "Asymmetry",
    "ProbeAsymmetry",
    "asymmetry",
    "curl_2d",
    "probe_asymmetry",
    "divergence",
    "jacobian",
    "make_probes",
    "probe_divergence",
    "random_indices",
    "sub_jacobian",
    "transport_residual",
    "AdaptiveProbeAsymmetry",
    "adaptive_probe_asymmetry",
    "estimate_effective_rank",
    "skew_effective_rank",
]
