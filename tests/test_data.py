"""wgfm.data: toy sets, digits, IDX/CIFAR readers on files written here, deterministic batching."""

import gzip
import pickle
import struct

import jax
import numpy as np
import pytest

from wgfm import data

KEY = jax.random.PRNGKey(0)


@pytest.mark.parametrize("name", data.TOY_SETS)
def test_toy_sets_shape_determinism_and_scale(name):
    x = np.asarray(data.toy_2d(name, 2000, key=KEY))
    assert x.shape == (2000, 2) and np.all(np.isfinite(x))
    np.testing.assert_array_equal(x, np.asarray(data.toy_2d(name, 2000, key=KEY)))
    assert not np.array_equal(x, np.asarray(data.toy_2d(name, 2000, key=jax.random.PRNGKey(1))))
    # Every set lives roughly in [-6, 6]^2 with spread of order one (not collapsed, not blown up).
    assert np.abs(x).max() < 8.0 and 0.5 < x.std(0).min() < 4.0


def test_ring_matches_oracle_mixture_moments():
    # "ring" is the oracle's gmm.ring(): 8 modes at radius 4, std 0.5 -> E|x|^2 = 16 + 2 * 0.25.
    x = np.asarray(data.toy_2d("ring", 20000, key=KEY))
    # Monte-Carlo: sd(|x|^2) ~ 4, so the standard error with 2e4 samples is ~0.03; 0.15 = 5 s.e.
    assert abs(np.mean(np.sum(x**2, 1)) - 16.5) < 0.15


def test_checkerboard_occupies_alternate_squares():
    x = np.asarray(data.toy_2d("checkerboard", 4000, key=KEY))
    cells = np.floor((x + 4.0) / 2.0).astype(int)
    assert np.all((cells[:, 0] + cells[:, 1]) % 2 == 0)
    assert len({tuple(c) for c in cells}) == 8


def test_toy_rejects_unknown_name():
    with pytest.raises(ValueError, match="`name`"):
        data.toy_2d("spiral", 10, key=KEY)


def test_digits_range_and_labels():
    x, y = data.digits()
    assert x.shape == (1797, 8, 8, 1) and x.dtype == np.float32
    assert x.min() == -1.0 and x.max() == 1.0 and set(np.unique(y)) == set(range(10))


# --------------------------------------------------------------------------------------------
# IDX (MNIST) files written byte by byte from the format specification.


def _write_idx(path, arr, type_code=0x08, compress=False):
    header = bytes([0, 0, type_code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    raw = header + arr.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


@pytest.fixture
def mnist_dir(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 5, dtype=np.uint8)
    _write_idx(tmp_path / "train-images-idx3-ubyte", images)
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", labels, compress=True)
    return tmp_path, images, labels


def test_mnist_round_trip(mnist_dir):
    root, images, labels = mnist_dir
    np.testing.assert_array_equal(data.read_idx(root / "train-images-idx3-ubyte"), images)
    x, y = data.load_mnist(root, "train")
    assert x.shape == (5, 28, 28, 1) and x.dtype == np.float32
    np.testing.assert_array_equal(np.rint((x[..., 0] + 1.0) * 127.5).astype(np.uint8), images)
    np.testing.assert_array_equal(y, labels)


def test_mnist_bad_files(tmp_path, mnist_dir):
    root, images, _ = mnist_dir
    with pytest.raises(FileNotFoundError, match="t10k-images"):
        data.load_mnist(root, "test")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.load_mnist(tmp_path / "nope")
    bad = tmp_path / "bad"
    raw = (root / "train-images-idx3-ubyte").read_bytes()
    bad.write_bytes(raw[:-10])
    with pytest.raises(ValueError, match="truncated"):
        data.read_idx(bad)
    bad.write_bytes(b"\x01\x02" + raw[2:])
    with pytest.raises(ValueError, match="magic"):
        data.read_idx(bad)
    _write_idx(bad, images, type_code=0x0D)  # float32 code
    with pytest.raises(ValueError, match="0x0d"):
        data.read_idx(bad)
    bad.write_bytes(raw[:9])
    with pytest.raises(ValueError, match="header"):
        data.read_idx(bad)
    gz = tmp_path / "x.gz"
    gz.write_bytes(gzip.compress(raw)[:20])
    with pytest.raises(ValueError, match="gzip"):
        data.read_idx(gz)
    # labels that do not match the images
    _write_idx(root / "train-labels-idx1-ubyte.gz", np.zeros(4, np.uint8), compress=True)
    with pytest.raises(ValueError, match="do not match"):
        data.load_mnist(root)


# --------------------------------------------------------------------------------------------
# CIFAR-10 python batches: dict with b"data" (N, 3072) uint8, channel-major, and b"labels".


def _write_cifar(root, n, seed):
    rng = np.random.default_rng(seed)
    flat = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = rng.integers(0, 10, n).tolist()
    return flat, labels


@pytest.fixture
def cifar_dir(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    parts = []
    for i, name in enumerate(data.CIFAR_FILES["train"] + data.CIFAR_FILES["test"]):
        flat, labels = _write_cifar(root, 3, i)
        with open(root / name, "wb") as f:
            pickle.dump({b"data": flat, b"labels": labels, b"batch_label": b"x"}, f)
        parts.append((flat, labels))
    return tmp_path, parts


def test_scale_images_maps_bytes_to_unit_interval():
    out = data.scale_images(np.array([0, 127, 255], np.uint8))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [-1.0, 127 / 127.5 - 1.0, 1.0], rtol=0, atol=1e-7)


def test_cifar_round_trip(cifar_dir):
    root, parts = cifar_dir
    x, y = data.load_cifar10(root, "train")
    assert x.shape == (15, 32, 32, 3)
    np.testing.assert_array_equal(y, np.concatenate([p[1] for p in parts[:5]]))
    flat = np.concatenate([p[0] for p in parts[:5]])
    pix = np.rint((x + 1.0) * 127.5).astype(np.uint8)
    # Pixel (row r, column c, channel ch) is byte ch * 1024 + r * 32 + c of its row.
    for i, r, c, ch in [(0, 0, 0, 0), (4, 5, 31, 2), (14, 31, 7, 1)]:
        assert pix[i, r, c, ch] == flat[i, ch * 1024 + r * 32 + c]
    xt, yt = data.load_cifar10(root / "cifar-10-batches-py", "test")
    assert xt.shape == (3, 32, 32, 3) and list(yt) == parts[5][1]


def test_cifar_bad_files(cifar_dir, tmp_path):
    root, _ = cifar_dir
    batch = root / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(batch.read_bytes()[:100])
    with pytest.raises(ValueError, match="not a CIFAR-10 python batch"):
        data.load_cifar10(root, "test")
    with open(batch, "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(ValueError, match=r"\(N, 3072\)"):
        data.load_cifar10(root, "test")
    with open(batch, "wb") as f:
        pickle.dump([1, 2], f)
    with pytest.raises(ValueError, match="b'labels'"):
        data.load_cifar10(root, "test")
    (root / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        data.load_cifar10(root, "train")
    with pytest.raises(ValueError, match="`split`"):
        data.load_cifar10(root, "valid")


# --------------------------------------------------------------------------------------------


def test_batches_are_epoch_permutations_and_deterministic():
    n, b = 10, 3  # 3 batches per epoch, last example of each epoch dropped
    seen = np.concatenate([data.batch_indices(KEY, n, b, s) for s in range(3)])
    assert len(set(seen.tolist())) == 9 and seen.max() < n
    again = np.concatenate([data.batch_indices(KEY, n, b, s) for s in range(3)])
    np.testing.assert_array_equal(seen, again)
    next_epoch = np.concatenate([data.batch_indices(KEY, n, b, s) for s in range(3, 6)])
    assert not np.array_equal(seen, next_epoch)
    # Typed and raw keys with the same bits give the same order.
    np.testing.assert_array_equal(
        data.batch_indices(jax.random.key(0), n, b, 4), data.batch_indices(KEY, n, b, 4)
    )
    assert data.data_position(n, b, 7) == (2, 1)
    with pytest.raises(ValueError, match="`batch_size`"):
        data.data_position(n, 11, 0)
