"""Claim 1's probe path with adaptive stopping (``DiagnoseSizes.rel_se``, ``--rel-se``): the
probes stop at the target s.e., and results.json and the report say how many passes that took,
the s.e. reached and the skew part's effective rank."""

import dataclasses

import jax
import numpy as np
import pytest
from test_diagnosis import SIZES, _linear

import wgfm
from wgfm.diagnosis import diagnose
from wgfm.diagnosis.config import DiagnoseConfig
from wgfm.diagnosis.registry import CLAIMS


def test_adaptive_probes_stop_at_the_target_and_the_report_says_so():
    a = np.asarray(jax.random.normal(jax.random.key(3), (6, 6)), np.float32)
    x = np.asarray(jax.random.normal(jax.random.key(4), (16, 6)), np.float32)
    sizes = dataclasses.replace(SIZES, max_exact_dim=4, num_probes=4, rel_se=0.1, max_probes=64)
    d = diagnose(
        _linear(a),
        wgfm.VP(),
        x,
        key=jax.random.key(5),
        kind="score",
        sizes=sizes,
        claims=("differential",),
    )
    num = d.numbers["differential"]
    ad = num["adaptive"]
    passes = np.asarray(ad["median_passes"]["trained"])
    rel = np.asarray(ad["median_relative_se"]["trained"])
    # 2 passes per probe and the primal; rounds of 4, at most 64 probes
    assert np.all(passes >= 2 * 4 + 1) and np.all(passes <= 2 * 64 + 1)
    assert np.all((rel <= 0.1) | (passes == 2 * 64 + 1))
    lam = np.linalg.norm(a - a.T) / np.linalg.norm(a)
    est = np.asarray(num["median_probe_ratio"]["trained"])
    se = np.asarray(num["median_probe_ratio_se"]["trained"])
    assert np.all(np.abs(est - lam) <= 4 * se), (est, se, lam)
    # the VJP terms of a 6x6 map resolve its skew part's rank: between 1 and D
    rank = np.asarray(ad["median_effective_rank"]["trained"])
    assert np.all((rank >= 1) & (rank <= 6))
    row = d.rows[CLAIMS["differential"].title][0]
    assert row.measured.startswith("median full-dimension lambda (probes until a 10% s.e.")
    line = d.header["claim 1 probes"]
    assert line.startswith("rounds of 4 probes until lambda's s.e. is at most 10%")
    assert "effective rank of the skew part" in line
    fixed = diagnose(
        _linear(a),
        wgfm.VP(),
        x,
        key=jax.random.key(5),
        kind="score",
        sizes=dataclasses.replace(sizes, rel_se=None),
        claims=("differential",),
    )
    assert "adaptive" not in fixed.numbers["differential"]
    assert "claim 1 probes" not in fixed.header


def test_rel_se_option():
    assert DiagnoseConfig(model="m", quick=True).sizes.rel_se == 0.1
    assert DiagnoseConfig(model="m", rel_se=0.0).sizes.rel_se is None
    with pytest.raises(ValueError, match="--rel-se"):
        DiagnoseConfig(model=".", rel_se=-1.0).check()
    with pytest.raises(ValueError, match="multiple of num_probes"):
        dataclasses.replace(SIZES, num_probes=4, max_probes=6)
