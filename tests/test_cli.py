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
