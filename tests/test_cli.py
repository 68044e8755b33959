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
