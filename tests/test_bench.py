"""Smoke tests of the benchmark suite (``wgfm bench``): the smallest configuration of every
``compare_*`` module runs and writes JSON of the documented schema. No timing assertions."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from wgfm import cli

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import run_all  # noqa: E402
from benchmarks._harness import RECORD_KEYS  # noqa: E402

MINE = ("compare_jacobian", "compare_subjacobian", "compare_sampling", "compare_likelihood")


def _check_schema(payload: dict) -> None:
    machine = payload["machine"]
    for key in ("platform", "device_kind", "jax", "cpu_count", "torch", "scipy"):
        assert key in machine, key
    assert payload["failed"] == []
    assert payload["records"], "no records written"
    for r in payload["records"]:
        assert tuple(r) == RECORD_KEYS
        assert all(isinstance(r[k], str) and r[k] for k in ("benchmark", "case", "impl"))
        assert r["compile_s"] is None or r["compile_s"] >= 0.0
        assert math.isfinite(r["median_s"]) and r["median_s"] >= 0.0
        assert isinstance(r["repeats"], int) and r["repeats"] >= 1
        for v in r["extra"].values():
            assert isinstance(v, str | int | float | bool)
            assert not isinstance(v, float) or math.isfinite(v)


def test_tiny_suite_writes_schema(tmp_path):
    path, failed = run_all.run_benchmarks(tiny=True, out=tmp_path, only=MINE)
    assert failed == []
    assert path == tmp_path / "benchmarks.json"  # tests run on CPU
    payload = json.loads(path.read_text())
    _check_schema(payload)
    assert payload["mode"] == "tiny"
    assert set(payload["module_seconds"]) == set(MINE)
    benches = {r["benchmark"] for r in payload["records"]}
    assert {"jacobian_asymmetry", "sub_jacobian_64", "pf_ode_sampling", "likelihood"} <= benches
    md = (tmp_path / "benchmarks.md").read_text()
    assert md.count("\n|") == len(payload["records"]) + 2  # header, separator, one row each
    # Each comparison agrees with wgfm on identical weights/inputs (float32 rounding).
    for r in payload["records"]:
        e = r["extra"]
        if "max_abs_diff_vs_wgfm" in e:
            assert e["max_abs_diff_vs_wgfm"] < 1e-4
        if "rel_diff_vs_wgfm" in e:
            assert e["rel_diff_vs_wgfm"] < 1e-4
        if "field_vs_gmm_oracle" in e:  # float64: eigendecomposition vs Cholesky path
            assert e["field_vs_gmm_oracle"] < 1e-10
        if "torch_port_max_diff" in e:  # float64 PyTorch port of the oracle velocity
            assert e["torch_port_max_diff"] < 1e-10


def test_compile_benchmark_reports_no_retrace():
    from benchmarks import compare_compile

    rows = compare_compile.run(tiny=True)
    assert {r["case"] for r in rows} >= {"sample_ode", "log_likelihood (exact)", "train step"}
    for r in rows:
        assert r["extra"]["retraces"] == 0, r
        if "control_new_shape_retraces" in r["extra"]:  # the counter does see a real retrace
            assert r["extra"]["control_new_shape_retraces"] >= 1, r


def test_torch_comparisons_skip_without_torch(monkeypatch, capsys):
    from benchmarks import compare_jacobian

    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    rows = compare_jacobian.run(tiny=True)
    assert "PyTorch is not installed" in capsys.readouterr().err
    impls = {r["impl"] for r in rows}
    assert not any("torch" in i for i in impls)
    assert any(i.startswith("wgfm") for i in impls)


def test_cli_bench_fails_clearly_outside_a_checkout(monkeypatch, capsys, tmp_path):
    assert cli._locate_benchmarks(ROOT) == ROOT
    assert cli._locate_benchmarks(tmp_path) is None
    monkeypatch.setattr(cli, "_locate_benchmarks", lambda root: None)
    assert cli.main(["bench", "--quick"]) == 2
    assert "benchmarks/run_all.py" in capsys.readouterr().err


def test_cli_bench_rejects_unknown_module(capsys, tmp_path):
    assert "bench" in cli.COMMANDS
    assert cli.main(["bench", "--out", str(tmp_path), "--only", "no_such_module"]) == 2
    assert "no benchmark module matches" in capsys.readouterr().err
    assert not (tmp_path / "benchmarks.json").exists()


@pytest.mark.parametrize("only", [("compare_",), ("jacobian",)])
def test_discover_finds_modules(only):
    names = run_all.discover(only)
    assert names and all(any(o in n for o in only) for n in names)


def test_compare_diffusers_tiny():
    """The pretrained-model comparison (flax port, diffusers PyTorch, torch_field) runs at its
    tiny size and the three agree on identical weights (float32 rounding)."""
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    from benchmarks import compare_diffusers

    rows = compare_diffusers.run(tiny=True)
    impls = {r["impl"] for r in rows}
    assert len(rows) >= 5 and any("torch_field" in i for i in impls), impls
    for r in rows:
        assert tuple(r) == RECORD_KEYS and math.isfinite(r["median_s"])
        if "rel_diff_vs_wgfm" in r["extra"]:
            assert r["extra"]["rel_diff_vs_wgfm"] < 1e-4, r
