"""Dataset loaders: the embedded one, and local MNIST/CIFAR-10 files read from their standard formats."""

from __future__ import annotations

import gzip
import os

import numpy as np
import pytest

from decay import data
from decay.config import ConfigError


def test_digits_is_embedded_and_split_fixed_by_seed():
    a = data.load("digits", None, 0)
    b = data.load("digits", None, 0)
    c = data.load("digits", None, 1)
    # 1797 images: 359 test, and of the 1438 training images 20% (288) held out for validation.
    assert a.x_train.shape == (1150, 8, 8, 1) and a.x_val.shape == (288, 8, 8, 1) and a.x_test.shape == (359, 8, 8, 1)
    np.testing.assert_array_equal(a.y_train, b.y_train)
    np.testing.assert_array_equal(a.y_val, b.y_val)
    assert not np.array_equal(a.y_train, c.y_train) and not np.array_equal(a.y_val, c.y_val)
    assert data.load("digits", None, 0, val_fraction=0.5).x_val.shape[0] == 719
    assert abs(float(a.x_train.mean())) < 1e-5 and float(a.x_train.std()) == pytest.approx(1.0, rel=1e-4)
    assert set(np.unique(a.y_train)) == set(range(10))


def _ids(n: int) -> data.Dataset:
    """A dataset whose every example carries its own index as its pixel value."""
    x = np.arange(n, dtype=np.float32).reshape(n, 1, 1, 1)
    return data.Dataset("ids", x[: n - 20], np.zeros(n - 20, np.int32), x[n - 20 :], np.zeros(20, np.int32), 2)


def test_validation_training_and_test_are_disjoint_and_fixed_by_the_data_seed():
    ds = _ids(120)
    a, b, c = (data.split_validation(ds, 0.25, seed) for seed in (3, 3, 4))
    ids = {name: set(getattr(a, f"x_{name}").ravel().tolist()) for name in ("train", "val", "test")}
    assert len(ids["val"]) == 25 and len(ids["train"]) == 75 and len(ids["test"]) == 20
    assert not ids["train"] & ids["val"] and not ids["train"] & ids["test"] and not ids["val"] & ids["test"]
    assert ids["train"] | ids["val"] == set(range(100))  # every training example lands in exactly one split
    np.testing.assert_array_equal(a.x_val, b.x_val)
    assert set(c.x_val.ravel().tolist()) != ids["val"]  # another data seed, another split
    assert np.all(np.diff(a.x_train.ravel()) > 0)  # the training examples keep their order
    with pytest.raises(ConfigError, match="--val_fraction=0.001 leaves no validation"):
        data.split_validation(ds, 0.001, 0)


def test_standardized_with_the_training_split_alone():
    ds = data.standardize(data.split_validation(_ids(120), 0.25, 0))
    assert abs(float(ds.x_train.mean())) < 1e-6 and float(ds.x_train.std()) == pytest.approx(1.0, rel=1e-5)
    assert abs(float(ds.x_val.mean())) > 1e-3  # the validation split's own statistics were not used


def test_synthetic_labels_come_from_a_fixed_teacher():
    a, b = data.load("synthetic", None, 0), data.load("synthetic", None, 0)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert len(np.unique(a.y_train)) >= 5


def _write_idx(path, arr, gz):
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
    opener = gzip.open if gz else open
    with opener(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def test_mnist_reads_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (5, 28, 28))
    labels = np.array([0, 1, 2, 3, 4])
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", imgs, gz=True)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", labels, gz=False)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", imgs[:2], gz=False)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels[:2], gz=False)
    ds = data.load("mnist", str(tmp_path), 0)
    assert ds.x_train.shape == (4, 28, 28, 1) and ds.x_val.shape == (1, 28, 28, 1) and ds.x_test.shape == (2, 28, 28, 1)
    assert sorted([*ds.y_train.tolist(), *ds.y_val.tolist()]) == labels.tolist()
    # Pixels: row-major 28x28 images, standardized with the training split's own mean and std
    # (the labels 0..4 name the training images, so each row is traced back to its source).
    raw_train = imgs[ds.y_train].astype(np.float64)
    mean, std = raw_train.mean(), raw_train.std()
    np.testing.assert_allclose(ds.x_train[..., 0], (raw_train - mean) / std, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ds.x_val[..., 0], (imgs[ds.y_val] - mean) / std, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ds.x_test[..., 0], (imgs[:2] - mean) / std, rtol=1e-5, atol=1e-5)
    assert ds.y_test.tolist() == [0, 1]


def test_mnist_missing_files_name_them(tmp_path):
    with pytest.raises(ConfigError, match="set --data_dir"):
        data.load("mnist", None, 0)
    with pytest.raises(ConfigError, match="is not a folder"):
        data.load("mnist", str(tmp_path / "nope"), 0)
    _write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((1, 2, 2)), gz=False)
    with pytest.raises(ConfigError, match="lacks train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte"):
        data.load("mnist", str(tmp_path), 0)


def test_mnist_truncated_file_is_reported(tmp_path):
    path = tmp_path / "x"
    _write_idx(path, np.zeros((4, 3, 3)), gz=False)
    with open(path, "r+b") as f:
        f.truncate(20)
    with pytest.raises(ConfigError, match="truncated"):
        data.read_idx(str(path))


def test_cifar10_reads_binary_batches(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    os.makedirs(folder)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        rec = np.concatenate([rng.integers(0, 10, (3, 1)), rng.integers(0, 256, (3, 3072))], axis=1)
        (folder / name).write_bytes(rec.astype(np.uint8).tobytes())
    ds = data.load("cifar10", str(tmp_path), 0)
    assert ds.x_train.shape == (12, 32, 32, 3) and ds.x_val.shape == (3, 32, 32, 3) and ds.x_test.shape == (3, 32, 32, 3)
    # Channel-first records become NHWC, then standardized with the training split's statistics.
    raw = np.frombuffer((folder / "test_batch.bin").read_bytes(), np.uint8).reshape(3, 3073)
    train_pixels = np.concatenate(
        [np.frombuffer((folder / f"data_batch_{i}.bin").read_bytes(), np.uint8).reshape(3, 3073)[:, 1:] for i in range(1, 6)]
    ).astype(np.float64)
    order = np.random.default_rng([0, 7]).permutation(15)  # the validation split of data seed 0: 3 of 15
    kept = np.setdiff1d(np.arange(15), order[:3])
    mean, std = train_pixels[kept].mean(), train_pixels[kept].std()
    for c in range(3):
        assert ds.x_test[0, 0, 0, c] == pytest.approx((raw[0, 1 + c * 1024] - mean) / std, rel=1e-5)
        assert ds.x_test[1, 2, 5, c] == pytest.approx((raw[1, 1 + c * 1024 + 2 * 32 + 5] - mean) / std, rel=1e-5)
    np.testing.assert_array_equal(ds.y_test, raw[:, 0])


MNIST_NAMES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


def _mnist_dir(folder, n_train=20, n_test=10, gz=False):
    """Four valid tiny MNIST files (4x4 images) in `folder`; returns their paths in MNIST_NAMES order."""
    rng = np.random.default_rng(1)
    arrays = [
        rng.integers(0, 256, (n_train, 4, 4)),
        rng.integers(0, 10, n_train),
        rng.integers(0, 256, (n_test, 4, 4)),
        rng.integers(0, 10, n_test),
    ]
    paths = [folder / (name + ".gz" * gz) for name in MNIST_NAMES]
    for path, arr in zip(paths, arrays, strict=True):
        _write_idx(path, arr, gz=gz)
    return paths


def _config_error(load, path, *words):
    """Asserts `load()` raises a one-line ConfigError naming `path`, each of `words`, and what to do."""
    with pytest.raises(ConfigError) as caught:
        load()
    message = str(caught.value)
    assert str(path) in message, message
    for word in words:
        assert word in message, message
    assert "re-download" in message and "\n" not in message and "\r" not in message, message
    return message


def test_tiny_valid_mnist_and_cifar_files_load(tmp_path):
    # The files the tests below damage are themselves valid.
    _mnist_dir(tmp_path)
    assert data.load("mnist", str(tmp_path), 0).x_test.shape == (10, 4, 4, 1)
    _cifar_dir(tmp_path / "c")
    assert data.load("cifar10", str(tmp_path / "c"), 0).x_test.shape == (20, 32, 32, 3)


def test_mnist_wrong_magic_number(tmp_path):
    images, labels, _, _ = _mnist_dir(tmp_path)
    # The training image and label files swapped: both valid IDX files, of the wrong kinds.
    swap = tmp_path / "swap"
    os.replace(images, swap)
    os.replace(labels, images)
    os.replace(swap, labels)
    _config_error(lambda: data.load("mnist", str(tmp_path), 0), images, "magic number", "swapped")
    # A file that is not IDX at all.
    images.write_bytes(np.random.default_rng(0).integers(1, 256, 400).astype(np.uint8).tobytes())
    _config_error(lambda: data.load("mnist", str(tmp_path), 0), images, "bad magic number")
    images.write_bytes(b"\x12\x34\x08\x03" + bytes(12))  # a valid type and rank after the wrong first two bytes
    _config_error(lambda: data.load("mnist", str(tmp_path), 0), images, "bad magic number", "12340803")
    # A gzip-compressed file without the .gz name.
    images.write_bytes(gzip.compress(b"\0\0\x08\x03" + bytes(12)))
    with pytest.raises(ConfigError, match=r"bad magic number.*gzip-compressed; rename it to end in \.gz$"):
        data.load("mnist", str(tmp_path), 0)
    # An IDX file of another element type (float32).
    images.write_bytes(b"\0\0\x0d\x01" + (1).to_bytes(4, "big") + bytes(4))
    _config_error(lambda: data.read_idx(str(images)), images, "float32", "magic number")
    images.write_bytes(b"")
    _config_error(lambda: data.read_idx(str(images)), images, "empty")


def test_mnist_truncated_files(tmp_path):
    paths = _mnist_dir(tmp_path)
    # Data cut short: fewer pixels than the header's 20x4x4.
    paths[0].write_bytes(paths[0].read_bytes()[:-5])
    _config_error(lambda: data.load("mnist", str(tmp_path), 0), paths[0], "truncated", "(20, 4, 4)")
    # The header itself cut short.
    paths[0].write_bytes(paths[0].read_bytes()[:10])
    _config_error(lambda: data.load("mnist", str(tmp_path), 0), paths[0], "truncated", "shorter than its own 16-byte header")
    # Bytes beyond what the header declares.
    paths[2].write_bytes(paths[2].read_bytes() + bytes(3))
    _config_error(lambda: data.read_idx(str(paths[2])), paths[2], "3 bytes more")


def test_mnist_truncated_or_invalid_gz(tmp_path):
    paths = _mnist_dir(tmp_path, gz=True)
    whole = paths[0].read_bytes()
    paths[0].write_bytes(whole[: len(whole) // 2])  # the compressed stream cut in half
    _config_error(lambda: data.load("mnist", str(tmp_path), 0), paths[0], "truncated", "gzip")
    paths[0].write_bytes(b"not gzip at all, just text")
    _config_error(lambda: data.load("mnist", str(tmp_path), 0), paths[0], "not a valid gzip file")


def test_mnist_image_and_label_counts_must_agree(tmp_path):
    images, labels, test_images, test_labels = _mnist_dir(tmp_path)
    _write_idx(labels, np.zeros(19), gz=False)
    message = _config_error(lambda: data.load("mnist", str(tmp_path), 0), images, "20 images", "19 labels", "differ")
    assert str(labels) in message
    _mnist_dir(tmp_path)
    _write_idx(test_images, np.zeros((11, 4, 4)), gz=False)
    assert str(test_labels) in _config_error(lambda: data.load("mnist", str(tmp_path), 0), test_images, "differ")
    _write_idx(test_images, np.zeros((0, 4, 4)), gz=False)
    _write_idx(test_labels, np.zeros(0), gz=False)
    _config_error(lambda: data.load("mnist", str(tmp_path), 0), test_images, "holds no images")


def test_mnist_labels_out_of_range_and_mismatched_image_sizes(tmp_path):
    _, labels, test_images, _ = _mnist_dir(tmp_path)
    _write_idx(labels, np.r_[np.zeros(19), 12], gz=False)
    _config_error(lambda: data.load("mnist", str(tmp_path), 0), labels, "out of range", "label 12")
    _mnist_dir(tmp_path)
    _write_idx(test_images, np.zeros((10, 5, 5)), gz=False)
    _config_error(lambda: data.load("mnist", str(tmp_path), 0), test_images, "sizes differ")


CIFAR_NAMES = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]


def _cifar_dir(folder, n=20):
    """Six valid tiny CIFAR-10 binary batches of n records in `folder`; returns their paths."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(2)
    paths = [folder / name for name in CIFAR_NAMES]
    for path in paths:
        rec = np.concatenate([rng.integers(0, 10, (n, 1)), rng.integers(0, 256, (n, 3072))], axis=1)
        path.write_bytes(rec.astype(np.uint8).tobytes())
    return paths


def test_cifar10_damaged_batches(tmp_path):
    paths = _cifar_dir(tmp_path)
    whole = paths[2].read_bytes()
    paths[2].write_bytes(whole[:-100])  # truncated mid-record
    _config_error(lambda: data.load("cifar10", str(tmp_path), 0), paths[2], "truncated", "3073-byte records")
    paths[2].write_bytes(whole + bytes(5))  # not a whole number of records
    _config_error(lambda: data.read_cifar_bin(str(paths[2])), paths[2], "not a whole number", "5 bytes over")
    paths[2].write_bytes(b"")
    _config_error(lambda: data.load("cifar10", str(tmp_path), 0), paths[2], "empty")
    rec = np.frombuffer(whole, np.uint8).reshape(20, 3073).copy()
    rec[7, 0] = 10  # a label outside 0..9
    paths[5].write_bytes(rec.tobytes())
    paths[2].write_bytes(whole)
    _config_error(lambda: data.load("cifar10", str(tmp_path), 0), paths[5], "out of range", "label 10", "example 7")


def test_cifar10_truncated_gz(tmp_path):
    paths = _cifar_dir(tmp_path)
    gz = tmp_path / "test_batch.bin.gz"
    gz.write_bytes(gzip.compress(paths[5].read_bytes())[:-50])
    os.remove(paths[5])
    _config_error(lambda: data.load("cifar10", str(tmp_path), 0), gz, "truncated")


def test_blank_images_cannot_be_standardized(tmp_path):
    images, _, test_images, _ = _mnist_dir(tmp_path)
    _write_idx(images, np.full((20, 4, 4), 7), gz=False)
    message = _config_error(lambda: data.load("mnist", str(tmp_path), 0), tmp_path, "standard deviation 0")
    assert "--dataset=mnist" in message


def test_non_finite_inputs_are_counted_and_named():
    ds = data.split_validation(_ids(120), 0.25, 0)
    x_test = ds.x_test.copy()
    x_test.ravel()[[1, 4, 5]] = [np.nan, np.inf, -np.inf]
    message = _config_error(
        lambda: data.check_finite(ds._replace(x_test=x_test), "--dataset=mnist from --data_dir=/d", "re-download them"),
        "--data_dir=/d",
        "3 of 20 test input values are not finite",
    )
    assert "NaN or Inf" in message
    data.check_finite(ds, "--dataset=ids", "re-download them")  # finite: no error
    # Float targets (regression) are checked too.
    y = ds.y_val.astype(np.float32)
    y[0] = np.nan
    _config_error(lambda: data.check_finite(ds._replace(y_val=y), "x", "re-download them"), "x", "1 of 25 validation target")
