"""The CLI's process-wide changes last only as long as the command: a Python caller of
``wgfm.cli.main`` (the tests, a notebook) gets its unraisable hook and asyncio log level back."""

from __future__ import annotations

import logging
import sys

from wgfm import cli


def test_the_hook_and_log_level_are_scoped_to_the_command(monkeypatch, capsys):
    seen = {}

    def probe() -> int:
        """Record what the command runs under."""
        seen["hook"] = sys.unraisablehook
        seen["level"] = logging.getLogger("asyncio").level
        return 0

    monkeypatch.setitem(cli.COMMANDS, "check", probe)
    logger = logging.getLogger("asyncio")
    before_hook, before_level = sys.unraisablehook, logger.level
    assert cli.main(["check"]) == 0
    assert seen["hook"] is not before_hook and seen["level"] == logging.CRITICAL
    assert sys.unraisablehook is before_hook and logger.level == before_level
    # --debug keeps every message: nothing is replaced
    assert cli.main(["check", "--debug"]) == 0
    assert seen["hook"] is before_hook and seen["level"] == before_level
    # and a failing command restores them too
    assert cli.main(["diagnose", "--model", "no-such-dir"]) == 2
    assert sys.unraisablehook is before_hook and logger.level == before_level
    assert "`--model`" in capsys.readouterr().err


def test_the_checkout_commands_say_what_they_need(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(cli, "__file__", str(tmp_path / "wgfm" / "cli.py"))
    assert cli.main(["reproduce", "--quick"]) == 2
    assert cli.main(["bench", "--quick"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all("needs the source checkout" in line for line in err), err
    assert err[0].startswith("wgfm reproduce:") and err[1].startswith("wgfm bench:")
