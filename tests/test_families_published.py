"""docs/families_quick.md is what ``python -m experiments.families_check publish`` writes from
the committed runs (docs/runs/families-quick/results.json): no number in it is typed by hand,
and every family of the done-when runs completed with a full-dimension estimate."""

from __future__ import annotations

import json

from experiments import families_check


def test_page_is_rendered_from_the_committed_runs():
    data = json.loads(families_check.RESULTS.read_text())
    assert families_check.PAGE.read_text() == families_check.render(data), (
        "regenerate with `python -m experiments.families_check publish`"
    )


def test_every_family_ran_on_its_own_configuration():
    data = json.loads(families_check.RESULTS.read_text())
    runs = {r["family"]: r for r in data["runs"]}
    assert (
        set(runs)
        == set(families_check.pipelines())
        == {
            "SDXL",
            "SD3",
            "FLUX.1",
            "PixArt-Sigma",
            "Sana",
        }
    )
    for name, r in runs.items():
        assert r["exit_status"] == 0 and r["command"].startswith("wgfm diagnose --quick"), r
        assert "--condition" in r["command"], r
        # The full-dimension estimate: one lambda per level for the model and both controls.
        assert r["D"] > 64 and len(r["lambda"]["trained"]) == len(r["levels"]), r
        assert set(r["lambda"]) == {"trained", "untrained", "oracle score"}, name
