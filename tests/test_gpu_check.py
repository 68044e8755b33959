"""benchmarks/gpu_check.py on the CPU at tiny sizes: its records follow the harness contract,
every precision's forward, JVP and VJP agree with float32 within the script's tolerances, and
the throughput rows are positive. On a GPU the same script compares cuda with the CPU."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")

from benchmarks._harness import RECORD_KEYS  # noqa: E402
from benchmarks.gpu_check import TOL, main  # noqa: E402


def _run(tmp_path, *extra):
    path = main(["--device", "cpu", "--size", "tiny", "--out", str(tmp_path), *extra])
    assert path.name == "gpu_check_cpu.json"  # never mixed with a GPU run's file
    rows = json.loads(path.read_text())["records"]
    assert all(tuple(r) == RECORD_KEYS for r in rows)
    return rows


def _check_passes(rows, n_dtypes=3):
    agree = [r for r in rows if r["case"].startswith("agreement")]
    assert len(agree) == 3 * n_dtypes  # (forward, JVP, VJP) per precision
    for r in agree:
        e = r["extra"]
        dtype = r["impl"].split()[1]
        assert e["tol"] == TOL[dtype] and e["agree"] and e["finite"], r
        if dtype == "float32":  # the same CPU kernels on the same numbers
            assert e["rel_l2_err"] <= 1e-6, r
        else:  # half precision really ran: far above float32 rounding
            assert e["rel_l2_err"] > 1e-5, r
    speed = [r for r in rows if r["case"].startswith("throughput")]
    assert len(speed) == 4 * n_dtypes and all(r["extra"]["passes_per_s"] > 0 for r in speed)


def test_gpu_check_on_cpu_tiny(tmp_path):
    # One half precision here against the float32 reference (the slow test runs all three).
    _check_passes(_run(tmp_path, "--no-diagnosis", "--dtypes", "bfloat16"), 1)
    with pytest.raises(SystemExit, match="--dtypes must be among"):
        main(["--device", "cpu", "--dtypes", "float8", "--out", str(tmp_path)])


@pytest.mark.slow
def test_gpu_check_on_cpu_tiny_with_diagnosis(tmp_path):
    """The whole script (the diagnosis compiles claims 1 and 2: minutes on a CPU; the same
    loading and diagnosis path is covered fast by test_interop_torch_device and
    test_diagnose_families)."""
    rows = _run(tmp_path)
    _check_passes(rows)
    (diag,) = [r for r in rows if r["case"] == "quick diagnosis"]
    assert diag["extra"]["finite"] and "cpu in float32" in diag["extra"]["backend"]
    assert diag["extra"]["claim1_rows"]
