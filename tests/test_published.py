"""Every published benchmark table is what ``python -m benchmarks.publish`` writes from the
committed JSON (benchmarks/results/): none is edited by hand or left from an older run."""

from __future__ import annotations

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


def test_run_header_names_the_run():
    payload = {
        "machine": {"platform": "cpu", "jax": "0.10.2", "time": "2026-01-02T03:04:05+0000"},
        "run": {
            "command": "wgfm bench --quick",
            "commit": "0123456789abcdef",
            "cores": 2,
            "code_modified": False,
            "cpu_model": "some CPU",
            "host_shared": True,
        },
        "matmul_peak": {"peak_gflops": 100.0, "jax_gflops": 90.0, "torch_gflops": 100.0},
        "records": [],
    }
    header = publish.run_header(payload)
    for part in ("`wgfm bench --quick`", "2026-01-02 03:04", "0123456789", "some CPU", "shared"):
        assert part in header, (part, header)


def test_a_hand_edit_is_caught(tmp_path):
    text = "intro\n<!-- BEGIN GENERATED: x -->\nold\n<!-- END GENERATED: x -->\nend\n"
    out = publish.replace_block(text, "x", "new table", "f.md")
    assert "new table" in out and "old" not in out and out.endswith("end\n")
    assert publish.replace_block(out, "x", "new table", "f.md") == out  # idempotent
    with pytest.raises(ValueError, match="once each"):
        publish.replace_block("no markers", "x", "t", "f.md")
    with pytest.raises(ValueError, match="f.md must hold"):  # two blocks of one name
        publish.replace_block(text + text, "x", "t", "f.md")


def test_speedup_prints_inside_its_own_range():
    from benchmarks._summary import _check, _speedup

    r = record(
        "b",
        "c",
        "peer",
        compile_s=None,
        median_s=1.0,
        repeats=3,
        speedup=1.3849,
        speedup_min=1.3799,
        speedup_max=1.6,
    )
    got = _check("t", [r], _speedup, ">=", 2.0)["measured"]
    assert got == "c: 1.38 [1.38-1.6]", got


def test_a_report_records_its_resources_and_rebuilds_from_its_json(tmp_path):
    import json

    import numpy as np

    from wgfm.report import ClaimRow, Report, render_results

    report = Report(tmp_path, title="t")
    report.add("1. a", ClaimRow("c", "m", "k", True, "n"))
    report.timings["1. a"] = 1.5
    # Burn measurable CPU so the record can be checked against a known lower bound.
    x = np.random.default_rng(0).standard_normal((300, 300))
    for _ in range(300):
        x = np.tanh(x @ x.T / 300)
    md, js = report.write({"mode": "quick"})
    res = json.loads(js.read_text())
    used = res["resources"]
    assert used["cpu_s"] > 0 and used["wall_s"] >= 0 and used["peak_rss_mb"] > 10, used
    assert used["cores"] >= 1 and len(used["load_average_end"]) == 3
    assert md.read_text() == render_results(res)
    assert "- resources: " in md.read_text()


def test_run_backed_docs_pages_match_their_committed_runs():
    """docs pages written from the runs under docs/runs/ (experiments.docs_runs): none edited
    by hand or left from an older run."""
    from experiments import docs_runs

    stale = [
        str(path.relative_to(docs_runs.ROOT))
        for path, text in docs_runs.render().items()
        if not path.is_file() or path.read_text() != text
    ]
    assert not stale, f"regenerate with `python -m experiments.docs_runs`: {stale}"


def test_each_committed_run_is_complete_and_its_report_is_its_json():
    import json

    from experiments import docs_runs
    from wgfm.report import render_results

    runs = docs_runs.runs_record()
    assert {p.run for p in docs_runs.PAGES} <= set(runs)
    for name, rec in runs.items():
        assert {"command", "commit", "date", "machine"} <= set(rec), rec
        d = docs_runs.RUNS / name
        res = json.loads((d / "results.json").read_text())
        # The run's own record of what it used: every timing the pages quote comes from here.
        assert {"wall_s", "cpu_s", "peak_rss_mb"} <= set(res["resources"]), name
        assert (d / "REPORT.md").read_text() == render_results(res), name
        for fig in (f for fs in res["figures"].values() for f in fs):
            assert (d / fig).is_file(), (name, fig)


def test_a_rerun_of_some_modules_replaces_only_their_rows():
    def run(time, command, rows):
        return {
            "machine": {"time": time, "platform": "cpu"},
            "run": {"command": command},
            "records": [
                record(b, "c", i, compile_s=None, median_s=1.0, repeats=1) for b, i in rows
            ],
        }

    full = run("2026-01-01T00:00:00+0000", "wgfm bench --quick", [("a", "old"), ("b", "old")])
    part = run("2026-01-02T00:00:00+0000", "wgfm bench --quick --only b", [("b", "new")])
    records, by = publish.merged([full, part])
    assert [(r["benchmark"], r["impl"]) for r in records] == [("a", "old"), ("b", "new")]
    assert by["a"] is full and by["b"] is part
