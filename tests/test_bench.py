"""Smoke tests of the benchmark suite (``wgfm bench``): the smallest configuration of every
``bench_*`` and ``compare_*`` module runs, writes JSON of the documented schema, and each
comparison agrees with wgfm on identical weights and inputs. No timing assertions."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from wgfm import cli

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import run_all  # noqa: E402
from benchmarks._harness import RECORD_KEYS  # noqa: E402

ALL = tuple(run_all.discover())


# The benchmark names each module's rows carry: every module has a tiny configuration and
# yields rows (none is skipped silently).
EXPECTED = {
    "bench_diagnostics": {"diagnostics"},
    "bench_scaling": {"scaling"},
    "bench_train": {"train"},
    "bench_transport": {"transport"},
    "compare_compile": {"compile"},
    "compare_diffusers": {"diffusers_unet"},
    "compare_jacobian": {"jacobian_asymmetry"},
    "compare_likelihood": {"likelihood"},
    "compare_peer_ddim": {"peer_ddim"},
    "compare_peer_likelihood": {"peer_likelihood"},
    "compare_peer_sampling": {"peer_sampling", "pf_solver_choice"},
    "compare_sampling": {"pf_ode_sampling"},
    "compare_subjacobian": {"sub_jacobian_64"},
    "compare_train": {"train_step"},
}


def test_every_module_is_smoke_tested():
    assert set(ALL) == set(EXPECTED)


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


@pytest.mark.parametrize("name", ALL)
def test_tiny_module_runs_and_agrees(name, tmp_path):
    path, failed = run_all.run_benchmarks(tiny=True, out=tmp_path, only=(name,))
    assert failed == []
    assert path == tmp_path / "benchmarks.json"  # tests run on CPU
    payload = json.loads(path.read_text())
    _check_schema(payload)
    assert payload["mode"] == "tiny"
    assert set(payload["module_seconds"]) == {name}
    assert payload["targets"] and (tmp_path / "summary.md").is_file()
    assert {r["benchmark"] for r in payload["records"]} >= EXPECTED[name]
    if name == "compare_train":  # the MLP and the (one-level) U-Net, each against PyTorch
        cases = {r["case"].split(",")[0] for r in payload["records"] if "torch" in r["impl"]}
        assert cases == {"D=2", "UNet2DModel 8x8x1 (16)"}, cases
    md = (tmp_path / "benchmarks.md").read_text()
    assert md.count("\n|") == len(payload["records"]) + 2  # header, separator, one row each
    # Each comparison agrees with wgfm on identical weights/inputs.
    for r in payload["records"]:
        e = r["extra"]
        if "agree" in e:  # peer comparisons: within the tolerance their module documents
            assert e["agree"] is True, r
        elif "max_abs_diff_vs_wgfm" in e:  # float32 rounding only
            assert e["max_abs_diff_vs_wgfm"] < 1e-4
        if "rel_diff_vs_wgfm" in e:
            assert e["rel_diff_vs_wgfm"] < 1e-4
        if "field_vs_gmm_oracle" in e:  # float64: eigendecomposition vs Cholesky path
            assert e["field_vs_gmm_oracle"] < 1e-10
        if "torch_port_max_diff" in e:  # float64 PyTorch port of the oracle velocity
            assert e["torch_port_max_diff"] < 1e-10
        if e.get("port_max_diff") is not None:  # the same network in both frameworks
            assert e["port_max_diff"] < 1e-4, r  # relative to the output scale, float32
        if "max_abs_diff_vs_1_device" in e:
            assert e["max_abs_diff_vs_1_device"] < 1e-4
        if r["benchmark"] == "compile":  # entry points trace once; the counter does see retraces
            assert e["retraces"] == 0, r
            assert e.get("control_new_shape_retraces", 1) >= 1, r


def test_torch_comparisons_skip_without_torch(monkeypatch, capsys):
    from benchmarks import compare_jacobian

    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    rows = compare_jacobian.run(tiny=True)
    assert "PyTorch is not installed" in capsys.readouterr().err
    impls = {r["impl"] for r in rows}
    assert not any("torch" in i for i in impls)
    assert any(i.startswith("wgfm") for i in impls)


def test_cli_bench_fails_clearly_outside_a_checkout(monkeypatch, capsys, tmp_path):
    # Installed from a wheel, wgfm sits in site-packages with no benchmarks/ beside it.
    monkeypatch.setattr(cli, "__file__", str(tmp_path / "wgfm" / "cli.py"))
    assert cli.main(["bench", "--quick"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("wgfm bench: needs the source checkout") and "\n" not in err


def test_cli_bench_rejects_unknown_module(capsys, tmp_path):
    assert "bench" in cli.COMMANDS
    assert cli.main(["bench", "--out", str(tmp_path), "--only", "no_such_module"]) == 2
    assert "no benchmark module matches" in capsys.readouterr().err
    assert not (tmp_path / "benchmarks.json").exists()


@pytest.mark.parametrize("only", [("compare_",), ("jacobian",)])
def test_discover_finds_modules(only):
    names = run_all.discover(only)
    assert names and all(any(o in n for o in only) for n in names)


def test_scaling_plots_written(tmp_path):
    from benchmarks._harness import record
    from benchmarks._plots import write_plots

    rows = [
        record(
            "diagnostics",
            f"D={d}, B=8",
            "jacobian+asymmetry",
            compile_s=0.1,
            median_s=1e-3 * d,
            repeats=1,
        )
        for d in (2, 16, 64)
    ] + [
        record(
            "pf_solver_choice",
            "D=2, n=64",
            s,
            compile_s=None,
            median_s=1e-3 * nfe,
            repeats=1,
            tol=tol,
            nfe=nfe,
            max_err_vs_ref=tol,
        )
        for s in ("Tsit5", "Dopri5")
        for tol, nfe in ((1e-3, 20), (1e-5, 40))
    ]
    names = {p.name for p in write_plots(rows, tmp_path)}
    assert names == {"scaling_jacobian_vs_dim.png", "scaling_nfe.png"}
    assert all((tmp_path / n).stat().st_size > 1000 for n in names)


def test_targets_table_met_and_missed():
    from benchmarks._harness import record
    from benchmarks._summary import markdown, targets

    rows = [
        record(
            "peer_ddim",
            "D=2, n=32, 50 steps",
            "diffusers DDIMScheduler loop",
            compile_s=None,
            median_s=1.0,
            repeats=3,
            speedup=4.0,
            speedup_min=3.5,
            speedup_max=5.0,
        ),
        # PyTorch's default optimiser loop, slower: wgfm would meet the goal against it ...
        record(
            "train_step",
            "D=2, B=16",
            "torch eager loop (for-loop)",
            compile_s=None,
            median_s=2.0,
            repeats=3,
            speedup=2.0,
            speedup_min=1.9,
            speedup_max=2.1,
            fastest_in_group=False,
        ),
        # ... but the target reads the run's fastest PyTorch formulation, which it misses.
        record(
            "train_step",
            "D=2, B=16",
            "torch eager loop (fused)",
            compile_s=None,
            median_s=1.0,
            repeats=3,
            speedup=1.2,
            speedup_min=1.0,
            speedup_max=1.4,
            fastest_in_group=True,
        ),
    ]
    got = {t["target"]: t for t in targets(rows)}
    assert got["DDIM-50 vs diffusers DDIMScheduler loop"]["met"] is True
    train = got["training step (MLP) vs PyTorch eager (its fastest optimiser)"]
    assert train["met"] is False and "(fused)" in train["measured"], train
    assert "for-loop" not in train["measured"]
    assert got["sampling vs torchdiffeq, D=2, n=10000"]["met"] is None
    assert "4 [3.5-5]" in markdown(list(got.values()))


def test_nfe_at_error_interpolates_log_log_within_the_curve():
    from benchmarks._summary import nfe_at_error

    # NFE = 10 * err^(-1/4): a straight line in (log err, log NFE), recovered exactly between
    # the points and refused outside them; a tolerance that did not lower the error is dropped.
    pts = [(e, 10 * e**-0.25) for e in (1e-2, 1e-4, 1e-6)] + [(2e-4, 200.0)]
    assert np.isclose(nfe_at_error(pts, 1e-3), 10 * 1e-3**-0.25, rtol=1e-12)
    assert np.isclose(nfe_at_error(pts, 1e-6), 10 * 1e-6**-0.25, rtol=1e-12)
    assert nfe_at_error(pts, 1e-1) is None and nfe_at_error(pts, 1e-7) is None


def test_solver_choice_compares_at_equal_error_not_equal_tolerance():
    from benchmarks._harness import record
    from benchmarks._summary import targets

    # At equal tolerance Tsit5 takes fewer NFE (25 vs 30), but it is 10x less accurate: at
    # Tsit5's error 1e-5 the default (Dopri5) needs sqrt(20 * 30) = 24.5 NFE (log-log
    # midpoint), fewer than Tsit5's 25; Tsit5's 1e-3 lies outside the default's curve and is
    # not compared.
    curves = {
        "Dopri5": ((1e-3, 20, 1e-4), (1e-5, 30, 1e-6)),
        "Tsit5": ((1e-3, 20, 1e-3), (1e-5, 25, 1e-5)),
    }
    rows = [
        record(
            "pf_solver_choice",
            "D=2, n=64",
            s,
            compile_s=None,
            median_s=1.0,
            repeats=1,
            tol=tol,
            nfe=nfe,
            max_err_vs_ref=err,
        )
        for s, pts in curves.items()
        for tol, nfe, err in pts
    ]
    got = {t["target"]: t for t in targets(rows)}
    t = got["default solver (Dopri5): NFE at Tsit5's final error"]
    assert t["met"] is True and t["measured"] == "D=2, n=64, err 1e-05: Dopri5 24 / Tsit5 25", t
    assert got["default solver (Dopri5): NFE at torchdiffeq dopri5's final error"]["met"] is None


def test_xla_flag_ab_runs_each_setting_in_its_own_process(tmp_path):
    pytest.importorskip("torch")
    from benchmarks.ab_xla_flags import main

    flag = "--xla_cpu_experimental_ynn_fusion_type=+eltwise"
    # --flag=VALUE: argparse reads a separate value that starts with "--" as an option.
    assert (
        main(
            [
                f"--flag={flag}",
                "--rounds",
                "1",
                "--n",
                "16",
                "--repeats",
                "2",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    got = json.loads((tmp_path / "xla_flags_ab.json").read_text())
    assert [r["flags"] for r in got["rounds"]] == ["", flag]
    assert all(r["jax_ms"] > 0 and r["torch_ms"] > 0 for r in got["rounds"])
    assert set(got["median_jax_over_torch"]) == {"(none)", flag}


def test_compiled_side_times_a_build_or_leaves_it_out(capsys):
    from benchmarks._compare import compiled_side

    calls = []
    assert compiled_side("b", "ok", lambda: calls.append(1)) >= 0.0 and calls == [1, 1]

    def broken():
        raise RuntimeError("inductor cannot build this")

    errors = {}
    assert compiled_side("b", "side", broken, errors) is None
    assert (
        "[b] side unavailable here: RuntimeError: inductor cannot build" in capsys.readouterr().err
    )
    assert errors == {"side": "RuntimeError: inductor cannot build this"}  # for the eager row


def test_sampling_target_reads_each_peers_fastest_formulation():
    from benchmarks._compare import fastest_of
    from benchmarks._harness import side_rows
    from benchmarks._summary import targets

    # Eager torchdiffeq is slower (wgfm 2.5x faster), its compiled network faster (1.5x): the
    # target reads the compiled row only, and is not met.
    times = {"torchdiffeq odeint dopri5": [2.5, 2.5], "torchdiffeq odeint dopri5, compiled": [1.5]}
    flags = fastest_of({k: v[0] for k, v in times.items()}, {"torchdiffeq": list(times)})
    assert flags == {
        "torchdiffeq odeint dopri5": False,
        "torchdiffeq odeint dopri5, compiled": True,
    }
    extras = {k: {"speedup": v[0], "fastest_peer": flags[k]} for k, v in times.items()}
    rows = side_rows("peer_sampling", "D=2, n=1000, rtol=atol=1e-05", times, 2, extras)
    assert [r["median_s"] for r in rows] == [2.5, 1.5] and rows[0]["compile_s"] is None
    got = {t["target"]: t for t in targets(rows)}["sampling vs torchdiffeq, D=2, n=1000"]
    assert got["met"] is False and got["measured"].startswith("torchdiffeq odeint dopri5, compiled")
