"""wgfm.interop.schedulers against diffusers' schedulers themselves, at every step: each
scheduler's ``add_noise`` / ``scale_noise`` is the mapped process's ``alpha_t x0 + sigma_t eps``,
its network timestep and input scaling are the map's, and its ``step`` given the exact
prediction for one clean point lands on the process's next marginal sample (so the field's kind
and time convention are the scheduler's). Also :class:`wgfm.processes.ShiftedInterpolant`
against its closed forms."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wgfm import as_field
from wgfm.interop import scheduler_map
from wgfm.processes import VE, DiscreteVP, LinearInterpolant, ShiftedInterpolant

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

SHAPE = (2, 3, 4, 4)


def _points(seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(SHAPE), rng.standard_normal(SHAPE)


def _marginal(process, x0, noise, t) -> np.ndarray:
    t = jnp.float64(t)
    return np.asarray(process.alpha(t)) * x0 + np.asarray(process.sigma(t)) * noise


def _t(a) -> torch.Tensor:
    return torch.from_numpy(np.asarray(a, np.float64))


def _map(sched, **kw):
    # As scheduler_config.json holds it: the config with its class name.
    return scheduler_map({**sched.config, "_class_name": type(sched).__name__}, **kw)


# ---------------------------------------------------------------------------------------------
# ShiftedInterpolant


@pytest.mark.parametrize("shift", [1.0, 3.0, 0.4])
def test_shifted_interpolant_closed_forms(shift):
    p = ShiftedInterpolant(shift=shift)
    t = jnp.linspace(0.0, 0.995, 41)
    s = shift * t / (1 + (shift - 1) * t)
    np.testing.assert_allclose(jax.vmap(p.sigma)(t), s, rtol=1e-14, atol=1e-16)
    np.testing.assert_allclose(jax.vmap(p.alpha)(t), 1 - s, rtol=1e-13, atol=1e-15)
    inner = t[1:]
    ds = jax.vmap(jax.grad(p.sigma))(inner)
    np.testing.assert_allclose(jax.vmap(p.dsigma)(inner), ds, rtol=1e-12)
    dlog = jax.vmap(jax.grad(lambda u: jnp.log(p.alpha(u))))(inner)
    np.testing.assert_allclose(jax.vmap(p.dlog_alpha)(inner), dlog, rtol=1e-12)
    np.testing.assert_allclose(jax.vmap(p.dalpha)(inner), -ds, rtol=1e-12)
    # g^2 = d(sigma^2)/dt - 2 (d log alpha/dt) sigma^2, and the generic dsigma from it.
    g2 = jax.vmap(jax.grad(lambda u: p.sigma(u) ** 2))(inner) - 2 * dlog * (s[1:] ** 2)
    np.testing.assert_allclose(jax.vmap(p.g2)(inner), g2, rtol=1e-12)
    np.testing.assert_allclose(jax.vmap(p.time_of_sigma)(s), t, rtol=1e-13, atol=1e-16)
    assert not p.has_sde
    if shift == 1.0:
        lin = LinearInterpolant()
        for f in ("alpha", "sigma", "dlog_alpha", "g2", "dsigma"):
            np.testing.assert_allclose(
                jax.vmap(getattr(p, f))(inner), jax.vmap(getattr(lin, f))(inner), rtol=1e-12
            )


def test_shifted_interpolant_checks():
    with pytest.raises(ValueError, match="shift"):
        ShiftedInterpolant(shift=0.0)
    with pytest.raises(ValueError, match="t_max"):
        ShiftedInterpolant(shift=2.0, t_max=1.0)
    with pytest.raises(ValueError, match="t"):
        ShiftedInterpolant(shift=2.0).alpha(1.0)


# ---------------------------------------------------------------------------------------------
# The betas family


BETAS = [
    ("DDPMScheduler", dict(beta_schedule="linear", prediction_type="epsilon")),
    ("DDIMScheduler", dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)),
    ("DPMSolverMultistepScheduler", dict(beta_schedule="squaredcos_cap_v2")),
    ("PNDMScheduler", dict(beta_schedule="linear", num_train_timesteps=500)),
    ("DDIMScheduler", dict(rescale_betas_zero_snr=True, prediction_type="v_prediction")),
]


@pytest.mark.parametrize("name, cfg", BETAS, ids=lambda v: v if isinstance(v, str) else "")
def test_betas_add_noise_at_every_step(name, cfg):
    sched = getattr(diffusers, name)(**cfg)
    m = _map(sched)
    assert isinstance(m.process, DiscreteVP) and m.kind == "eps"
    k = sched.config.num_train_timesteps
    x0, noise = (a[:1] for a in _points())
    steps = np.arange(k - 1 if cfg.get("rescale_betas_zero_snr") else k)
    # DPM-Solver's add_noise looks its sigmas up on the inference grid (float32 sigmas).
    grid = name == "DPMSolverMultistepScheduler"
    if grid:
        sched.set_timesteps(k)
        steps = sched.timesteps.numpy()
        assert len(set(steps)) >= k - 1
    n = len(steps)

    def add_noise():
        return sched.add_noise(
            _t(x0).expand(n, -1, -1, -1), _t(noise).expand(n, -1, -1, -1), torch.from_numpy(steps)
        ).numpy()

    def marginals(process):
        tt = jnp.asarray(t)
        a = np.asarray(jax.vmap(process.alpha)(tt))[:, None, None, None]
        s = np.asarray(jax.vmap(process.sigma)(tt))[:, None, None, None]
        return a * x0 + s * noise

    t = (steps + 1) / k
    ref = add_noise()
    # diffusers keeps alphas_cumprod in float32 (a K-term float32 cumprod: <= K 2^-24 = 6e-5
    # relative); ours is exact. 1e-4 of the sample's scale.
    np.testing.assert_allclose(marginals(m.process), ref, rtol=0, atol=1e-4 * np.abs(ref).max())
    if grid:
        return
    # With the scheduler's own betas cumulated in float64, the per-step map is exact.
    sched.alphas_cumprod = torch.cumprod(1 - sched.betas.double(), 0)
    exact = DiscreteVP.from_betas(sched.betas.double().numpy(), t_max=m.process.t_max)
    np.testing.assert_allclose(marginals(exact), add_noise(), rtol=1e-12, atol=1e-12)
    # The network's timestep at t_k is k.
    np.testing.assert_allclose(jax.vmap(m.timestep)(jnp.asarray(t)), steps, atol=1e-9)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_ddim_step_with_mapped_prediction_at_every_step(prediction_type):
    """DDIM (eta = 0) fed the exact prediction for one clean point steps from the process's
    marginal at t_k to its marginal at t_{k-1}, at every one of the 1000 steps; the map turns
    the scheduler's prediction into the field kind that wgfm converts back to the same."""
    sched = diffusers.DDIMScheduler(
        beta_schedule="squaredcos_cap_v2", prediction_type=prediction_type, clip_sample=False
    )
    sched.alphas_cumprod = torch.cumprod(1 - sched.betas.double(), 0)  # exact, as ours
    sched.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
    sched.set_timesteps(1000)
    m = _map(sched)
    p = DiscreteVP.from_betas(sched.betas.double().numpy())
    m = type(m)(p, m.family, m.prediction_type, m.num_train_timesteps, m.scheduler)
    x0, noise = _points(1)
    x0_field = as_field(p, lambda x, t: jnp.asarray(x0), kind="x0", to=m.kind)
    ks = sched.timesteps.numpy()
    ts = jnp.asarray((ks + 1) / 1000)
    # Every step at once on the JAX side (vmap); the scheduler steps one by one.
    a = np.asarray(jax.vmap(p.alpha)(ts))[:, None, None, None, None]
    s = np.asarray(jax.vmap(p.sigma)(ts))[:, None, None, None, None]
    xs = a * x0 + s * noise
    outs = {"epsilon": noise + 0 * xs, "sample": x0 + 0 * xs, "v_prediction": a * noise - s * x0}[
        prediction_type
    ]
    got = jax.vmap(m.value)(jnp.asarray(xs), jnp.asarray(outs), ts)
    want = jax.vmap(x0_field)(jnp.asarray(xs), ts)
    # An x0 -> eps conversion divides by sigma_t: 1e-9 of x / sigma_t.
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9 * (1 + 1 / s.min()))
    worst = 0.0
    for i, k in enumerate(ks):
        prev = sched.step(_t(outs[i]), int(k), _t(xs[i]), eta=0.0).prev_sample.numpy()
        nxt = x0 if k == 0 else _marginal(p, x0, noise, k / 1000)
        worst = max(worst, float(np.abs(prev - nxt).max()))
    assert worst < 1e-9, worst


@pytest.mark.parametrize("cls", ["EulerDiscreteScheduler", "HeunDiscreteScheduler"])
def test_euler_family_is_the_vp_process_in_ve_form(cls):
    """The Euler family writes x0 + s eps (s = sigma/alpha) and feeds the network
    x / sqrt(s^2 + 1): exactly the VP sample the map gives, at every training step."""
    sched = getattr(diffusers, cls)(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012
    )
    m = _map(sched)
    sched.set_timesteps(1000)  # `linspace` spacing: the training steps 999 .. 0
    x0, noise = _points(2)
    t_all = jnp.arange(1, 1001) / 1000
    a = np.asarray(jax.vmap(m.process.alpha)(t_all))
    s = np.asarray(jax.vmap(m.process.sigma)(t_all))
    worst = 0.0
    seen = set()
    for ts in sched.timesteps:
        if float(ts) in seen:  # Heun repeats each step for its second stage
            continue
        seen.add(float(ts))
        k = float(ts)
        assert k == round(k)
        sched._step_index = None
        xs = sched.add_noise(_t(x0), _t(noise), ts.expand(SHAPE[0]))
        sched._step_index = None
        inp = sched.scale_model_input(xs, ts).numpy()
        ours = a[int(k)] * x0 + s[int(k)] * noise  # step k at t = (k + 1)/K
        worst = max(worst, float(np.abs(inp - ours).max()))
    # diffusers' sigmas are float32 (from the float32 alphas_cumprod): 1e-4 of the scale.
    assert len(seen) == 1000 and worst < 1e-4, worst


def test_betas_errors():
    with pytest.raises(ValueError, match="timestep_type"):
        _map(diffusers.EulerDiscreteScheduler(timestep_type="continuous"))
    with pytest.raises(ValueError, match="not defined by betas"):
        scheduler_map({"_class_name": "ScoreSdeVeScheduler", "sigma_max": 50.0})
    with pytest.raises(ValueError, match="`mu`"):
        scheduler_map({}, mu=0.5)


# ---------------------------------------------------------------------------------------------
# Flow matching


FLOWS = [
    dict(shift=1.0),
    dict(shift=3.0),
    dict(use_dynamic_shifting=True, time_shift_type="exponential"),
    dict(use_dynamic_shifting=True, time_shift_type="linear"),
]


@pytest.mark.parametrize("cfg", FLOWS, ids=lambda c: "-".join(f"{v}" for v in c.values()))
def test_flow_match_scale_noise_and_step_at_every_step(cfg):
    sched = diffusers.FlowMatchEulerDiscreteScheduler(**cfg)
    mu = 0.8 if cfg.get("use_dynamic_shifting") else None
    m = _map(sched, mu=mu)
    shift = (
        1.0
        if mu is None and cfg["shift"] == 1.0
        else cfg.get("shift") or (math.exp(mu) if cfg["time_shift_type"] == "exponential" else mu)
    )
    p = m.process
    assert m.kind == "velocity" and m.family == "flow"
    if shift == 1.0:
        assert isinstance(p, LinearInterpolant)
    else:
        assert isinstance(p, ShiftedInterpolant) and p.shift == pytest.approx(shift, rel=1e-15)
    k = 1000
    steps = np.arange(1, k)
    # The training grid: step k at t = k/K (diffusers' sigmas are float32: 1e-6 relative).
    if mu is None:
        train = sched.sigmas.double().numpy()[::-1][:-1]  # sigma at k = 1 .. K-1
    else:
        sched.set_timesteps(k, mu=mu)
        train = sched.sigmas.double().numpy()[:-1][::-1][:-1]
    np.testing.assert_allclose(
        jax.vmap(p.sigma)(jnp.asarray(steps / k)), train, rtol=2e-6, atol=1e-9
    )
    # Inference: scale_noise, the network timestep and step, at every one of 50 steps.
    sched.set_timesteps(50, mu=mu)
    x0, noise = _points(3)
    x0_velocity = as_field(p, lambda x, t: jnp.asarray(x0), kind="x0", to="velocity")
    sigmas = sched.sigmas.double().numpy()
    for i, ts in enumerate(sched.timesteps):
        s = sigmas[i]
        t = s if isinstance(p, LinearInterpolant) else float(p.time_of_sigma(s))
        sched._step_index = None
        xs = sched.scale_noise(_t(x0), ts.reshape(1), _t(noise)).numpy()
        x = _marginal(p, x0, noise, min(t, p.t_max))
        if s < 1:
            np.testing.assert_allclose(xs, x, rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(float(m.timestep(t)), float(ts), rtol=1e-6)
        else:  # sigma = 1 (the first step of a shifted grid): pure noise, alpha = 0
            np.testing.assert_allclose(xs, noise, rtol=0, atol=0)
            x = noise
        # The exact network output for one clean point is eps - x0; the map turns it into the
        # process's velocity, which the scheduler's Euler step integrates exactly.
        u = noise - x0
        if s < 1:
            np.testing.assert_allclose(
                m.value(jnp.asarray(x), jnp.asarray(u), t),
                x0_velocity(jnp.asarray(x), t),
                rtol=1e-10,
                atol=1e-10,
            )
        sched._step_index = i
        prev = sched.step(_t(u), ts, _t(x)).prev_sample.numpy()
        nxt = sigmas[i + 1] * noise + (1 - sigmas[i + 1]) * x0
        # step() upcasts to float32: a few roundings of 2^-24 of the sample's scale.
        np.testing.assert_allclose(prev, nxt, rtol=0, atol=1e-6 * np.abs(x).max())


def test_flow_match_errors():
    with pytest.raises(ValueError, match="`mu`"):
        _map(diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True))
    with pytest.raises(ValueError, match="invert_sigmas"):
        _map(diffusers.FlowMatchEulerDiscreteScheduler(invert_sigmas=True))
    heun = _map(diffusers.FlowMatchHeunDiscreteScheduler(shift=2.0))
    assert isinstance(heun.process, ShiftedInterpolant) and heun.process.shift == 2.0


# ---------------------------------------------------------------------------------------------
# EDM


EDMS = [
    ("EDMEulerScheduler", dict(sigma_schedule="karras")),
    ("EDMEulerScheduler", dict(sigma_schedule="exponential", prediction_type="v_prediction")),
    ("EDMDPMSolverMultistepScheduler", dict(sigma_data=0.7, sigma_min=0.01, sigma_max=50.0)),
]


@pytest.mark.parametrize("name, cfg", EDMS, ids=lambda v: v if isinstance(v, str) else "")
def test_edm_preconditioning_add_noise_and_step_at_every_step(name, cfg):
    sched = getattr(diffusers, name)(**cfg)
    m = _map(sched)
    p = m.process
    assert isinstance(p, VE) and m.kind == "x0" and m.family == "edm"
    sd = sched.config.sigma_data
    sched.set_timesteps(40)
    x0, noise = _points(4)
    sigmas = sched.sigmas.double().numpy()
    log_ratio = math.log(p.sigma_max / p.sigma_min)
    for i, ts in enumerate(sched.timesteps):
        s = sigmas[i]
        t = math.log(s / p.sigma_min) / log_ratio
        np.testing.assert_allclose(float(p.sigma(t)), s, rtol=1e-13)
        sched._step_index = None
        xs = sched.add_noise(_t(x0), _t(noise), ts.expand(SHAPE[0])).numpy()
        x = _marginal(p, x0, noise, t)
        np.testing.assert_allclose(xs, x, rtol=1e-12, atol=1e-12)
        # The network timestep c_noise = log(sigma)/4 (diffusers': float32).
        np.testing.assert_allclose(float(m.timestep(t)), float(ts), rtol=1e-6, atol=1e-7)
        sched._step_index = None
        inp = sched.scale_model_input(_t(x), ts).numpy()
        # c_in from the float32 sigma: 2^-24 relative.
        np.testing.assert_allclose(m.model_input(jnp.asarray(x), t), inp, rtol=1e-6)
        f = np.random.default_rng(i).standard_normal(SHAPE)
        ref = sched.precondition_outputs(_t(x), _t(f), s).numpy()
        np.testing.assert_allclose(
            m.value(jnp.asarray(x), jnp.asarray(f), t), ref, rtol=1e-12, atol=1e-12
        )
        # The network output whose preconditioned x0 is the clean point: a step lands on the
        # process's next marginal (a first-order step of a constant x0 is exact).
        sign = -1.0 if m.prediction_type == "v_prediction" else 1.0
        c_skip, c_out = sd**2 / (s**2 + sd**2), sign * s * sd / math.sqrt(s**2 + sd**2)
        exact = (x0 - c_skip * x) / c_out
        np.testing.assert_allclose(
            m.value(jnp.asarray(x), jnp.asarray(exact), t), x0, rtol=1e-10, atol=1e-10
        )
        sched._step_index = i
        prev = sched.step(_t(exact), ts, _t(x)).prev_sample.numpy()
        # step() upcasts to float32: a few roundings of 2^-24 of the sample's scale.
        np.testing.assert_allclose(
            prev, x0 + sigmas[i + 1] * noise, rtol=0, atol=1e-6 * np.abs(x).max()
        )


def test_edm_errors():
    with pytest.raises(ValueError, match="prediction_type"):
        scheduler_map({"_class_name": "EDMEulerScheduler", "prediction_type": "sample"})
