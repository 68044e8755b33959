"""The plan of a run (wgfm.diagnosis.plan) against hand-computed cases, the size presets and
``--size``."""

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import wgfm
from wgfm.diagnosis import FULL, LARGE, PRESETS, QUICK
from wgfm.diagnosis.config import DiagnoseConfig
from wgfm.diagnosis.plan import (
    PassTimes,
    count_passes,
    loop_evaluations,
    measured_probes,
    plan_header,
    plan_run,
    time_passes,
)
from wgfm.report import Report

# claim 1 at 2 levels x 3 images, claim 2 at 1 x 2 (22 loop points each), 4 images generated
CLAIM1 = dict(num_levels=2, num_samples=3, sub_jacobian_size=4, num_probes=2, batch_size=2)
CLAIM2 = dict(loop_levels=1, loop_samples=2, loop_points=5, bridge_steps=6, noisy_copies=2)
OTHER = dict(noisy_points=3, num_generated=4, ddim_steps=10, max_exact_dim=None)
PROBES = dict(jacobians="probes", rel_se=0.1, max_probes=8)
SIZES = dataclasses.replace(QUICK, **CLAIM1, **CLAIM2, **OTHER, **PROBES)
NETWORK = PassTimes(forward_s=1.0, jvp_s=2.0, vjp_s=3.0, temp_bytes=100)
GAUSSIAN = PassTimes(forward_s=0.1, jvp_s=0.2, vjp_s=0.3)


def test_the_plan_of_a_hand_computed_case():
    p = plan_run(SIZES, NETWORK, GAUSSIAN, dim=10, num_images=4, generated=True, probes=3)
    # claim 1, per point: per network field (4 + 3) JVPs + 3 VJPs = 14 + 9 = 23 s, two of them
    # (trained, untrained), plus the Gaussian's 1.4 + 0.9 = 2.3 s: 48.3 s at each of 2 levels
    # x 3 images
    assert p.seconds["claim 1"] == pytest.approx(6 * 48.3)
    # claim 2: 2 x 5 + 6 + 2 x 3 = 22 evaluations per point: 2 x 22 + 2.2 = 46.2 s, 1 x 2 points
    assert loop_evaluations(SIZES) == 22
    assert p.seconds["claim 2"] == pytest.approx(2 * 46.2)
    assert p.seconds["generation"] == pytest.approx(4 * 10 * 1.0)
    assert p.total_s == pytest.approx(6 * 48.3 + 92.4 + 40)
    # every point at max_probes = 8: 2 x (24 + 24) + 2.4 + 2.4 = 100.8 s per point
    assert p.seconds_max_probes == pytest.approx(6 * 100.8 + 92.4 + 40)
    # memory, D x 4 = 40 bytes a sample: 4 images + a rank-4 basis resident (320); claim 2's
    # 2 x 1 x 2 noised pairs (160) and one image's 22 loop points x (100 + 4 x 40) (5,720)
    assert p.peak_bytes["resident"] == 320
    assert p.peak_bytes["claim 1"] == 6 * 40 + 2 * (3 * 100 + 3 * 2 * 40)
    assert p.peak_bytes["gaussian fit"] == 3 * 4 * 40
    assert p.peak_bytes["claim 2"] == 160 + 5720
    assert p.peak_bytes["peak"] == 320 + 5880
    # no VJP: each probe is two JVPs
    no_rev = count_passes(SIZES, 10, exact=False, probes=3, reverse=False)["claim 1"]
    assert (no_rev.forward, no_rev.jvp, no_rev.vjp) == (0, 4 + 6, 0)


def test_exact_jacobians_when_their_jvps_fit_the_budget():
    # 6 Jacobians x 3 fields of D = 10 JVPs at 2 s: 360 s
    auto = dataclasses.replace(SIZES, jacobians="auto", exact_budget_s=360.0)
    p = plan_run(auto, NETWORK, GAUSSIAN, dim=10, num_images=4, generated=False)
    assert p.exact and p.seconds["generation"] == 0
    assert p.seconds["claim 1"] == pytest.approx(6 * (2 * 10 * 2.0 + 10 * 0.2))
    over = dataclasses.replace(auto, exact_budget_s=359.0)
    assert not plan_run(over, NETWORK, GAUSSIAN, dim=10, num_images=4, generated=False).exact
    by_dim = dataclasses.replace(auto, max_exact_dim=9)
    assert not plan_run(by_dim, NETWORK, None, dim=10, num_images=4, generated=False).exact


def test_presets_grow_and_the_cli_picks_one():
    assert list(PRESETS) == ["quick", "full", "large"]
    assert PRESETS["quick"] is QUICK and PRESETS["full"] is FULL and PRESETS["large"] is LARGE
    # the upper end of the authors' 128-256 images x 100 levels
    assert (LARGE.num_levels, LARGE.num_samples, LARGE.loop_samples) == (100, 256, 256)
    assert DiagnoseConfig(model=Path("m"), size="large").sizes.num_samples == 256
    assert DiagnoseConfig(model=Path("m"), quick=True).preset == "quick"
    assert DiagnoseConfig(model=Path("m")).preset == "full"
    with pytest.raises(ValueError, match="`--quick` and `--size full` disagree"):
        DiagnoseConfig(model=Path("."), quick=True, size="full").check()


def test_the_header_plans_every_preset_from_timed_passes():
    w = jnp.asarray(np.random.default_rng(0).normal(size=(12, 12)) / 4, jnp.float32)

    def field(x, t):
        return jnp.tanh(x @ w) * t

    small = dataclasses.replace(QUICK, batch_size=2, num_probes=4, loop_points=3, bridge_steps=3)
    times = time_passes(field, jnp.ones(12), 0.5, small, repeats=1)
    # claim 2's 2 x 3 + 3 + 3 x 8 loop points at once; claim 1's 2 samples x 4 probes
    assert (times.batch, times.tangent_batch) == (33, 8)
    assert times.forward_s > 0 and times.jvp_s > 0 and times.vjp_s is not None
    images = np.ones((5, 12), np.float32)
    numbers = {"differential": {"adaptive": {"median_passes": {"trained": [9.0, 13.0]}}}}
    assert measured_probes(numbers) == 5.0  # passes 2 p + 1 = 11 on average
    probes = dataclasses.replace(QUICK, jacobians="probes")
    header = plan_header(
        field, wgfm.VP(), images, probes, numbers=numbers, generated=False, untrained=False
    )
    ((title, plan),) = header.items()
    assert set(plan) == {"pass times", "probes per point", "quick", "full", "large"}
    walls = [plan[k]["wall time (s)"] for k in PRESETS]
    assert 0 < walls[0] < walls[1] < walls[2], walls
    assert plan["quick"]["claim 1 Jacobians"] == "probes, 5 per point"
    # auto: exact 12 x 12 Jacobians fit the budget at every preset
    auto = plan_header(field, wgfm.VP(), images, QUICK, numbers={}, generated=True)
    assert all(p["claim 1 Jacobians"] == "exact" for k, p in auto[title].items() if k in PRESETS)
    md = Report(Path(".")).markdown(header)  # a nested list in REPORT.md
    assert f"- {title}:\n  - pass times: per point" in md and "\n  - large:\n    - wall" in md


def test_a_field_without_reverse_mode_is_timed_without_a_vjp():
    @jax.custom_jvp
    def f(x):
        return jax.pure_callback(
            np.tanh, jax.ShapeDtypeStruct(x.shape, x.dtype), x, vmap_method="sequential"
        )

    @f.defjvp
    def _(primals, tangents):
        (x,), (v,) = primals, tangents
        y = f(x)
        slope = jax.pure_callback(
            lambda a, b: (1 - np.tanh(a) ** 2) * b,
            jax.ShapeDtypeStruct(x.shape, x.dtype),
            x,
            v,
            vmap_method="sequential",
        )
        return y, slope

    small = dataclasses.replace(QUICK, batch_size=1, num_probes=2, loop_points=3, bridge_steps=3)
    times = time_passes(lambda x, t: f(x), jnp.ones(3), 0.5, small, repeats=1)
    assert times.vjp_s is None and times.jvp_s > 0


MODEL = """
import jax.numpy as jnp
from wgfm import VP

def linear():
    a = jnp.arange(36.0).reshape(6, 6) % 7 - 3.0
    field = lambda x, t: a @ x
    field.sample_shape = (6,)
    return field, VP(), "score"
"""


def test_wgfm_diagnose_writes_the_plan_into_its_report(tmp_path, monkeypatch):
    import json
    import sys

    from wgfm.diagnosis.command import run

    (tmp_path / "planmodel.py").write_text(MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    tiny = dataclasses.replace(
        SIZES, loop_points=4, bridge_steps=4, noisy_points=2, num_generated=3, ddim_steps=2
    )
    try:
        config = DiagnoseConfig(model="planmodel:linear", out=tmp_path / "o", jacobians="probes")  # type: ignore[arg-type]
        run(config, sizes=tiny, plan=True)
    finally:
        sys.modules.pop("planmodel", None)
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    (plan,) = (v for k, v in res["header"].items() if k.startswith("plan of each preset"))
    assert set(plan) >= set(PRESETS)
    # the probe path (jacobians="probes"): the header records this run's measured probes
    assert plan["probes per point"].endswith("as claim 1 spent in this run")
    assert plan["full"]["wall time (s)"] > plan["quick"]["wall time (s)"] > 0
    assert "  - full:\n    - wall time (s): " in (tmp_path / "o" / "REPORT.md").read_text()
