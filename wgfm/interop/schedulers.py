"""diffusers schedulers as ``wgfm`` processes, and how a network is called in that process's time.

:func:`scheduler_map` reads a scheduler config (``scheduler_config.json``) and returns a
:class:`SchedulerMap`: the :class:`wgfm.processes.AbstractProcess` whose marginals
``alpha_t x0 + sigma_t eps`` are the scheduler's ``add_noise`` / ``scale_noise``, the network
timestep and input scaling at wgfm time ``t``, and the conversion of the network's raw output
into a field value of one wgfm kind. Three families:

* **betas** (DDPM, DDIM, PNDM, DPM-Solver, UniPC, DEIS, Euler, Heun, LMS, KDPM2 ...): a
  :class:`wgfm.processes.DiscreteVP`; training step ``k`` is ``t = (k + 1)/K``, timestep
  ``t K - 1``. ``epsilon`` -> eps, ``sample`` -> x0, ``v_prediction`` -> eps
  (``eps = sigma_t x + alpha_t v``). The Euler family writes ``x0 + s eps`` with
  ``s = sigma_t / alpha_t`` and feeds the network ``x / sqrt(s^2 + 1)``: the same VP input.
* **flow** (``FlowMatchEulerDiscreteScheduler``, ``FlowMatchHeunDiscreteScheduler``):
  ``x = (1 - s) x0 + s eps`` with ``s = shift t / (1 + (shift - 1) t)``
  (:class:`wgfm.processes.LinearInterpolant` for ``shift = 1``, else
  :class:`wgfm.processes.ShiftedInterpolant`), step ``k = 1..K`` at ``t = k/K``, timestep
  ``s K``; the network's ``eps - x0 = dx/ds`` times ``ds/dt`` is the velocity in ``t``.
* **edm** (``EDMEulerScheduler``, ``EDMDPMSolverMultistepScheduler``): ``x = x0 + s eps`` as a
  :class:`wgfm.processes.VE` (``s = sigma_min (sigma_max / sigma_min)^t``; Karras or exponential
  spacing is only the sampler's grid), input ``x / sqrt(s^2 + sigma_data^2)``, timestep
  ``log(s)/4`` and the preconditioned ``x0 = c_skip x + c_out F`` (Karras et al. 2022, Table 1).
"""

from __future__ import annotations

import math

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from ..processes import VE, AbstractProcess, DiscreteVP, LinearInterpolant, ShiftedInterpolant

# betas-family `prediction_type` -> the kind (wgfm.typing.Kind) the field returns (v is
# converted to eps).
PREDICTION_KINDS = {"epsilon": "eps", "sample": "x0", "v_prediction": "eps"}
FLOW_SCHEDULERS = ("FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler")
EDM_SCHEDULERS = ("EDMEulerScheduler", "EDMDPMSolverMultistepScheduler")
# Few-step samplers of distilled models: the network's output is a consistency function's jump
# to the data, not a score, x0 estimate or velocity of the noising process.
CONSISTENCY_SCHEDULERS = (
    "CMStochasticIterativeScheduler",
    "LCMScheduler",
    "TCDScheduler",
    "SCMScheduler",
)


class SchedulerMap(eqx.Module):
    """A scheduler's process and the network's calling convention in that process's time:
    ``field(x, t) = value(x, net(model_input(x, t), timestep(t)), t)`` is a field of ``kind``
    (module docstring for each family).

    Attributes:
        process: the wgfm process of the scheduler's noising.
        family: ``"betas"`` (DDPM-family), ``"flow"`` or ``"edm"``.
        prediction_type: what the network predicts, in diffusers' words.
        num_train_timesteps: ``K``, the scheduler's training steps.
        scheduler: the scheduler's class name.
        sigma_data: EDM's data standard deviation (its preconditioning).
    """

    process: AbstractProcess
    family: str = eqx.field(static=True)
    prediction_type: str = eqx.field(static=True)
    num_train_timesteps: int = eqx.field(static=True)
    scheduler: str = eqx.field(static=True)
    sigma_data: float = eqx.field(static=True, default=0.5)

    @property
    def kind(self) -> str:
        if self.family == "flow":
            return "velocity"
        if self.family == "edm":
            return "x0"
        return PREDICTION_KINDS[self.prediction_type]

    def describe(self) -> str:
        """One line for reports: the scheduler, its process and the network's output.

        Returns:
            The line.
        """
        p = self.process
        if isinstance(p, DiscreteVP):
            proc = f"DiscreteVP ({p.num_steps} steps)"
        elif isinstance(p, ShiftedInterpolant):
            proc = f"ShiftedInterpolant (shift {p.shift:g})"
        elif isinstance(p, VE):
            proc = f"VE (sigma {p.sigma_min:g} to {p.sigma_max:g})"
        else:
            proc = type(p).__name__
        out = "velocity eps - x0" if self.family == "flow" else self.prediction_type
        return f"{self.scheduler} -> {proc}; network output {out}, field kind {self.kind}"

    def _s(self, t):
        """The scheduler's own noise level at ``t``: its sigma (flow, edm)."""
        return self.process.sigma(t)

    def timestep(self, t: Float[ArrayLike, ""]) -> Array:
        """The network's timestep argument at wgfm time ``t``: ``t K - 1`` for DDPM-family betas,
        ``sigma_t K`` for flow matching, ``log(sigma_t) / 4`` for EDM.

        Args:
            t: the wgfm time, a scalar.

        Returns:
            The timestep, a scalar.
        """
        t = jnp.asarray(t)
        if self.family == "flow":
            return self._s(t) * self.num_train_timesteps
        if self.family == "edm":
            return 0.25 * jnp.log(self._s(t))
        return t * self.num_train_timesteps - 1

    def model_input(self, x: Array, t: Float[ArrayLike, ""]) -> Array:
        """What the network receives for the sample ``x`` at ``t`` (EDM's ``c_in x``; else ``x``).

        Args:
            x: one sample, any shape.
            t: the wgfm time, a scalar.

        Returns:
            The network's input, shaped like ``x``.
        """
        if self.family == "edm":
            return x / jnp.sqrt(self._s(t) ** 2 + self.sigma_data**2).astype(x.dtype)
        return x

    def value(self, x: Array, out: Array, t: Float[ArrayLike, ""]) -> Array:
        """The field value of :attr:`kind` from the network output ``out`` at ``(x, t)``: the flow
        velocity in wgfm time, EDM's preconditioned x0, or eps (a v-prediction converted,
        ``eps = sigma_t x + alpha_t v``).

        Args:
            x: one sample, any shape.
            out: the network's output for it, shaped like ``x``.
            t: the wgfm time, a scalar.

        Returns:
            The field value, shaped like ``x``.
        """
        t = jnp.asarray(t, x.dtype)
        if self.family == "flow":
            # dx/dt = (dx/ds)(ds/dt): the network predicts dx/ds = eps - x0.
            return self.process.dsigma(t) * out
        if self.family == "edm":
            s, sd = self._s(t), self.sigma_data
            c_skip = sd**2 / (s**2 + sd**2)
            c_out = s * sd / jnp.sqrt(s**2 + sd**2)
            sign = -1.0 if self.prediction_type == "v_prediction" else 1.0
            return c_skip * x + sign * c_out * out
        if self.prediction_type == "v_prediction":
            # v = alpha eps - sigma x0 and x = alpha x0 + sigma eps give eps = sigma x + alpha v.
            return self.process.sigma(t) * x + self.process.alpha(t) * out
        return out


def scheduler_map(config: dict, *, mu: float | None = None) -> SchedulerMap:
    """The :class:`SchedulerMap` of a diffusers scheduler config (module docstring): the wgfm
    process and how the network's outputs and timesteps map onto it.

    Options that only choose the sampler's grid (``timestep_spacing``, ``use_karras_sigmas``,
    ``shift_terminal``, ...) do not change the process.

    Args:
        config: the scheduler's ``scheduler_config.json`` as a dict (``_class_name``,
            ``num_train_timesteps``, betas or shift, ``prediction_type``, ...).
        mu: the resolution-dependent shift of a flow-matching scheduler with
            ``use_dynamic_shifting`` (what its pipeline passes to ``set_timesteps``); required
            there and refused elsewhere.

    Returns:
        The :class:`SchedulerMap`: a discrete VP of the betas, a (shifted) linear interpolant,
        or EDM's VE, with the prediction type and the number of training steps.

    Raises:
        ValueError: a scheduler that is not mapped (consistency models, no betas, log-sigma
            timesteps, inverted sigmas), an unknown prediction type, a missing or misplaced
            ``mu``, or fewer than 2 training steps.
    """
    name = config.get("_class_name", "DDPMScheduler")
    k = int(config.get("num_train_timesteps", 1000))
    if k < 2:
        raise ValueError(f"scheduler `num_train_timesteps` must be >= 2, got {k}.")
    flows = name in FLOW_SCHEDULERS or config.get("use_flow_sigmas")
    if mu is not None and not (flows and config.get("use_dynamic_shifting")):
        raise ValueError(
            f"`mu` applies to a flow-matching scheduler with `use_dynamic_shifting`; {name} "
            "has none."
        )
    if name in CONSISTENCY_SCHEDULERS:
        raise ValueError(
            f"scheduler {name!r} samples a consistency-distilled model: its network jumps to the "
            "data in few steps and defines no score or velocity of a noising process."
        )
    if name in FLOW_SCHEDULERS or config.get("use_flow_sigmas"):
        return _flow_map(name, config, k, mu)
    if name in EDM_SCHEDULERS:
        return _edm_map(name, config, k)
    if (
        "beta_schedule" not in config
        and config.get("trained_betas") is None
        and name not in ("DDPMScheduler", "DDIMScheduler")
    ):
        raise ValueError(f"scheduler {name!r} is not defined by betas; it cannot be mapped.")
    if config.get("timestep_type", "discrete") != "discrete":
        raise ValueError(
            f"scheduler {name!r} has `timestep_type` {config['timestep_type']!r}: its network "
            "takes log-sigma timesteps, which only 'discrete' betas schedulers are mapped for."
        )
    prediction_type = config.get("prediction_type", "epsilon")
    if prediction_type not in PREDICTION_KINDS:
        raise ValueError(
            f"scheduler `prediction_type` must be one of {tuple(PREDICTION_KINDS)}, got {prediction_type!r}."
        )
    process = DiscreteVP.from_betas(scheduler_betas(config))
    return SchedulerMap(process, "betas", prediction_type, process.num_steps, name)


def scheduler_process(config: dict) -> tuple[AbstractProcess, str]:
    """The process and prediction type of a diffusers scheduler config (:func:`scheduler_map`).

    Args:
        config: the scheduler's config as a dict.

    Returns:
        ``(process, prediction_type)``.

    Raises:
        ValueError: as :func:`scheduler_map`.
    """
    m = scheduler_map(config)
    return m.process, m.prediction_type


def _flow_map(name: str, config: dict, k: int, mu: float | None) -> SchedulerMap:
    if config.get("invert_sigmas", False):
        raise ValueError(
            f"scheduler {name!r} has `invert_sigmas`: its network's timestep runs the other way, "
            "which is not mapped."
        )
    default = "flow_prediction" if name in FLOW_SCHEDULERS else "epsilon"
    prediction_type = config.get("prediction_type", default)
    if prediction_type not in ("flow_prediction", "velocity"):
        raise ValueError(
            f"scheduler {name!r}: `prediction_type` {prediction_type!r} is not a flow velocity."
        )
    if config.get("use_dynamic_shifting", False):
        if mu is None:
            raise ValueError(
                f"scheduler {name!r} uses `use_dynamic_shifting`: its shift depends on the image "
                "size; pass `mu` (what the pipeline gives `set_timesteps`)."
            )
        # Both time_shift forms are s -> c s / (1 + (c - 1) s): exponential with c = e^mu,
        # linear with c = mu.
        linear = config.get("time_shift_type", "exponential") == "linear"
        shift = float(mu) if linear else math.exp(float(mu))
    elif name in FLOW_SCHEDULERS:
        shift = float(config.get("shift", 1.0))
    else:
        # DPM-Solver or UniPC with use_flow_sigmas (Sana): the same shifted grid, flow_shift.
        shift = float(config.get("flow_shift", 1.0))
    if not shift > 0:
        raise ValueError(f"scheduler {name!r}: the shift must be positive, got {shift}.")
    # Steps k = 1..K sit at t = k/K; the last is pure noise (alpha = 0), outside the process.
    t_min, t_max = 1.0 / k, (k - 1.0) / k
    process = (
        LinearInterpolant(t_min=t_min, t_max=t_max)
        if shift == 1.0
        else ShiftedInterpolant(shift=shift, t_min=t_min, t_max=t_max)
    )
    return SchedulerMap(process, "flow", "flow_prediction", k, name)


def _edm_map(name: str, config: dict, k: int) -> SchedulerMap:
    prediction_type = config.get("prediction_type", "epsilon")
    if prediction_type not in ("epsilon", "v_prediction"):
        raise ValueError(
            f"scheduler {name!r}: `prediction_type` must be 'epsilon' or 'v_prediction' (EDM's "
            f"preconditioned outputs), got {prediction_type!r}."
        )
    s_min, s_max = float(config.get("sigma_min", 0.002)), float(config.get("sigma_max", 80.0))
    # t in [0, 1] is log-sigma: the diagnosis' levels cover the whole range.
    process = VE(sigma_min=s_min, sigma_max=s_max, t_min=1.0 / k, t_max=1.0)
    sd = float(config.get("sigma_data", 0.5))
    return SchedulerMap(process, "edm", prediction_type, k, name, sd)


def scheduler_betas(config: dict) -> np.ndarray:
    """The per-step betas of a diffusers scheduler config, as its ``__init__`` builds them
    (diffusers stores them in float32; here they are exact): linear, scaled linear, GLIDE's
    cosine, sigmoid or ``trained_betas``, with CogVideoX's SNR shift and the zero-terminal-SNR
    rescaling where the config asks for them.

    Args:
        config: the scheduler's config as a dict.

    Returns:
        The betas, float64, shape ``(K,)`` with ``K = num_train_timesteps``.

    Raises:
        ValueError: an unsupported ``beta_schedule``.
    """
    k = int(config.get("num_train_timesteps", 1000))
    b0, b1 = float(config.get("beta_start", 1e-4)), float(config.get("beta_end", 0.02))
    schedule = config.get("beta_schedule", "linear")
    if config.get("trained_betas") is not None:
        betas = np.asarray(config["trained_betas"], np.float64)
    elif schedule == "linear":
        betas = np.linspace(b0, b1, k)
    elif schedule == "scaled_linear":
        betas = np.linspace(math.sqrt(b0), math.sqrt(b1), k) ** 2
    elif schedule == "squaredcos_cap_v2":
        f = lambda s: np.cos((s + 0.008) / 1.008 * np.pi / 2) ** 2  # noqa: E731  (GLIDE cosine)
        i = np.arange(k, dtype=np.float64)
        betas = np.minimum(1 - f((i + 1) / k) / f(i / k), 0.999)
    elif schedule == "sigmoid":
        betas = 1 / (1 + np.exp(-np.linspace(-6.0, 6.0, k))) * (b1 - b0) + b0
    else:
        raise ValueError(
            f"scheduler `beta_schedule` {schedule!r} is not supported "
            "('linear', 'scaled_linear', 'squaredcos_cap_v2', 'sigmoid' or `trained_betas`)."
        )
    shift = config.get("snr_shift_scale")
    if shift is not None and float(shift) != 1.0:
        # CogVideoX's schedulers divide the SNR by snr_shift_scale (alphabar / (s + (1 - s)
        # alphabar)) before any zero-SNR rescaling: betas of the shifted alphabar.
        ab = np.cumprod(1 - betas)
        ab = ab / (float(shift) + (1 - float(shift)) * ab)
        betas = 1 - np.concatenate([ab[:1], ab[1:] / ab[:-1]])
    if config.get("rescale_betas_zero_snr", False):
        betas = _rescale_zero_terminal_snr(betas)
    return betas


def _rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Lin et al. (2024), Algorithm 1: shift and scale sqrt(alphabar) so the last step has SNR 0."""
    s = np.sqrt(np.cumprod(1 - betas))
    s = (s - s[-1]) * s[0] / (s[0] - s[-1])
    ab = s**2
    return 1 - np.concatenate([ab[:1], ab[1:] / ab[:-1]])
