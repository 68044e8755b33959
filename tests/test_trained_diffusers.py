"""wgfm on *trained* diffusers models, not only random weights: a tiny ``UNet2DModel`` (flax
port and ``torch_field``) and a tiny class-conditional ``DiTTransformer2DModel`` (``torch_field``
only), each trained for a few seconds on scikit-learn's 8x8 digits with diffusers' own
``DDPMScheduler.add_noise`` and the standard eps-MSE step (``torch.optim.AdamW``), then loaded
from their saved pipeline directories by ``wgfm.interop.load_diffusers``.

Every number wgfm computes is checked against the same computation done with ``torch.func`` on
the PyTorch model: the forward pass, the exact Jacobian and its asymmetry ratio
``lambda = ||J - J^T||_F / ||J||_F``, and both probe estimators of ``probe_asymmetry`` fed the
same probes. Trained weights matter here: random weights leave every layer at its initial
scale, where training moves attention logits, normalised activations and biases off it (the
fixtures check that the loss fell and the weights moved).

Tolerance, float32 throughout: the port runs the same operations as PyTorch in another order
(XLA's convolutions and reductions against ATen's), and ``torch_field`` runs PyTorch's own
kernels on differently batched inputs, so each layer adds a few ulps (~1e-7 relative) of
independent rounding, accumulated through the ~20 layers of these networks. Measured: the
forward pass, J and lambda agree to ~1e-6 and the VJP estimator to ~3e-7; the forward
estimator ``2 ||Jv||^2 - 2 v.J(Jv)`` cancels (each term is ~2 / lambda^2 times the result)
and agrees to ~7e-6. RTOL = 1e-4 keeps an order of magnitude above the worst of these and is
three orders below the differences the diagnosis reports (trained vs untrained vs Gaussian fit)"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
pytest.importorskip("sklearn")

from test_diagnose import TINY  # noqa: E402
from test_interop_pipelines import DIT as PIPELINE_DIT  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

import wgfm  # noqa: E402
from wgfm.diagnostics import asymmetry, make_probes  # noqa: E402
from wgfm.diagnostics import jacobian as _jacobian  # noqa: E402
from wgfm.diagnostics import probe_asymmetry as _probe_asymmetry  # noqa: E402
from wgfm.interop import diffusers_unet_fn, load_diffusers, torch_field  # noqa: E402

RTOL = 1e-4  # see the module docstring
K = 1000  # DDPMScheduler's training steps
# wgfm times t = (k + 1) / K: step 9 (low noise), 499 and 949.
TIMES = (0.01, 0.5, 0.95)
NUM_PROBES = 8

# The suite's tiny configurations (test_diagnose, test_interop_pipelines) on 1-channel digits.
UNET = {**TINY, "in_channels": 1, "out_channels": 1}
# learned sigma, as DiT-XL-2: wgfm diagnoses the first half
DIT = {**PIPELINE_DIT, "in_channels": 1, "out_channels": 2}
LABEL = 3

# Compiled once per field and shape (eager JAX would dispatch every op of the network anew);
# unchecked, as the finiteness check's host callback keeps a program out of JAX's persistent
# compilation cache (the values are compared with finite references anyway).
jacobian = eqx.filter_jit(functools.partial(_jacobian, checked=False))
probe_asymmetry = eqx.filter_jit(functools.partial(_probe_asymmetry, checked=False))


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    # PyTorch's default thread pool on a small host shared with other jobs oversubscribes the
    # cores: a 64-column Jacobian of the tiny UNet took ~20x longer than on one thread.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _digits():
    x, y = wgfm.data.digits()  # (1797, 8, 8, 1) in [-1, 1]
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))), torch.from_numpy(y)


def _train(model, call, steps: int, seed: int = 0) -> tuple[float, float]:
    """diffusers' standard step: ``DDPMScheduler.add_noise`` at uniform steps, eps-MSE, AdamW.
    ``call(model, x_t, steps, labels)`` gives the eps prediction. Returns the mean loss of the
    first and last tenth of the steps."""
    images, labels = _digits()
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=K)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    model.train()
    for _ in range(steps):
        i = torch.randint(0, len(images), (64,), generator=gen)
        noise = torch.randn((64, 1, 8, 8), generator=gen)
        t = torch.randint(0, K, (64,), generator=gen)
        pred = call(model, scheduler.add_noise(images[i], noise, t), t, labels[i])
        loss = torch.nn.functional.mse_loss(pred, noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    k = steps // 10
    return float(np.mean(losses[:k])), float(np.mean(losses[-k:]))


def _eps_error(model, call, steps=(100, 300, 600), n: int = 256) -> float:
    """RMS error of the model's eps against the exact eps of the training distribution (the
    1797 digits, class-conditional for ``call``'s labels: the posterior over the digits of the
    label, as the model sees it) on fresh noisy digits, relative to RMS of that exact eps,
    averaged over the diffusers ``steps``."""
    images, labels = _digits()
    x = images.reshape(len(images), -1).double().numpy()
    ab = diffusers.DDPMScheduler(num_train_timesteps=K).alphas_cumprod.double().numpy()
    gen = torch.Generator().manual_seed(123)
    errs = []
    model.eval()
    for k in steps:
        a, s = np.sqrt(ab[k]), np.sqrt(1 - ab[k])
        i = torch.randint(0, len(images), (n,), generator=gen)
        xt = a * x[i.numpy()] + s * torch.randn((n, 64), generator=gen).double().numpy()
        # log N(x_t; a x_j, s^2 I) over the digits j of each point's label
        logw = -((xt[:, None, :] - a * x[None]) ** 2).sum(-1) / (2 * s**2)
        logw[labels.numpy()[None, :] != labels.numpy()[i.numpy()][:, None]] = -np.inf
        w = np.exp(logw - logw.max(1, keepdims=True))
        x0 = (w @ x) / w.sum(1, keepdims=True)
        exact = (xt - a * x0) / s
        with torch.no_grad():
            xt_t = torch.from_numpy(xt.reshape(n, 1, 8, 8)).float()
            pred = call(model, xt_t, torch.full((n,), k), labels[i]).reshape(n, -1).double()
        errs.append(np.sqrt(np.mean((pred.numpy() - exact) ** 2) / np.mean(exact**2)))
    return float(np.mean(errs))


def _save(root: Path, pipeline: str, parts: dict) -> Path:
    index = {"_class_name": pipeline, "_diffusers_version": diffusers.__version__}
    for name, obj in parts.items():
        obj.save_pretrained(root / name)
        index[name] = ["diffusers", type(obj).__name__]
    (root / "model_index.json").write_text(json.dumps(index))
    return root


@pytest.fixture(scope="module")
def trained_unet(tmp_path_factory):
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(**UNET)
    fresh = {k: v.clone() for k, v in unet.state_dict().items()}
    call = lambda m, x, t, _: m(x, t).sample  # noqa: E731
    untrained = diffusers.UNet2DModel(**UNET)
    untrained.load_state_dict(fresh)
    _train(unet, call, steps=150)
    # Trained: the learned eps against the exact eps of the training digits (relative RMS
    # error, diffusers steps 100, 300, 600): 0.38 after 150 steps, 1.05 untrained.
    err, err0 = _eps_error(unet, call), _eps_error(untrained, call)
    assert err < 0.5 and err < 0.5 * err0, (err, err0)
    root = _save(
        tmp_path_factory.mktemp("trained-ddpm"),
        "DDPMPipeline",
        {"unet": unet, "scheduler": diffusers.DDPMScheduler(num_train_timesteps=K)},
    )
    return unet, root


@pytest.fixture(scope="module")
def trained_dit(tmp_path_factory):
    torch.manual_seed(0)
    dit = diffusers.DiTTransformer2DModel(**DIT)

    def call(m, x, t, y):
        return m(x, timestep=t, class_labels=y).sample[:, :1]

    untrained = diffusers.DiTTransformer2DModel(**DIT)
    untrained.load_state_dict(dit.state_dict())
    _train(dit, call, steps=60)
    # The class-conditional eps against the exact one given the label: 0.48 after 60 steps,
    # 1.28 untrained.
    err, err0 = _eps_error(dit, call), _eps_error(untrained, call)
    assert err < 0.6 and err < 0.5 * err0, (err, err0)
    root = _save(
        tmp_path_factory.mktemp("trained-dit"),
        "DiTPipeline",
        {"transformer": dit, "scheduler": diffusers.DDIMScheduler(num_train_timesteps=K)},
    )
    return dit, root


def _points(seed: int = 0) -> list[tuple[np.ndarray, float]]:
    """Noised held digits ``x_t = alpha_t x0 + sigma_t eps`` in wgfm's (H, W, C) layout, one
    per time of :data:`TIMES`, at the scheduler's own alphas."""
    images, _ = _digits()
    rng = np.random.default_rng(seed)
    abar = diffusers.DDPMScheduler(num_train_timesteps=K).alphas_cumprod.numpy()
    out = []
    for i, t in enumerate(TIMES):
        a = float(abar[round(t * K) - 1])
        x0 = images[100 * i + 7].numpy().transpose(1, 2, 0)
        x = np.sqrt(a) * x0 + np.sqrt(1 - a) * rng.standard_normal(x0.shape)
        out.append((x.astype(np.float32), t))
    return out


def _torch_hwc(fn, t: float):
    """``x (H, W, C) -> eps (H, W, C)``: the PyTorch model at diffusers timestep ``t K - 1``."""
    ts = torch.tensor([t * K - 1], dtype=torch.float32)
    return lambda x: fn(x.permute(2, 0, 1)[None], ts)[0].permute(1, 2, 0)


def _jac_ref(f, x: np.ndarray) -> np.ndarray:
    """``torch.func.jacrev`` (reverse mode: independent of wgfm's forward mode) of ``f`` at
    ``x``, flattened ``(D, D)`` as wgfm flattens the (H, W, C) sample."""
    d = x.size
    flat = lambda v: f(v.reshape(x.shape)).reshape(d)  # noqa: E731
    return torch.func.jacrev(flat)(torch.from_numpy(x).reshape(d)).detach().numpy()


def _lam(jac: np.ndarray) -> float:
    return float(np.linalg.norm(jac - jac.T) / np.linalg.norm(jac))


def _rel(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.abs(got - want).max() / np.abs(want).max())


def _probe_ref(f, x: np.ndarray, probes: np.ndarray, method: str) -> tuple[float, float]:
    """Means of ``probe_asymmetry``'s per-probe terms (its docstring) with ``torch.func``:
    ``vjp``: ``||Jv - J^T v||^2``; ``forward``: ``2 ||Jv||^2 - 2 v.J(Jv)``; both
    ``||Jv||^2``."""
    d = x.size
    flat = lambda v: f(v.reshape(x.shape)).reshape(d)  # noqa: E731
    x_t = torch.from_numpy(x).reshape(d)
    a2, f2 = [], []
    vjp = torch.func.vjp(flat, x_t)[1]
    with sdpa_kernel(SDPBackend.MATH):  # forward-mode AD through attention
        for v in probes:
            v = torch.from_numpy(np.array(v))
            jv = torch.func.jvp(flat, (x_t,), (v,))[1]
            if method == "vjp":
                jtv = vjp(v)[0]
                a2.append(((jv - jtv) ** 2).sum().item())
            else:
                jjv = torch.func.jvp(flat, (x_t,), (jv,))[1]
                a2.append((2 * (jv**2).sum() - 2 * (v * jjv).sum()).item())
            f2.append((jv**2).sum().item())
    return float(np.mean(a2)), float(np.mean(f2))


def _hwc_torch_field(unet):
    """``torch_field(diffusers_unet_fn(unet))`` (samples ``(C, H, W)``, as diffusers) on wgfm's
    ``(H, W, C)`` samples."""
    raw = torch_field(diffusers_unet_fn(unet))
    return lambda x, t: jnp.transpose(raw(jnp.transpose(x, (2, 0, 1)), t), (1, 2, 0))


def _check_probes(field, f_ref, x, t, methods, seed):
    key = jax.random.key(seed)
    probes = np.asarray(make_probes(key, NUM_PROBES, (x.size,), dtype=jnp.float32))
    for method in methods:
        got = probe_asymmetry(
            field, jnp.asarray(x), jnp.float32(t), key=key, num_probes=NUM_PROBES, method=method
        )
        a2, f2 = _probe_ref(f_ref, x, probes, method)
        assert abs(float(got.asym_sq) - a2) <= RTOL * abs(a2), (method, t, got.asym_sq, a2)
        assert abs(float(got.fro_sq) - f2) <= RTOL * f2, (method, t, got.fro_sq, f2)
        lam = np.sqrt(max(a2, 0.0) / f2)
        assert abs(float(got.stats.ratio) - lam) <= RTOL * lam, (method, t)


def test_unet_forward_and_exact_asymmetry_match_torch(trained_unet):
    """The flax port and ``torch_field`` of the trained UNet2DModel: forward, exact Jacobian
    and lambda of the eps field against ``torch.func.jacrev`` on the PyTorch model (the score
    ``-eps / sigma_t`` the diagnosis takes has the same lambda: the ratio is scale-free)."""
    unet, root = trained_unet
    flax_field, _ = load_diffusers(root)
    assert type(flax_field).__name__ == "DiffusersField"
    tfield = _hwc_torch_field(unet)

    def ref(x, t):
        return unet(x, t).sample

    lams = []
    for x, t in _points():
        f_ref = _torch_hwc(ref, t)
        with torch.no_grad():
            want = f_ref(torch.from_numpy(x)).numpy()
        assert np.abs(want).max() > 0.1
        for field in (flax_field, tfield):
            got = np.asarray(field(jnp.asarray(x), jnp.float32(t)))
            assert _rel(got, want) <= RTOL, (field is tfield, t)
        j_ref = _jac_ref(f_ref, x)
        lam_ref = _lam(j_ref)
        lams.append(lam_ref)
        for field in (flax_field, tfield):
            j = np.asarray(jacobian(field, jnp.asarray(x), jnp.float32(t)))
            assert _rel(j, j_ref) <= RTOL, (field is tfield, t)
            lam = float(asymmetry(jnp.asarray(j)).ratio)
            assert abs(lam - lam_ref) <= RTOL * lam_ref, (field is tfield, t, lam, lam_ref)
    # A trained network's Jacobian is far from symmetric: the comparison is not of zeros.
    assert min(lams) > 0.05, lams


def test_unet_probe_estimates_match_torch(trained_unet):
    """``probe_asymmetry`` with both estimators (``vjp``, ``forward``) on the flax port and on
    ``torch_field`` (its VJP by ``torch.func.vjp``), against the same probes pushed through
    ``torch.func.jvp`` / ``vjp`` on the PyTorch model."""
    unet, root = trained_unet
    flax_field, _ = load_diffusers(root)
    tfield = _hwc_torch_field(unet)
    points = _points(seed=1)
    for i, (x, t) in enumerate(points):
        f_ref = _torch_hwc(lambda x, t: unet(x, t).sample, t)
        _check_probes(flax_field, f_ref, x, t, ("vjp", "forward"), seed=i)
        _check_probes(tfield, f_ref, x, t, ("vjp", "forward"), seed=i)


def test_dit_torch_path_matches_torch(trained_dit):
    """A torch_field-only class: the trained class-conditional DiT loaded from its pipeline
    directory (learned-variance half dropped, class label 3): forward, exact lambda and the
    forward probe estimator against ``torch.func`` on the PyTorch model."""
    dit, root = trained_dit
    field, _ = load_diffusers(root, class_label=LABEL)
    assert type(field).__name__ == "TorchDiffusersField"

    def ref(x, t):
        labels = torch.full((x.shape[0],), LABEL, dtype=torch.long)
        return dit(x, timestep=t, class_labels=labels).sample[:, :1]

    for i, (x, t) in enumerate(_points(seed=2)):
        f_ref = _torch_hwc(ref, t)
        with torch.no_grad():
            want = f_ref(torch.from_numpy(x)).numpy()
        got = np.asarray(field(jnp.asarray(x), jnp.float32(t)))
        assert _rel(got, want) <= RTOL, t
        j_ref = _jac_ref(f_ref, x)
        j = np.asarray(jacobian(field, jnp.asarray(x), jnp.float32(t)))
        assert _rel(j, j_ref) <= RTOL, t
        lam, lam_ref = float(asymmetry(jnp.asarray(j)).ratio), _lam(j_ref)
        assert lam_ref > 0.05 and abs(lam - lam_ref) <= RTOL * lam_ref, (t, lam, lam_ref)
        _check_probes(field, f_ref, x, t, ("forward",), seed=10 + i)


def test_published_diagnosis_is_the_scripts_rendering(tmp_path):
    """docs/diagnose_trained_mnist.md is what docs/train_diffusers_mnist.py writes from the
    committed JSON of its run: no table in it is edited by hand or left from an older run."""
    import importlib.util

    docs = Path(__file__).resolve().parents[1] / "docs"
    spec = importlib.util.spec_from_file_location(
        "train_diffusers_mnist", docs / "train_diffusers_mnist.py"
    )
    script = importlib.util.module_from_spec(spec)  # pyright: ignore[reportArgumentType]
    spec.loader.exec_module(script)  # pyright: ignore[reportOptionalMemberAccess]
    meta = json.loads((docs / "diagnose_trained_mnist_run.json").read_text())
    runs = {}
    for key, sub in (("pixel", ""), ("latent", "_latent")):
        runs[key] = json.loads((docs / f"diagnose_trained_mnist{sub}" / "results.json").read_text())
        runs[key]["_wall_s"] = meta["diagnosis_s"][key]
    script.write_markdown(tmp_path / "out.md", runs, meta)
    published = (docs / "diagnose_trained_mnist.md").read_text()
    assert (tmp_path / "out.md").read_text() == published, (
        "regenerate with `python docs/train_diffusers_mnist.py --markdown-only`"
    )
