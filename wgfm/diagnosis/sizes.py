"""The sizes of a diagnosis, one vocabulary: :class:`DiagnoseSizes` and its presets
:data:`QUICK`, :data:`FULL`, :data:`LARGE` (:data:`PRESETS`, by the name ``wgfm diagnose
--size`` takes).

Each claim of :data:`wgfm.diagnosis.registry.CLAIMS` reads the fields it needs; the
reproduction's sizes (``experiments.config.Sizes``) give their view of a data set as a
:class:`DiagnoseSizes` too. The exact-or-probes policy of claim 1 is here as well
(``jacobians``, ``max_exact_dim``, ``exact_budget_s``; :class:`wgfm.diagnosis.budget.JacobianPolicy`
applies it).
"""

from __future__ import annotations

import dataclasses

from .budget import JACOBIANS


@dataclasses.dataclass(frozen=True)
class DiagnoseSizes:
    """Every size of a diagnosis. :data:`QUICK` runs in minutes on a CPU for the
    ddpm-cifar10-32 U-Net (35.7 M parameters); :data:`FULL` is the authors' protocol (128
    images per level for claim 1, 256 for claim 2); :data:`LARGE` its upper end, 256 images at
    every one of 100 levels for both claims (many GPUs: ``wgfm diagnose`` reports what each
    preset would cost for the model given, :mod:`wgfm.diagnosis.plan`)."""

    num_levels: int  # noise levels of claim 1 (the authors: 100, t = 1, 11, ..., 991 of 1000)
    num_samples: int  # images per level, claim 1
    sub_jacobian_size: int  # K of the K x K sub-Jacobians (on the probe path)
    num_probes: int  # probes of the full-Jacobian estimate (one JVP and one VJP each; >= 2)
    # Exact Jacobians up to this many coordinates; None: exact when their measured cost fits
    # exact_budget_s (wgfm.diagnosis.budget).
    max_exact_dim: int | None
    batch_size: int  # images at a time in claim 1
    loop_levels: int  # noise levels of claim 2
    loop_samples: int  # images per level, claim 2
    loop_points: int  # points of the circle and pair-rotation loops
    bridge_steps: int  # Brownian-bridge steps (the authors: 1000)
    noisy_copies: int  # noisy-copy cycle: copies (the authors: 10)
    noisy_points: int  # points per segment (the authors: 100)
    num_generated: int  # images the model generates when no data is given
    ddim_steps: int  # DDIM steps of that generation (the authors: 50)
    exact_budget_s: float = 60.0  # seconds of exact Jacobians allowed (max_exact_dim None)
    # Claim 1's Jacobians: "auto" (by max_exact_dim, else by the budget), "exact" or "probes".
    jacobians: str = "auto"
    # Images at a time in claim 2 (None: a level's images at once). One by default: every loop
    # point is a field evaluation, and a large network over all of them would not fit.
    loop_batch_size: int | None = 1
    # Claim 1's probe path: rounds of num_probes probes until lambda's relative standard error
    # is at most rel_se, or max_probes are spent (wgfm.diagnostics.adaptive); None: num_probes.
    rel_se: float | None = None
    max_probes: int = 256

    def __post_init__(self):
        optional = ("max_exact_dim", "loop_batch_size")  # None allowed
        ints = [f.name for f in dataclasses.fields(self) if f.name not in _NOT_COUNTS]
        bad = [
            n
            for n in ints
            if not (n in optional and getattr(self, n) is None) and int(getattr(self, n)) < 1
        ]
        if bad:
            raise ValueError(f"DiagnoseSizes: {', '.join(bad)} must be positive integers.")
        if self.num_probes < 2:
            raise ValueError("DiagnoseSizes: num_probes must be at least 2 (for a standard error).")
        if not float(self.exact_budget_s) >= 0:
            raise ValueError(
                f"DiagnoseSizes: exact_budget_s must be >= 0 seconds, got {self.exact_budget_s!r}."
            )
        if self.rel_se is not None and not (0 < float(self.rel_se) < float("inf")):
            raise ValueError(f"DiagnoseSizes: rel_se must be > 0 or None, got {self.rel_se!r}.")
        if self.max_probes % self.num_probes:
            raise ValueError(
                f"DiagnoseSizes: max_probes ({self.max_probes}) must be a multiple of num_probes "
                f"({self.num_probes}), the probes of one round."
            )
        if self.jacobians not in JACOBIANS:
            raise ValueError(
                f"DiagnoseSizes: jacobians must be one of {', '.join(JACOBIANS)}, "
                f"got {self.jacobians!r}."
            )


_NOT_COUNTS = ("exact_budget_s", "jacobians", "rel_se")


QUICK = DiagnoseSizes(
    num_levels=4,
    num_samples=2,
    sub_jacobian_size=8,
    num_probes=4,
    max_exact_dim=None,
    batch_size=2,
    loop_levels=3,
    loop_samples=1,
    loop_points=16,
    bridge_steps=32,
    noisy_copies=3,
    noisy_points=8,
    num_generated=8,
    ddim_steps=10,
    # A quick run takes minutes: exact Jacobians may add about one more.
    exact_budget_s=60.0,
    # rounds of 4 probes up to a 10% s.e.: a trained U-Net's skew part is spread over hundreds
    # of directions, so one round does (benchmarks/results/probe_passes.json)
    rel_se=0.1,
    max_probes=64,
)
FULL = DiagnoseSizes(
    num_levels=100,
    num_samples=128,
    sub_jacobian_size=64,
    num_probes=32,
    max_exact_dim=None,
    batch_size=16,
    loop_levels=100,
    loop_samples=256,
    loop_points=256,
    bridge_steps=1000,
    noisy_copies=10,
    noisy_points=100,
    num_generated=1024,
    ddim_steps=50,
    # The authors' protocol is already hours on a GPU (claim 2 alone is ~2e8 evaluations of
    # the field: 256 images x 100 levels x ~2,500 loop points x 3 fields); exact Jacobians may
    # take about as long again.
    exact_budget_s=4 * 3600.0,
    rel_se=0.1,
    max_probes=256,
)
# The upper end of the authors' protocol (128-256 images x 100 levels): 256 images for claim 1
# too, so that its per-level medians rest on as many images as claim 2's; every other size is
# FULL's.
LARGE = dataclasses.replace(FULL, num_samples=256)

# The presets by name, smallest first (``wgfm diagnose --size``; the plan of each in the report).
PRESETS: dict[str, DiagnoseSizes] = {"quick": QUICK, "full": FULL, "large": LARGE}
