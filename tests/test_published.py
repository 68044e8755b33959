"""Every published benchmark table is what ``python -m benchmarks.publish`` writes from the
committed JSON (benchmarks/results/): none is edited by hand or left from an older run."""

from __future__ import annotations

import json

import pytest

from benchmarks import publish
from benchmarks._harness import record


def test_committed_tables_match_their_json():
    stale = [
        str(path.relative_to(publish.ROOT))
        for path, text in publish.render().items()
        if not path.is_file() or path.read_text() != text
    ]
    assert not stale, f"regenerate with `python -m benchmarks.publish`: {stale}"


def test_committed_run_names_its_source():
    payload = json.loads((publish.RESULTS / "benchmarks.json").read_text())
    run = payload["run"]
    assert run["command"].startswith("wgfm bench") and run["commit"]
    assert payload["matmul_peak"]["peak_gflops"] > 0
    header = publish.run_header(payload)
    assert run["command"] in header and run["commit"][:10] in header
    # Every fraction of peak in the run divides by the run's one peak.
    peaks = [r["extra"]["peak_gflops"] for r in payload["records"] if r["case"] == "matmul peak"]
    assert peaks == [payload["matmul_peak"]["peak_gflops"]]


def test_a_hand_edit_is_caught(tmp_path):
    text = "intro\n<!-- BEGIN GENERATED: x -->\nold\n<!-- END GENERATED: x -->\nend\n"
    out = publish.replace_block(text, "x", "new table", "f.md")
    assert "new table" in out and "old" not in out and out.endswith("end\n")
    assert publish.replace_block(out, "x", "new table", "f.md") == out  # idempotent
    with pytest.raises(ValueError, match="expected one"):
        publish.replace_block("no markers", "x", "t", "f.md")


def test_speedup_prints_inside_its_own_range():
    from benchmarks._summary import _check, _speedup

    r = record("b", "c", "peer", compile_s=None, median_s=1.0, repeats=3, speedup=1.3849,
               speedup_min=1.3799, speedup_max=1.6)  # fmt: skip
    got = _check("t", [r], _speedup, ">=", 2.0)["measured"]
    assert got == "c: 1.38 [1.38-1.6]", got
