"""wgfm.samplers: DDIM against diffusers' DDIMScheduler loop on Gaussian data (eta = 0 pathwise,
eta = 1 in law), and its dtype behaviour (its schedule is float64 on the host)."""

import jax.numpy as jnp
import numpy as np
import pytest

from wgfm.processes import VPSigmoid
from wgfm.samplers import sample_ddim


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_keeps_float32_under_x64(eta):
    import jax

    x = jnp.ones((3, 2), jnp.float32)
    out = sample_ddim(
        lambda y, t: 0.1 * y,
        VPSigmoid(),
        x,
        kind="eps",
        num_steps=5,
        eta=eta,
        key=jax.random.key(0),
    ).samples
    assert out.dtype == jnp.float32
    if eta > 0:  # the noise draws differ between dtypes
        return
    ref = sample_ddim(
        lambda y, t: 0.1 * y,
        VPSigmoid(),
        x.astype(jnp.float64),
        kind="eps",
        num_steps=5,
        eta=eta,
        key=jax.random.key(0),
    ).samples
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-4, atol=1e-4)


# DDIM against an independent reference: diffusers' DDIMScheduler loop (the paper authors'
# sampler) on the closed-form eps of Gaussian data N(0, S2 I) under the same discrete schedule.
S2, K, STEPS = 0.25, 1000, 20


def _gaussian_eps(ab):
    """Exact eps-prediction of N(0, S2 I) data at alphabar ``ab``: E[eps | x] is linear in x."""
    return lambda x: np.sqrt(1 - ab) * x / (ab * S2 + 1 - ab)


def _diffusers_scheduler():
    torch = pytest.importorskip("torch")
    ddim = pytest.importorskip("diffusers.schedulers.scheduling_ddim")
    _, ab = VPSigmoid().discrete_schedule(K)
    betas = 1.0 - ab / np.concatenate([[1.0], ab[:-1]])
    sched = ddim.DDIMScheduler(
        num_train_timesteps=K,
        trained_betas=betas,
        clip_sample=False,
        set_alpha_to_one=True,
        prediction_type="epsilon",
        timestep_spacing="leading",
        steps_offset=0,
    )
    # diffusers keeps its alphas_cumprod in float32; the reference runs in float64.
    sched.alphas_cumprod = torch.from_numpy(np.asarray(ab, np.float64))
    sched.set_timesteps(STEPS)
    return torch, sched, np.asarray(ab, np.float64)


def _wgfm_ddim(x, eta, key=None):
    import jax

    proc = VPSigmoid()

    def field(y, t):
        ab = proc.alphabar(t)
        return jnp.sqrt(1 - ab) * y / (ab * S2 + 1 - ab)

    return sample_ddim(
        field,
        proc,
        x,
        kind="eps",
        num_steps=STEPS,
        eta=eta,
        key=jax.random.key(0) if key is None else key,
    ).samples


def test_ddim_matches_the_diffusers_scheduler_loop_on_gaussian_data():
    torch, sched, ab = _diffusers_scheduler()
    x = np.random.default_rng(0).standard_normal((64, 3))
    y = torch.from_numpy(x.copy())
    for k in sched.timesteps:
        eps = torch.from_numpy(_gaussian_eps(ab[int(k)])(y.numpy()))
        y = sched.step(eps, int(k), y, eta=0.0, return_dict=False)[0]
    got = np.asarray(_wgfm_ddim(jnp.asarray(x), 0.0))
    # Both in float64 on one schedule: rounding only (the samples are O(1)).
    np.testing.assert_allclose(got, y.numpy(), rtol=1e-10, atol=1e-10)
    # With the exact eps of Gaussian data the deterministic DDIM map is linear: x_0 = C x_T.
    c = got / x
    np.testing.assert_allclose(c, c.flat[0], rtol=1e-10)


def test_ddim_eta_one_has_the_diffusers_steps_mean_and_variance():
    """eta = 1 on Gaussian data: each diffusers step is ``x' = c x + s z`` (c from its step at
    zero noise, s from its posterior variance), so the sample is ``C x_T`` plus Gaussian noise of
    a variance ``V`` the recursion gives: wgfm's samples must match both, not only the dtype."""
    import jax

    torch, sched, ab = _diffusers_scheduler()
    one, c_total, v_total = torch.ones(1, dtype=torch.float64), 1.0, 0.0
    stride = K // STEPS
    for k in sched.timesteps:
        k = int(k)
        eps = torch.from_numpy(_gaussian_eps(ab[k])(one.numpy()))
        zero = torch.zeros(1, dtype=torch.float64)
        c = float(sched.step(eps, k, one, eta=1.0, variance_noise=zero, return_dict=False)[0])
        s2 = float(sched._get_variance(k, k - stride)) if k - stride >= 0 else 0.0
        c_total, v_total = c * c_total, c**2 * v_total + s2
    n = 40_000
    x = np.random.default_rng(1).standard_normal((n, 1))
    got = np.asarray(_wgfm_ddim(jnp.asarray(x), 1.0, jax.random.key(2)))
    resid = (got - c_total * x).ravel()
    # The residual is N(0, V): its mean within 5 s.e., its variance within 5 s.e. of V
    # (var of a sample variance: 2 V^2 / n).
    assert v_total > 0.05
    assert abs(resid.mean()) < 5 * np.sqrt(v_total / n), (resid.mean(), v_total)
    assert abs(resid.var() - v_total) < 5 * v_total * np.sqrt(2 / n), (resid.var(), v_total)


def test_sde_refuses_a_missing_key():
    # The key drives the Brownian motion: without one the sampler must not pick a fixed noise.
    from wgfm.processes import VP
    from wgfm.samplers import sample_sde

    with pytest.raises(ValueError, match="`key` is required"):
        sample_sde(lambda y, t: -y, VP(), jnp.ones((2, 2)), key=None, kind="score")  # type: ignore[arg-type]
