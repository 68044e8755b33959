"""wgfm.interop.torch_device: a PyTorch field's device and dtype (bfloat16 weights on the CPU
here; CUDA in benchmarks/gpu_check.py), the errors that name them, and the untrained control
built where the model sits, against torch itself."""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import wgfm  # noqa: E402
from wgfm.interop.torch import (  # noqa: E402
    as_torch_dtype,
    module_field,
    place_module,
    reinitialised,
    resolve_device,
    torch_field,
)


class _Net(torch.nn.Module):
    """A batched field ``(x (N, 6), t (N,)) -> (N, 6)`` with a LayerNorm and a SiLU."""

    def __init__(self):
        super().__init__()
        self.lin1, self.norm, self.lin2 = (
            torch.nn.Linear(7, 32),
            torch.nn.LayerNorm(32),
            torch.nn.Linear(32, 6),
        )

    def forward(self, x, t):
        h = torch.cat([x, t[:, None].to(x.dtype)], 1)  # t arrives in float32 (module docstring)
        return self.lin2(torch.nn.functional.silu(self.norm(self.lin1(h))))


def test_bfloat16_weights_on_cpu_values_jvp_vjp_against_torch():
    torch.manual_seed(0)
    net = _Net()
    field = module_field(net, "eps", wgfm.VP(), device="cpu", dtype="bfloat16")
    assert {p.dtype for p in net.parameters()} == {torch.bfloat16}  # moved once, in place
    assert field.net.device == torch.device("cpu") and field.net.dtype == torch.bfloat16
    assert "cpu in bfloat16" in field.backend
    rng = np.random.default_rng(0)
    x, v = (jnp.asarray(rng.standard_normal(6), jnp.float32) for _ in range(2))
    t = jnp.float32(0.3)
    # The weights are not moved again per call.
    net.to = None  # pyright: ignore[reportAttributeAccessIssue]
    y, jv = jax.jvp(lambda a: field(a, t), (x,), (v,))
    vj = jax.vjp(lambda a: field(a, t), x)[1](v)[0]
    assert y.dtype == jv.dtype == vj.dtype == jnp.float32  # float32 back to JAX
    xb = torch.from_numpy(np.asarray(x))[None].bfloat16()
    vb = torch.from_numpy(np.asarray(v))[None].bfloat16()
    tt = torch.tensor([0.3])
    with torch.no_grad():
        want = net(xb, tt).float().numpy()[0]
        jv_ref = torch.func.jvp(lambda a: net(a, tt), (xb,), (vb,))[1].float().numpy()[0]
    vj_ref = torch.func.vjp(lambda a: net(a, tt), xb)[1](vb)[0].detach().float().numpy()[0]
    # The same bfloat16 kernels on the same bfloat16 inputs: equal up to one bfloat16 ulp of
    # the output's scale (2^-8 relative: a different reduction order may round once apart).
    for got, ref in [(y, want), (jv, jv_ref), (vj, vj_ref)]:
        assert np.abs(np.asarray(got) - ref).max() <= 2**-8 * np.abs(ref).max(), (got, ref)
    # ... and bfloat16 really ran: the float32 model differs by far more than float32 rounding.
    net32 = copy.deepcopy(net).float()
    with torch.no_grad():
        y32 = net32(torch.from_numpy(np.asarray(x))[None], tt).numpy()[0]
    assert np.abs(y32 - np.asarray(y)).max() > 1e-4 * np.abs(y32).max()


def test_dtype_and_device_errors_name_them():
    torch.manual_seed(1)
    net = _Net().to(torch.bfloat16)
    # fn without a findable module: its bfloat16 weights cannot be moved to float32 inputs.
    field = torch_field(lambda x, t: net(x, t), dtype=torch.float32, device="cpu")
    with pytest.raises(Exception, match=r"torch.float32 inputs.*(BFloat16|bfloat16)"):
        jax.block_until_ready(field(jnp.zeros(6, jnp.float32), jnp.float32(0.5)))
    with pytest.raises(ValueError, match="`dtype` must be a floating torch.dtype"):
        as_torch_dtype("int8")
    with pytest.raises(ValueError, match="`dtype` must be a floating torch.dtype"):
        torch_field(net, dtype=torch.int32)
    assert as_torch_dtype("float16") is torch.float16 and as_torch_dtype(None) is None
    with pytest.raises(ValueError, match="`device` must be 'cuda', 'mps' or 'cpu'"):
        resolve_device("meta")
    with pytest.raises(ValueError, match="`device` must be"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            place_module(net, "cuda")
        assert resolve_device(None) == torch.device("cpu")
    with pytest.raises(ValueError, match="`module` must be a torch.nn.Module"):
        place_module(lambda x: x)  # pyright: ignore[reportArgumentType]


def test_reinitialised_plain_module_no_copy_of_reset_weights(monkeypatch):
    torch.manual_seed(2)
    net = _Net().to(torch.bfloat16)
    net.register_buffer("scale", torch.tensor(3.0))  # copied, not re-initialised
    before = {k: v.clone() for k, v in net.state_dict().items()}
    copied = []
    real = torch.nn.Parameter.__deepcopy__

    def spy(self, memo):
        copied.append(self.shape)
        return real(self, memo)

    monkeypatch.setattr(torch.nn.Parameter, "__deepcopy__", spy)
    fresh = reinitialised(net, seed=5)
    monkeypatch.undo()
    assert copied == []  # every parameter here is reset: none was copied first
    # The reference: the old way, a full copy re-initialised in place under the same seed.
    torch.manual_seed(5)
    ref = copy.deepcopy(net)
    for m in ref.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()  # pyright: ignore[reportCallIssue]
    for (k, a), (_, b) in zip(fresh.state_dict().items(), ref.state_dict().items(), strict=True):
        assert a.dtype == torch.bfloat16 or k == "scale", k
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # same draws in the same order
    for k, v in net.state_dict().items():  # the trained model is left alone
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    assert not torch.equal(fresh.get_parameter("lin1.weight"), net.lin1.weight)

    class Custom(torch.nn.Module):  # a reset_parameters that forgets one of its parameters
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))

        def reset_parameters(self):
            torch.nn.init.normal_(self.a)

    with pytest.raises(ValueError, match="left parameter 'b' unset"):
        reinitialised(Custom(), seed=0)


def test_reinitialised_diffusers_model_from_config_in_its_dtype():
    diffusers = pytest.importorskip("diffusers")
    from test_diagnose import TINY

    unet = diffusers.UNet2DModel(**TINY).to(torch.bfloat16)
    fresh = reinitialised(unet, seed=3)
    torch.manual_seed(3)
    ref = diffusers.UNet2DModel.from_config(unet.config).to(torch.bfloat16)
    assert type(fresh) is type(unet) and fresh is not unet
    for a, b in zip(fresh.parameters(), ref.parameters(), strict=True):
        assert a.dtype == torch.bfloat16 and a.device == torch.device("cpu")
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # The field's untrained control keeps the field's device and dtype.
    field = module_field(_Net(), "eps", wgfm.VP(), device="cpu", dtype="bfloat16")
    control = field.untrained(key=jax.random.key(0))
    assert control.net.dtype == torch.bfloat16 and control.net.device == torch.device("cpu")
    assert {p.dtype for p in control.module.parameters()} == {torch.bfloat16}


def test_load_pipeline_torch_dtype_and_device(tmp_path):
    """A Stable-Diffusion-type pipeline loaded in bfloat16 on the CPU: the weights are read in
    bfloat16, the field's values equal the bfloat16 U-Net's, and float32 goes back to JAX."""
    diffusers = pytest.importorskip("diffusers")
    from test_interop_pipelines import COND_UNET, _perturbed, _pipeline

    from wgfm.interop import TorchDiffusersField, load_diffusers

    unet = _perturbed(diffusers.UNet2DConditionModel(**COND_UNET))
    parts = {"unet": unet, "scheduler": diffusers.DDIMScheduler()}
    root = _pipeline(tmp_path, "StableDiffusionPipeline", parts)
    e = np.random.default_rng(5).standard_normal((3, 8)).astype(np.float32)
    field, _ = load_diffusers(root, encoder_hidden_states=e, device="cpu", torch_dtype="bfloat16")
    assert isinstance(field, TorchDiffusersField)
    assert {p.dtype for p in field.module.parameters()} == {torch.bfloat16}
    assert field.net.dtype == torch.bfloat16 and "bfloat16" in field.backend
    x = np.random.default_rng(6).standard_normal((8, 8, 4)).astype(np.float32)
    got = np.asarray(field(jnp.asarray(x), jnp.float32(0.25)))
    assert got.dtype == np.float32
    ub = unet.to(torch.bfloat16)
    ehs = torch.from_numpy(e)[None].bfloat16()
    xb = torch.from_numpy(x.transpose(2, 0, 1)[None].copy()).bfloat16()
    with torch.no_grad():  # timestep 0.25 K - 1 = 249, in float32 (exact)
        want = ub(xb, torch.tensor([249.0]), encoder_hidden_states=ehs).sample
    want = want.float().numpy()[0].transpose(1, 2, 0)
    # The same bfloat16 kernels on the same inputs: one bfloat16 ulp of the scale (2^-8).
    assert np.abs(got - want).max() <= 2**-8 * np.abs(want).max()
    with pytest.raises(ValueError, match="`dtype` must be a floating torch.dtype"):
        load_diffusers(root, encoder_hidden_states=e, torch_dtype="int8")


def test_diagnose_cli_torch_device_and_dtype(tmp_path, monkeypatch, capsys):
    """``wgfm diagnose --torch-device/--dtype`` reach the PyTorch model through load_model; a
    bad value is one line and exit status 2."""
    from wgfm.cli import main
    from wgfm.interop.load import load_model

    (tmp_path / "tiny_torch_model.py").write_text(
        "import torch, wgfm\n"
        "class Net(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.lin = torch.nn.Linear(4, 4)\n"
        "    def forward(self, x, t):\n"
        "        return self.lin(x) * t[:, None].to(x.dtype)\n"
        "def make():\n"
        "    torch.manual_seed(0)\n"
        "    return Net(), wgfm.VP(), 'eps'\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = "tiny_torch_model:make"
    field, _ = load_model(spec, device="cpu", torch_dtype="bfloat16")
    assert field.net.dtype == torch.bfloat16  # pyright: ignore[reportAttributeAccessIssue]
    assert "cpu in bfloat16" in field.backend
    y = field(jnp.ones(4, jnp.float32), jnp.float32(0.5))  # bfloat16 weights on the CPU run
    assert y.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(y)))
    out = str(tmp_path / "out")
    monkeypatch.delenv("XLA_PYTHON_CLIENT_PREALLOCATE", raising=False)  # restored afterwards
    for flag, value, message in [
        ("--dtype", "int8", "`--dtype` must be bfloat16, float16 or float32"),
        ("--torch-device", "tpu", "`--torch-device` must be cuda, mps or cpu"),
    ]:
        assert main(["diagnose", "--model", spec, "--quick", "--out", out, flag, value]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, err
    if not torch.cuda.is_available():  # the option reaches the model: the error comes from there
        assert (
            main(["diagnose", "--model", spec, "--quick", "--out", out, "--torch-device", "cuda"])
            == 2
        )
        err = capsys.readouterr().err.strip()
        assert "no CUDA device" in err and "\n" not in err, err
    import os

    assert os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"  # set by the command
