"""The resumable output directory of ``wgfm diagnose``.

A directory belongs to one (model, settings) pair: ``diagnose.json`` (the manifest) records the
model's fingerprint and the settings; each finished noise level of a claim is kept in
``parts/<key>/level-NNN.npz`` (its per-sample values, stamped with the fingerprint and a digest
of the settings) and a rerun reuses it. A directory holding anything else is refused. Several
processes of one run write here at once (:mod:`.shards`): every file is written whole through a
temporary file of its own, and the files they share (the manifest, a claim's plan, generated
images) are created once, by the first to finish them (:func:`publish_once`).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..report import jsonable

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
    if not manifest.is_file():
        # Processes of one sharded run start together: another may have written the manifest
        # (and more) since the check above, so look again before refusing.
        foreign = out.is_dir() and any(p.name != MANIFEST and not _is_tmp(p) for p in out.iterdir())
        if foreign and not manifest.is_file():
            raise ValueError(
                f"`--out` {str(out)!r} is not empty and holds no wgfm diagnose run; "
                "choose another --out."
            )
        publish_once(manifest, lambda tmp: tmp.write_text(json.dumps(want, indent=1)))
    have = json.loads(manifest.read_text())
    if have.get("fingerprint") != fingerprint:
        raise ValueError(
            f"`--out` {str(out)!r} holds a run of a different model "
            f"({have.get('model')}); choose another --out."
        )
    if have.get("settings") != want["settings"]:
        diff = [
            k for k in want["settings"] if have.get("settings", {}).get(k) != want["settings"][k]
        ]
        raise ValueError(
            f"`--out` {str(out)!r} holds a run of this model with other "
            f"settings ({', '.join(diff)} differ); choose another --out."
        )


def publish_once(path: Path, write: Callable[[Path], object]) -> bool:
    """Create ``path`` whole unless it exists: ``write`` fills a temporary file, which is then
    hard-linked to ``path`` (atomic, and refused if ``path`` exists), so of processes racing to
    create it exactly one succeeds and every reader sees a complete file. Returns whether this
    call created it."""
    if path.is_file():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        write(tmp)
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


def _tmp_name(path: Path) -> Path:
    """A temporary file beside ``path`` that no other process (on any host sharing the
    directory) picks: hidden, with this process's id and a random suffix."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def _is_tmp(p: Path) -> bool:
    """A temporary file of :func:`publish_once` or :func:`write_atomic` (another process's)."""
    return p.name.startswith(".") and p.name.endswith(".tmp")


def level_path(out: Path, claim_key: str, level: int) -> Path:
    """Where one level of a claim is kept (each written once, by the process measuring it)."""
    return out / "parts" / claim_key / f"level-{level:03d}.npz"


def store_level(path: Path, values: Any, stamp: dict[str, Any]) -> None:
    """Keep one level's values (a PyTree of dicts and tuples of arrays) at ``path``, with
    ``stamp`` (the run's fingerprint and settings digest, the seconds it took) beside them;
    written whole or not at all."""
    arrays = {f"v{SEP}{k}": np.asarray(v) for k, v in flatten(values).items()}

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, stamp=np.asarray(json.dumps(stamp)), **arrays)  # pyright: ignore

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    write(tmp)
    os.replace(tmp, path)


def load_level(path: Path) -> tuple[Any, dict[str, Any]]:
    """``(values, stamp)`` of a level kept by :func:`store_level`."""
    with np.load(path, allow_pickle=False) as z:
        stamp = json.loads(str(z["stamp"]))
        flat = {k.split(SEP, 1)[1]: z[k] for k in z.files if k != "stamp"}
    return unflatten(flat), stamp


SEP = "|"  # joins the keys of a PyTree path (field names hold spaces, never this)


def flatten(tree: Any, prefix: str = "") -> dict[str, np.ndarray]:
    """A PyTree of dicts and tuples of arrays as ``{"a|b|0": array}``."""
    items = tree.items() if isinstance(tree, dict) else enumerate(tree)
    out = {}
    for k, v in items:
        name = f"{prefix}{SEP}{k}" if prefix else str(k)
        if isinstance(v, dict | tuple | list):
            out.update(flatten(v, name))
        else:
            out[name] = np.asarray(v)
    return out


def unflatten(flat: dict[str, np.ndarray]) -> Any:
    """The PyTree :func:`flatten` flattened (tuples where every key is an index)."""
    tree: dict = {}
    for name, v in flat.items():
        *path, last = name.split(SEP)
        node = tree
        for k in path:
            node = node.setdefault(k, {})
        node[last] = v

    def build(node):
        if not isinstance(node, dict):
            return node
        if node and all(k.isdigit() for k in node):
            return tuple(build(node[str(i)]) for i in range(len(node)))
        return {k: build(v) for k, v in node.items()}

    return build(tree)


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file (a killed run leaves no half file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    tmp.write_text(text)
    os.replace(tmp, path)


def as_json(x):
    """``x`` as it reads back from JSON (tuples as lists, arrays as lists)."""
    return json.loads(json.dumps(jsonable(x)))
