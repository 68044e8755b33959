"""The resumable output directory of ``wgfm diagnose``.

A directory belongs to one (model, settings) pair: ``diagnose.json`` (the manifest) records the
model's fingerprint and the settings; each finished claim is kept in ``claims/<key>.json``
(rows, numbers, figure paths, seconds) and a rerun reuses it. A directory holding anything else
is refused.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from ..report import ClaimRow, Measurement, Report, jsonable

MANIFEST = "diagnose.json"


def claim_directory(out: Path, fingerprint: str, model: str, settings: dict[str, Any]) -> None:
    """Make ``out`` this run's directory, or refuse with a ``ValueError``.

    Args:
        out: the directory: absent, empty, or an earlier ``wgfm diagnose`` run of the same
            model with the same settings (which is resumed).
        fingerprint: the model's (:func:`wgfm.interop.model_fingerprint`).
        model: the model as the manifest names it.
        settings: everything else the numbers depend on (sizes, seed, clean images, field).
    """
    manifest = out / MANIFEST
    want = {"model": model, "fingerprint": fingerprint, "settings": as_json(settings)}
    if manifest.is_file():
        have = json.loads(manifest.read_text())
        if have.get("fingerprint") != fingerprint:
            raise ValueError(
                f"`--out` {str(out)!r} holds a run of a different model "
                f"({have.get('model')}); choose another --out."
            )
        if have.get("settings") != want["settings"]:
            diff = [
                k
                for k in want["settings"]
                if have.get("settings", {}).get(k) != want["settings"][k]
            ]
            raise ValueError(
                f"`--out` {str(out)!r} holds a run of this model with other "
                f"settings ({', '.join(diff)} differ); choose another --out."
            )
        return
    if out.is_dir() and any(out.iterdir()):
        raise ValueError(
            f"`--out` {str(out)!r} is not empty and holds no wgfm diagnose run; "
            "choose another --out."
        )
    write_atomic(manifest, json.dumps(want, indent=1))


def stored_claim(path: Path, settings: dict[str, Any]) -> tuple[Measurement, float] | None:
    """The claim kept at ``path`` by an earlier run with these ``settings``, with its run time
    in seconds; None if there is none. Its figures are the paths of the PNGs written then."""
    if not path.is_file():
        return None
    saved = json.loads(path.read_text())
    if saved.get("settings") != as_json(settings):
        return None
    figures = {Path(f).stem: f for f in saved["figures"]}
    rows = [ClaimRow(**r) for r in saved["rows"]]
    return Measurement(rows, saved["numbers"], figures), float(saved["seconds"])


def store_claim(
    out: Path, path: Path, settings: dict[str, Any], m: Measurement, seconds: float
) -> Measurement:
    """Write ``m``'s figures under ``out/figures`` and keep the claim at ``path``.

    Returns:
        ``m`` with its numbers as JSON values and its figures as the paths written.
    """
    report = Report(out)
    figures = {
        name: str(report.save_figure("", fig, name).relative_to(out))
        for name, fig in m.figures.items()
    }
    kept = Measurement(list(m.rows), as_json(m.numbers), figures)
    saved = {
        "settings": as_json(settings),
        "rows": [dataclasses.asdict(r) for r in kept.rows],
        "numbers": kept.numbers,
        "figures": list(figures.values()),
        "seconds": seconds,
    }
    write_atomic(path, json.dumps(saved, indent=1))
    return kept


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file (a killed run leaves no half file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def as_json(x):
    """``x`` as it reads back from JSON (tuples as lists, arrays as lists)."""
    return json.loads(json.dumps(jsonable(x)))
