"""`wgfm diagnose` end to end on each model family beyond the pixel-space DDPM U-Net: a
flow-matching pipeline (flax port), a latent class-conditional DiT pipeline with images encoded
by its VAE (PyTorch path, forward-mode probes, untrained control re-initialised by PyTorch),
and ``package.module:function`` models (a PyTorch module, a JAX field with its kind given)."""

from __future__ import annotations

import json
import sys
import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from test_diagnose import SIZES, TINY  # noqa: E402
from test_interop_pipelines import DIT, RTOL, _pipeline  # noqa: E402

from wgfm import cli  # noqa: E402
from wgfm.diagnosis import CLAIMS  # noqa: E402
from wgfm.diagnosis.command import DiagnoseConfig, run  # noqa: E402
from wgfm.figures import png_is_valid_and_not_blank  # noqa: E402
from wgfm.interop import load_callable  # noqa: E402


def _rows(out):
    res = json.loads((out / "results.json").read_text())
    return res, (out / "REPORT.md").read_text()


def test_flow_matching_pipeline_generates_with_the_ode(tmp_path, monkeypatch):
    import jax

    from wgfm import transport

    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(**TINY)
    shift, k = 3.0, 1000
    sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=shift, num_train_timesteps=k)
    root = _pipeline(tmp_path / "flow", "FlowPipeline", {"unet": unet, "scheduler": sched})
    calls = []  # what the command hands the ODE sampler (the field it diagnoses, the prior key)
    solve = transport.sample_ode
    monkeypatch.setattr(
        transport, "sample_ode", lambda *a, **kw: calls.append((a, kw)) or solve(*a, **kw)
    )
    out = tmp_path / "run"
    run(DiagnoseConfig(model=root / "unet", out=out), sizes=SIZES)
    res, md = _rows(out)
    assert "ShiftedInterpolant (shift 3)" in md and "kind velocity" in md
    assert "probability-flow ODE" in md
    rows1 = res["claims"][CLAIMS["differential"].title]
    assert len(rows1) == 2 and "untrained" in rows1[1]["control"]

    # diffusers' flow convention, written out here: x = (1 - s) x0 + s eps at s = shift t /
    # (1 + (shift - 1) t), the network at timestep s K predicts dx/ds = eps - x0, so the
    # velocity in t is ds/dt times it.
    def velocity(x_nchw, t: float):
        s, ds = shift * t / (1 + (shift - 1) * t), shift / (1 + (shift - 1) * t) ** 2
        with torch.no_grad():
            return ds * unet(x_nchw, torch.tensor([s * k])).sample

    ((field, process), kw) = calls[0]
    assert kw["kind"] == "velocity" and kw["shape"] == (8, 8, 3)
    x = np.random.default_rng(0).standard_normal((3, *kw["shape"])).astype(np.float32)
    for xi, t in zip(x, (0.05, 0.5, 0.95), strict=True):  # the field diagnosed is that velocity
        got = np.asarray(field(jax.numpy.asarray(xi), t))
        want = velocity(torch.from_numpy(xi.transpose(2, 0, 1)[None].copy()), t)
        want = want[0].numpy().transpose(1, 2, 0)
        assert np.abs(got - want).max() <= RTOL * np.abs(want).max(), (t, got, want)
    # The generated images: Euler steps of that velocity from the same prior draws (the
    # sampler's documented num_samples draws of `key`), in PyTorch, then clipped.
    x = np.asarray(process.prior_sample((kw["num_samples"], *kw["shape"]), key=kw["key"]))
    x = torch.from_numpy(x.transpose(0, 3, 1, 2).astype(np.float32))
    t0, t1 = 1 / k, (k - 1) / k  # steps k = 1..K at t = k/K; the last is pure noise
    dt = -(t1 - t0) / SIZES.ddim_steps
    for i in range(SIZES.ddim_steps):
        x = x + dt * velocity(x, t1 + i * dt)
    want = np.clip(x.numpy().transpose(0, 2, 3, 1), -1, 1)
    got = np.load(out / "generated.npy")
    # float32 on both sides, 4 steps: the ports agree to 1e-4 of the output per call (RTOL of
    # test_interop_pipelines), the steps add a few of those.
    assert got.shape == want.shape and np.abs(got - want).max() < 1e-3, np.abs(got - want).max()
    assert np.abs(want).max() > 0.1  # not a trivially small sample
    assert len(calls) == 1 and isinstance(kw["key"], jax.Array)


def test_latent_dit_pipeline_encodes_images_with_its_vae(tmp_path):
    from PIL import Image

    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        block_out_channels=(8, 8), norm_num_groups=4, latent_channels=4, sample_size=16
    )
    root = _pipeline(
        tmp_path / "dit",
        "DiTPipeline",
        {
            "transformer": diffusers.DiTTransformer2DModel(**DIT),
            "vae": vae,
            "scheduler": diffusers.DDIMScheduler(),
        },
    )
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(images / f"{i}.png")
    out = tmp_path / "run"
    run(DiagnoseConfig(model=root, images=images, out=out, class_label=3), sizes=SIZES)
    res, md = _rows(out)
    assert "encoded into the latent space of the pipeline's AutoencoderKL" in md
    assert "DiTTransformer2DModel on PyTorch" in md and "class label 3" in md
    assert "learned variance" in md and "freshly initialised by PyTorch" in md
    (claim1,) = res["numbers"]["differential"].values()
    probe = claim1["median_probe_ratio"]
    assert set(probe) == {"trained", "untrained", "oracle score"}
    assert np.all(np.isfinite(probe["trained"])) and np.all(np.asarray(probe["trained"]) > 1e-2)
    # The clean latents, decoded by the pipeline's VAE, are a figure of claim 1.
    (decoded,) = [f for f in res["figures"][CLAIMS["differential"].title] if "latents_decoded" in f]
    assert png_is_valid_and_not_blank(out / decoded)

    # --pixel-run: claim 1 beside a pixel-space run's (here its results.json, written with
    # known numbers at the same levels: lambda twice the latent one, falling towards low noise).
    levels = np.asarray(claim1["levels"])
    lat = np.asarray(probe["trained"])
    pixel = {
        "numbers": {
            "differential": {
                "px": {"levels": levels.tolist(), "median_ratio": {"trained": (2 * lat).tolist()}}
            }
        }
    }
    (tmp_path / "pixel.json").write_text(json.dumps(pixel))
    config = DiagnoseConfig(
        model=root, images=images, out=out, class_label=3, pixel_run=tmp_path / "pixel.json"
    )
    run(config, sizes=SIZES)  # both claims reused from the run above; the comparison is new
    res, md = _rows(out)
    (row,) = [
        r
        for r in res["claims"][CLAIMS["differential"].title]
        if r["claim"].startswith("pixel vs latent")
    ]
    assert f"over {len(levels)} shared levels: 0.5" in row["control"], row
    assert "pixel run px: exact lambda; latent: probe lambda" in row["note"], row
    with pytest.raises(ValueError, match="--pixel-run"):
        DiagnoseConfig(model=root, images=images, out=out, pixel_run=tmp_path / "missing").check()


MODULE = textwrap.dedent(
    """
    import jax.numpy as jnp
    import torch

    from wgfm.processes import VP


    class Net(torch.nn.Module):
        kind = "eps"
        sample_shape = (6,)

        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.a = torch.nn.Linear(7, 16)
            self.b = torch.nn.Linear(16, 6)

        def forward(self, x, t):
            return self.b(torch.tanh(self.a(torch.cat([x, t[:, None]], 1))))


    def torch_model():
        return Net(), VP()


    def jax_model():
        w = jnp.arange(36.0).reshape(6, 6) / 36.0
        field = lambda x, t: jnp.tanh(w @ x) * (1 + t)
        field.sample_shape = (6,)
        return field, VP(), "score"


    def linear_model():
        # x -> A x: its Jacobian is A at every point and level, so lambda has a closed form.
        a = jnp.arange(36.0).reshape(6, 6) % 7 - 3.0
        field = lambda x, t: a @ x
        field.sample_shape = (6,)
        return field, VP(), "score"


    def no_kind():
        return (lambda x, t: x), VP()
    """
)
LINEAR_A = np.arange(36.0).reshape(6, 6) % 7 - 3.0


@pytest.fixture
def research_module(tmp_path, monkeypatch):
    (tmp_path / "myresearch.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "myresearch"
    sys.modules.pop("myresearch", None)


def test_callable_models(tmp_path, research_module, capsys):
    field, process = load_callable(f"{research_module}:torch_model")
    assert field.kind == "eps" and field.sample_shape == (6,)
    x = np.linspace(-1, 1, 6)
    want = field.module(torch.from_numpy(x)[None].float(), torch.tensor([0.3]))[0]
    np.testing.assert_allclose(np.asarray(field(x.astype(np.float32), 0.3)), want.detach(), 1e-6)
    out = tmp_path / "torch-run"
    run(DiagnoseConfig(model=f"{research_module}:torch_model", out=out), sizes=SIZES)  # type: ignore[arg-type]
    res, md = _rows(out)
    assert "Net on PyTorch" in md and "(given by the model's function)" in md
    assert "freshly initialised by PyTorch" in md
    out = tmp_path / "jax-run"
    run(DiagnoseConfig(model=f"{research_module}:jax_model", out=out), sizes=SIZES)  # type: ignore[arg-type]
    res, md = _rows(out)
    assert "kind score" in md and "no untrained control" in md
    assert res["claims"][CLAIMS["differential"].title][1]["control"] == "no untrained control given"
    # The numbers, not only the strings: for x -> A x the exact-Jacobian lambda is
    # ||A - A^T||_F / ||A||_F at every level (float32 Jacobians: rounding only), and the control,
    # the exact score of a Gaussian fit, is a gradient (lambda 0 to rounding).
    out = tmp_path / "linear-run"
    run(DiagnoseConfig(model=f"{research_module}:linear_model", out=out), sizes=SIZES)  # type: ignore[arg-type]
    res, _ = _rows(out)
    (claim1,) = res["numbers"]["differential"].values()
    lam = np.linalg.norm(LINEAR_A - LINEAR_A.T) / np.linalg.norm(LINEAR_A)
    np.testing.assert_allclose(claim1["median_ratio"]["trained"], lam, rtol=1e-5)
    assert np.all(np.asarray(claim1["median_ratio"]["oracle score"]) < 1e-5), claim1
    assert (
        cli.main(
            ["diagnose", "--model", f"{research_module}:no_kind", "--out", str(tmp_path / "o")]
        )
        == 2
    )
    assert "the field's kind must be one of" in capsys.readouterr().err
    assert cli.main(["diagnose", "--model", "nosuchpkg.mod:fn", "--out", str(tmp_path / "p")]) == 2
    assert "cannot import 'nosuchpkg.mod'" in capsys.readouterr().err
