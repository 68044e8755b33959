"""The `wgfm` command line."""

import pytest

from wgfm import cli


def test_check_command_passes(capsys):
    """`wgfm check` in 3D (random anisotropic mixture): every identity holds at float64 rounding."""
    assert cli.main(["check", "--dim", "3", "--num-points", "4"]) == 0
    out = capsys.readouterr().out
    assert "interpolant" in out and "edm" in out and "NO" not in out
    assert "All identities hold" in out


def test_unknown_command_exits():
    with pytest.raises(SystemExit):
        cli.main(["no-such-command"])


def test_python_dash_m_wgfm_runs_the_command_and_the_package_exposes_diagnostics():
    import os
    import subprocess
    import sys
    from pathlib import Path

    import wgfm

    root = Path(__file__).resolve().parent.parent
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
    }
    out = subprocess.run(
        [sys.executable, "-m", "wgfm", "--help"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    assert all(c in out for c in ("check", "train", "reproduce", "diagnose", "bench"))
    assert callable(wgfm.diagnostics.sweep) and isinstance(wgfm.__version__, str)


def test_check_thresholds_sit_near_rounding_and_catch_a_small_error(monkeypatch):
    import jax
    import jax.numpy as jnp

    from wgfm import check, gmm
    from wgfm.processes import VP

    with jax.enable_x64(True):
        mixture = gmm.ring(num_modes=8, radius=4.0, std=0.5, dtype=jnp.float64)
        good = check.check_process("vp", VP(), mixture, 16, jax.random.key(0))
        assert good.passed
        # Every identity holds far below its threshold (rounding, not the threshold, is measured).
        assert good.residual < 1e-2 * check.TOLERANCES["residual"]
        assert good.score_error < 1e-2 * check.TOLERANCES["score_error"]
        assert good.roundtrip_error < 1e-2 * check.TOLERANCES["roundtrip_error"]
        # A velocity off by 1e-8 relative (a slightly wrong drift) breaks the continuity equation
        # by ~1e-8 of its terms: the former threshold (1e-7) let it pass, this one does not.
        exact = gmm.velocity_field

        def wrong(mix, process):
            v = exact(mix, process)
            return lambda x, t: v(x, t) * (1 + 1e-8)

        monkeypatch.setattr(check.gmm, "velocity_field", wrong)
        bad = check.check_process("vp", VP(), mixture, 16, jax.random.key(0))
        assert not bad.passed and 1e-9 < bad.residual < 1e-7, bad
