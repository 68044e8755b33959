"""What the solves of :mod:`wgfm.transport` and :mod:`wgfm.samplers` return, and the strict
check that turns a failed solve into an error.

Each result carries diffrax's result code and ``ok`` (successful *and* finite). With
``strict=True`` :func:`check_solve` raises a ``RuntimeError`` when any sample hit
``max_steps``, failed otherwise or is non-finite: on the host after the solve (so the compiled
solve holds no callback and JAX's persistent cache can keep it), or, under the caller's own
``jit``, as ``equinox.error_if`` (``equinox.EquinoxRuntimeError``).
"""

from __future__ import annotations

from typing import TypeVar

import diffrax
import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Int

from ._checks import concrete

__all__ = [
    "FAILED_MESSAGE",
    "FIELD_NONFINITE_MESSAGE",
    "MAX_STEPS_MESSAGE",
    "NONFINITE_MESSAGE",
    "LikelihoodResult",
    "SampleResult",
    "SolveStats",
    "check_solve",
    "first_nonfinite",
]

MAX_STEPS_MESSAGE = (
    "wgfm.transport: the solve hit `max_steps` before reaching the final time; raise "
    "`max_steps`, loosen rtol/atol, or pass strict=False to get the flagged result."
)
FAILED_MESSAGE = (
    "wgfm.transport: diffrax reported a failed solve (see SolveStats.result); pass "
    "strict=False to get the flagged result."
)
NONFINITE_MESSAGE = (
    "wgfm.transport: the solve produced non-finite values (check the field near t_min); "
    "pass strict=False to get the flagged result."
)
FIELD_NONFINITE_MESSAGE = (
    "wgfm.transport: the field or the state became non-finite (inf/nan) during the solve{where}; "
    "check the field (and `x_init`) there, or pass strict=False to get the flagged result."
)

_RESULT_MESSAGES = {
    int(getattr(diffrax.RESULTS, name)._value): diffrax.RESULTS[getattr(diffrax.RESULTS, name)]
    for name in (
        "successful",
        "max_steps_reached",
        "singular",
        "breakdown",
        "dt_min_reached",
        "nonfinite",
    )
    if hasattr(diffrax.RESULTS, name)
}


class SolveStats(eqx.Module):
    """Solver statistics (per sample under ``per_sample=True``)."""

    nfe: Int[Array, "..."]
    num_steps: Int[Array, "..."]
    num_accepted_steps: Int[Array, "..."]
    num_rejected_steps: Int[Array, "..."]
    result: Int[Array, "..."]
    """diffrax result code (``diffrax.RESULTS``; 0 = successful)."""
    ok: Array
    """Successful and finite (and no non-finite field value met on the way, where counted)."""
    num_nonfinite_steps: Int[Array, "..."] | None = None
    """Attempted steps (accepted or rejected) in which the field or the state was non-finite
    (:func:`wgfm.transport.sample_ode`; ``None`` where not counted)."""
    first_nonfinite_step: Array | None = None
    """``(t0, t1)`` of the first such step (NaN if none): the field was non-finite between."""

    @property
    def converged(self) -> bool:
        """Whether every solve succeeded (concrete values only)."""
        return bool(np.all(np.asarray(self.ok)))

    def messages(self) -> list[str]:
        """Distinct diffrax messages of the result codes."""
        codes = sorted(set(np.asarray(self.result).reshape(-1).tolist()))
        return [_RESULT_MESSAGES.get(c, f"diffrax result {c}") for c in codes]


class SampleResult(eqx.Module):
    """``samples`` at the final time, optional ``trajectory`` at ``save_times`` and statistics."""

    samples: Array
    trajectory: Array | None
    save_times: Array | None
    stats: SolveStats

    @property
    def ok(self) -> Array:
        return self.stats.ok


class LikelihoodResult(eqx.Module):
    """``log_likelihood = prior_log_density(latents) + delta_log_density`` and statistics."""

    log_likelihood: Array
    prior_log_density: Array
    delta_log_density: Array
    latents: Array
    stats: SolveStats

    @property
    def ok(self) -> Array:
        return self.stats.ok


def first_nonfinite(stats: SolveStats) -> str:
    """Where the first sample that met a non-finite value met it, as a phrase for an error
    message (``""`` if none did; concrete statistics only)."""
    first = np.asarray(stats.first_nonfinite_step).reshape(-1, 2)
    first = first[~np.isnan(first[:, 0])]
    if not len(first):
        return ""
    n = int(np.sum(np.asarray(stats.num_nonfinite_steps)))
    return f" in the step from t={first[0, 0]:.6g} to t={first[0, 1]:.6g} ({n} such steps)"


_Result = TypeVar("_Result", SampleResult, LikelihoodResult)


def check_solve(res: _Result, strict: bool) -> _Result:
    """``res`` after the strict checks (unchanged when ``strict`` is false): ``RuntimeError``
    if any sample met a non-finite field value, hit ``max_steps``, failed otherwise or is
    non-finite. The checks run on the host, after the compiled solve, so that the solve holds
    no host callback (JAX's persistent cache does not keep programs with callbacks: every run
    would compile it anew); under the caller's own trace (``jit``, ``vmap``) they become
    ``equinox.error_if`` around the traced result."""
    if not strict:
        return res
    code, ok = res.stats.result, res.stats.ok  # ok = successful & finite
    traced = concrete(code) is None  # inside the caller's jit/vmap
    xp = jnp if traced else np
    count = res.stats.num_nonfinite_steps
    if count is not None:
        if traced:
            res = eqx.error_if(res, jnp.any(count > 0), FIELD_NONFINITE_MESSAGE.format(where=""))
        elif np.any(np.asarray(count) > 0):
            raise RuntimeError(FIELD_NONFINITE_MESSAGE.format(where=first_nonfinite(res.stats)))
    failures = (
        (xp.any(code == diffrax.RESULTS.max_steps_reached._value), MAX_STEPS_MESSAGE),
        (xp.any(code != diffrax.RESULTS.successful._value), FAILED_MESSAGE),
        (~xp.all(ok), NONFINITE_MESSAGE),
    )
    for bad, msg in failures:
        if traced:
            res = eqx.error_if(res, bad, msg)
        elif bad:
            raise RuntimeError(msg)
    return res
