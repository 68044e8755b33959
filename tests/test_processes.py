"""Forward processes against hand-derived closed forms, autodiff identities and Monte Carlo."""

import math

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest
from scipy import stats

from wgfm import processes as P

T_GRID = np.array([0.05, 0.2, 0.5, 0.8])


def _times(proc):
    return proc.t_min + (proc.t_max - proc.t_min) * T_GRID


def _sig(z):
    return 1 / (1 + np.exp(-z))


# Hand-derived (alpha, sigma, dlog_alpha, g^2) in NumPy float64, written independently of the
# implementation: docs/design.md §1 table.
def reference(name, t):
    if name in ("vp", "sub-vp"):
        bmin, bmax = 0.1, 20.0
        B = bmin * t + 0.5 * (bmax - bmin) * t**2
        beta = bmin + (bmax - bmin) * t
        a = np.exp(-B / 2)
        if name == "vp":
            return a, np.sqrt(1 - a**2), -beta / 2, beta
        return a, 1 - a**2, -beta / 2, beta * (1 - a**4)
    if name == "ou":
        return np.exp(-t / 2), np.sqrt(1 - np.exp(-t)), -0.5 + 0 * t, 1.0 + 0 * t
    if name == "vp-cosine":
        s = 0.008
        f = lambda u: np.cos((u + s) / (1 + s) * np.pi / 2) ** 2  # noqa: E731
        ab = f(t) / f(0.0)
        dlog = -np.tan((t + s) / (1 + s) * np.pi / 2) * np.pi / 2 / (1 + s)
        return np.sqrt(ab), np.sqrt(1 - ab), dlog, -2 * dlog
    if name == "vp-sigmoid":
        ab = (_sig(3) - _sig(6 * t - 3)) / (_sig(3) - _sig(-3))
        dab = -_sig(6 * t - 3) * (1 - _sig(6 * t - 3)) * 6 / (_sig(3) - _sig(-3))
        return np.sqrt(ab), np.sqrt(1 - ab), 0.5 * dab / ab, -dab / ab
    if name == "ve":
        s = 0.01 * (50 / 0.01) ** t
        return 1 + 0 * t, s, 0 * t, s**2 * 2 * np.log(50 / 0.01)
    if name == "interpolant":
        return 1 - t, t, -1 / (1 - t), 2 * t / (1 - t)
    if name == "edm":
        return 1 + 0 * t, t, 0 * t, 2 * t
    raise KeyError(name)


@pytest.mark.parametrize("name", list(P.ALL_PROCESSES))
def test_schedules_match_hand_formulas(name):
    proc = P.ALL_PROCESSES[name]()
    t = _times(proc)
    got = [
        np.asarray(f(jnp.asarray(t))) for f in (proc.alpha, proc.sigma, proc.dlog_alpha, proc.g2)
    ]
    for g, r in zip(got, reference(name, t), strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", list(P.ALL_PROCESSES))
def test_g2_identity_by_autodiff(name):
    """g^2 = d(sigma^2)/dt - 2 (d log alpha/dt) sigma^2, and dalpha/dsigma match autodiff."""
    proc = P.ALL_PROCESSES[name]()
    for t in _times(proc):
        t = jnp.float64(t)
        dlog_alpha = jax.grad(lambda u: jnp.log(proc.alpha(u)))(t)
        dsig2 = jax.grad(lambda u: proc.sigma(u) ** 2)(t)
        g2 = dsig2 - 2 * dlog_alpha * proc.sigma(t) ** 2
        np.testing.assert_allclose(proc.dlog_alpha(t), dlog_alpha, rtol=1e-10)
        np.testing.assert_allclose(proc.g2(t), g2, rtol=1e-9)
        np.testing.assert_allclose(proc.dalpha(t), jax.grad(proc.alpha)(t), rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(proc.dsigma(t), jax.grad(proc.sigma)(t), rtol=1e-9)


@pytest.mark.parametrize("name", ["vp", "ou", "vp-cosine", "vp-sigmoid", "sub-vp", "ve", "edm"])
def test_drift_and_diffusion(name):
    proc = P.ALL_PROCESSES[name]()
    x = jnp.array([1.5, -2.0, 0.25])
    t = jnp.float64(_times(proc)[1])
    np.testing.assert_allclose(proc.drift(x, t), proc.dlog_alpha(t) * x, rtol=1e-14)
    np.testing.assert_allclose(proc.diffusion(t) ** 2, proc.g2(t), rtol=1e-12)
    assert proc.has_sde


def test_interpolant_has_no_sde():
    proc = P.LinearInterpolant()
    assert not proc.has_sde
    with pytest.raises(ValueError, match="not a forward SDE"):
        proc.drift(jnp.ones(2), 0.5)
    with pytest.raises(ValueError, match="not a forward SDE"):
        proc.diffusion(0.5)


def test_small_t_is_accurate():
    """sigma uses expm1 / product forms, so it keeps full relative precision as t -> 0."""
    for proc, expected in [
        (P.VP(), lambda t: math.sqrt(0.1 * t)),
        (P.SubVP(), lambda t: 0.1 * t),
        (P.OU(), lambda t: math.sqrt(t)),
    ]:
        t = 1e-9
        np.testing.assert_allclose(float(proc.sigma(jnp.float64(t))), expected(t), rtol=1e-6)
    t32 = jnp.float32(1e-6)
    s = P.VPCosine().sigma(t32)
    assert s.dtype == jnp.float32 and np.isfinite(float(s)) and float(s) > 0


@pytest.mark.parametrize("name", list(P.ALL_PROCESSES))
def test_sample_marginal_moments(name):
    proc = P.ALL_PROCESSES[name]()
    t = jnp.float64(_times(proc)[2])
    x0 = jnp.array([1.0, -2.0])
    n = 20000
    xt, eps = jax.vmap(lambda k: proc.sample_marginal(x0, t, key=k))(
        jax.random.split(jax.random.key(0), n)
    )
    np.testing.assert_allclose(xt, proc.alpha(t) * x0 + proc.sigma(t) * eps, rtol=1e-12)
    # 4 standard errors of the mean and of the variance (var SE = sqrt(2/n) sigma^2).
    s = float(proc.sigma(t))
    np.testing.assert_allclose(xt.mean(0), proc.alpha(t) * x0, atol=4 * s / math.sqrt(n))
    np.testing.assert_allclose(xt.var(0), s**2, rtol=4 * math.sqrt(2 / n))


@pytest.mark.parametrize("name", ["vp", "sub-vp", "ve"])
def test_euler_maruyama_reproduces_marginal(name):
    """A diffrax Euler–Maruyama simulation of dx = f dt + g dW matches N(alpha x0, sigma^2)."""
    proc = P.ALL_PROCESSES[name]()
    t1, n_paths, n_steps = 0.6, 4000, 300
    x0 = jnp.array([1.0, -0.5])

    def simulate(key):
        drift = diffrax.ODETerm(lambda t, y, _: proc.drift(y, t))
        # Fixed steps, each increment drawn once: diffrax's UnsafeBrownianPath is exact here
        # and costs one normal draw per step (a VirtualBrownianTree descends a tree each).
        bm = diffrax.UnsafeBrownianPath(shape=(2,), key=key)
        diff = diffrax.ControlTerm(
            lambda t, y, _: lx.DiagonalLinearOperator(proc.diffusion(t) * jnp.ones(2)), bm
        )
        terms = diffrax.MultiTerm(drift, diff)
        sol = diffrax.diffeqsolve(
            terms,
            diffrax.Euler(),
            0.0,
            t1,
            dt0=t1 / n_steps,
            y0=x0,
            saveat=diffrax.SaveAt(t1=True),
            adjoint=diffrax.ForwardMode(),  # no gradients taken; the unsafe path requires it
        )
        return sol.ys[-1]  # type: ignore[index]

    xs = eqx.filter_jit(jax.vmap(simulate))(jax.random.split(jax.random.key(1), n_paths))
    a, s = float(proc.alpha(t1)), float(proc.sigma(t1))
    # Tolerance: 4 Monte-Carlo standard errors plus the O(dt) weak error of Euler–Maruyama,
    # bounded by dt * max|d log alpha/dt| (2% for VP/sub-VP at beta_max=20, dt=0.002).
    em = t1 / n_steps * 20.0 / 2
    np.testing.assert_allclose(xs.mean(0), a * x0, atol=4 * s / math.sqrt(n_paths) + em)
    np.testing.assert_allclose(xs.var(0), s**2, rtol=4 * math.sqrt(2 / n_paths) + 2 * em)


@pytest.mark.parametrize("name", list(P.ALL_PROCESSES))
def test_prior_log_density_matches_scipy(name):
    proc = P.ALL_PROCESSES[name]()
    x = jnp.array([0.3, -1.2, 2.0])
    s = float(proc.sigma(proc.t_max)) if name != "interpolant" else 1.0
    ref = stats.norm(scale=s).logpdf(np.asarray(x)).sum()
    np.testing.assert_allclose(proc.prior_log_density(x), ref, rtol=1e-12)
    xs = proc.prior_sample((5000, 2), key=jax.random.key(2))
    np.testing.assert_allclose(xs.std(), s, rtol=4 * math.sqrt(1 / 10000) * 1.5)


def test_discrete_sigmoid_schedule():
    proc = P.VPSigmoid()
    t, ab = proc.discrete_schedule(1000)
    assert t.shape == ab.shape == (1000,)
    np.testing.assert_allclose(t[[0, -1]], [1e-3, 1.0])
    # Wherever no beta was clipped, alphabar_k equals the continuous schedule at t_k.
    ref = reference("vp-sigmoid", t[:-1])[0] ** 2
    np.testing.assert_allclose(ab[:-1], ref, rtol=1e-9)
    # The last step would have beta = 1 and is clipped at 0.999.
    np.testing.assert_allclose(ab[-1] / ab[-2], 1 - 0.999, rtol=1e-12)
    assert np.all(np.diff(ab) < 0)
    tc, abc = P.discrete_schedule(P.VPCosine(), 50)
    np.testing.assert_allclose(abc[:-1], reference("vp-cosine", tc[:-1])[0] ** 2, rtol=1e-9)


def test_jit_equals_eager_and_dtypes():
    for name, cls in P.ALL_PROCESSES.items():
        proc = cls()
        t = _times(proc)[1]
        for f in (proc.alpha, proc.sigma, proc.dlog_alpha, proc.g2, proc.dsigma):
            np.testing.assert_allclose(jax.jit(f)(t), f(t), rtol=1e-12, err_msg=name)
            out32 = f(jnp.float32(t))
            assert out32.dtype == jnp.float32, (name, f)
            np.testing.assert_allclose(out32, f(jnp.float64(t)), rtol=1e-4, err_msg=name)
            assert f(jnp.float64(t)).dtype == jnp.float64


def test_vmap_equals_loop():
    proc = P.VPSigmoid()
    ts = jnp.asarray(_times(proc))
    np.testing.assert_allclose(jax.vmap(proc.sigma)(ts), [proc.sigma(t) for t in ts], rtol=1e-14)


@pytest.mark.parametrize(
    "ctor, match",
    [
        (lambda: P.VP(beta_min=5.0, beta_max=1.0), "beta_min"),
        (lambda: P.VP(beta_min=-0.1), "beta_min"),
        (lambda: P.OU(beta=0.0), "beta"),
        (lambda: P.VE(sigma_min=5.0, sigma_max=1.0), "sigma_min"),
        (lambda: P.VE(sigma_min=-1.0), "sigma_min"),
        (lambda: P.VPSigmoid(start=3.0, end=-3.0), "start"),
        (lambda: P.VPSigmoid(tau=0.0), "tau"),
        (lambda: P.VPCosine(t_max=1.0), "t_max"),
        (lambda: P.EDM(t_min=10.0, t_max=1.0), "t_min"),
        (lambda: P.LinearInterpolant(t_max=1.0), "t_max"),
    ],
)
def test_bad_parameters(ctor, match):
    with pytest.raises(ValueError, match=match):
        ctor()


def test_time_outside_interval():
    with pytest.raises(ValueError, match=r"`t` must lie in \[0.0, 1.0\]"):
        P.VP().sample_marginal(jnp.zeros(2), 1.5, key=jax.random.key(0))
    with pytest.raises(ValueError, match="`t`"):
        P.VPCosine().check_time(-0.1)
    with pytest.raises(ValueError, match="num_steps"):
        P.VPSigmoid().discrete_schedule(1)
