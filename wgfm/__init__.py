"""wgfm: is the network really learning a score? Wasserstein-gradient-flow matching in JAX.

The core (processes, fields, the Gaussian-mixture oracle, losses, diagnostics, transport and
metrics) is pure JAX; networks live in ``wgfm.models`` and reach the core as plain fields.
"""

from importlib.metadata import PackageNotFoundError, version

from . import (
    data,
    diagnosis,
    diagnostics,
    distributed,
    fields,
    gmm,
    losses,
    metrics,
    perturbations,
    processes,
    samplers,
    transport,
)
from .diagnosis import Diagnosis, diagnose
from .fields import as_field, conditional_velocity, convert, wgf_velocity
from .gmm import (
    GaussianMixture,
    dt_log_density_field,
    log_density_field,
    score_field,
    velocity_field,
)
from .processes import (
    EDM,
    OU,
    VE,
    VP,
    AbstractProcess,
    DiscreteVP,
    LinearInterpolant,
    ShiftedInterpolant,
    SubVP,
    VPCosine,
    VPSigmoid,
)
from .samplers import sample_ddim, sample_sde
from .transport import log_likelihood, sample_fixed_step, sample_ode

try:
    __version__ = version("wgfm")
except PackageNotFoundError:  # a source tree on sys.path, not installed
    __version__ = "0+unknown"

__all__ = [
    "Diagnosis",
    "diagnose",
    "diagnosis",
    "log_likelihood",
    "metrics",
    "perturbations",
    "sample_ddim",
    "sample_fixed_step",
    "sample_ode",
    "sample_sde",
    "samplers",
    "transport",
    "EDM",
    "OU",
    "VE",
    "VP",
    "AbstractProcess",
    "DiscreteVP",
    "GaussianMixture",
    "LinearInterpolant",
    "ShiftedInterpolant",
    "SubVP",
    "VPCosine",
    "VPSigmoid",
    "as_field",
    "conditional_velocity",
    "convert",
    "data",
    "diagnostics",
    "distributed",
    "dt_log_density_field",
    "fields",
    "gmm",
    "log_density_field",
    "losses",
    "processes",
    "score_field",
    "velocity_field",
    "wgf_velocity",
]
