"""Datasets: an embedded real one (no download), synthetic teacher data, and local MNIST / CIFAR-10.

`load` returns a `Dataset` of float32 NHWC images and int32 labels in three disjoint splits:
train, validation (carved from the loader's training set by a permutation fixed by
`data_seed`; every choice of learning rate, budget or best configuration is made on it) and
test (the dataset's own test set, used only for the final numbers). Images are standardized
with the mean and standard deviation of the training split alone.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from decay.config import RunConfig
from decay.errors import ConfigError
from decay.registry import Registry


class Dataset(NamedTuple):
    """Train and test arrays of one dataset."""

    name: str
    x_train: np.ndarray  # float32, N x H x W x C
    y_train: np.ndarray  # int32, N
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    x_val: np.ndarray | None = None  # carved from the training set by `split_validation`
    y_val: np.ndarray | None = None


Loader = Callable[[str | None, int], Dataset]
DATASETS: Registry[Loader] = Registry("dataset")


PRESTANDARDIZED = {"synthetic"}  # loaders whose inputs are standard by construction (q^0 = 1 exactly in expectation)


def _raw(name: str, x_train, y_train, x_test, y_test, num_classes: int) -> Dataset:
    return Dataset(
        name,
        np.asarray(x_train, np.float32),
        np.asarray(y_train, np.int32),
        np.asarray(x_test, np.float32),
        np.asarray(y_test, np.int32),
        num_classes,
    )


def split_validation(ds: Dataset, fraction: float, data_seed: int) -> Dataset:
    """Moves round(fraction * n_train) training examples, chosen by a permutation seeded by `data_seed`, to the validation split.

    The remaining training examples keep their order; the test split is untouched.
    """
    n = ds.x_train.shape[0]
    n_val = int(round(fraction * n))
    if not 1 <= n_val < n:
        raise ConfigError(f"--val_fraction={fraction:g} leaves no validation or no training examples of {n}")
    pick = np.zeros(n, bool)
    pick[np.random.default_rng([data_seed, 7]).permutation(n)[:n_val]] = True
    return ds._replace(x_train=ds.x_train[~pick], y_train=ds.y_train[~pick], x_val=ds.x_train[pick], y_val=ds.y_train[pick])


def standardize(ds: Dataset) -> Dataset:
    """Every split standardized with the training split's mean and standard deviation."""
    mean, std = float(ds.x_train.mean()), float(ds.x_train.std())

    def z(x):
        return None if x is None else ((x - mean) / std).astype(np.float32)

    return ds._replace(x_train=z(ds.x_train), x_test=z(ds.x_test), x_val=z(ds.x_val))


@DATASETS.register("digits")
def load_digits(data_dir: str | None, data_seed: int) -> Dataset:
    """UCI handwritten digits as bundled with scikit-learn: 1797 8x8 images, 10 classes.

    It ships inside an installed package (no download, no file to manage), it is real
    handwriting, and it is small enough for a depth sweep of hundreds of runs on a laptop CPU.
    The 80/20 train/test split (1438/359) is a permutation fixed by `data_seed`.
    """
    del data_dir
    from sklearn.datasets import load_digits as _load

    bunch = _load()
    x = bunch.images.reshape(-1, 8, 8, 1)
    y = bunch.target
    order = np.random.default_rng(data_seed).permutation(len(y))
    n_train = int(round(0.8 * len(y)))
    tr, te = order[:n_train], order[n_train:]
    return _raw("digits", x[tr], y[tr], x[te], y[te], 10)


@DATASETS.register("synthetic")
def load_synthetic(data_dir: str | None, data_seed: int) -> Dataset:
    """I.i.d. standard Gaussian 8x8x1 inputs, labels = argmax of a fixed random tanh teacher.

    4096 train and 1024 test examples, 10 classes; the inputs have unit variance per
    coordinate, as mean-field theory assumes.
    """
    del data_dir
    rng = np.random.default_rng(10_000 + data_seed)
    n_train, n_test, dim, hidden, classes = 4096, 1024, 64, 64, 10
    x = rng.standard_normal((n_train + n_test, dim))
    w1 = rng.standard_normal((dim, hidden)) / np.sqrt(dim)
    w2 = rng.standard_normal((hidden, classes)) / np.sqrt(hidden)
    y = np.argmax(np.tanh(2.0 * x @ w1) @ w2, axis=1)
    x = x.reshape(-1, 8, 8, 1).astype(np.float32)
    return _raw("synthetic", x[:n_train], y[:n_train], x[n_train:], y[n_train:], classes)


def _find(data_dir: str | None, flag_dataset: str, names: list[str]) -> list[str]:
    """Paths of `names` in data_dir (each also accepted with .gz); one-line error if any is missing."""
    expected = ", ".join(names)
    if not data_dir:
        raise ConfigError(f"--dataset={flag_dataset} reads local files: set --data_dir to a folder with {expected}")
    if not os.path.isdir(data_dir):
        raise ConfigError(f"--data_dir={data_dir} is not a folder; --dataset={flag_dataset} expects it to hold {expected}")
    found, missing = [], []
    for name in names:
        for candidate in (name, name + ".gz"):
            path = os.path.join(data_dir, candidate)
            if os.path.isfile(path):
                found.append(path)
                break
        else:
            missing.append(name)
    if missing:
        raise ConfigError(
            f"--data_dir={data_dir} lacks {', '.join(missing)} (--dataset={flag_dataset} expects {expected}, optionally .gz)"
        )
    return found


def _read_bytes(path: str) -> bytes:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        return f.read()


def read_idx(path: str) -> np.ndarray:
    """Reads an IDX file (the MNIST distribution format) of unsigned bytes."""
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ConfigError(f"{path} is not an IDX file of unsigned bytes (bad magic number)")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ConfigError(f"{path} is truncated: header says {shape}, found {data.size} values")
    return data.reshape(shape)


@DATASETS.register("mnist")
def load_mnist(data_dir: str | None, data_seed: int) -> Dataset:
    """MNIST from the four IDX files of its standard distribution, under --data_dir."""
    del data_seed
    names = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    xtr, ytr, xte, yte = (read_idx(p) for p in _find(data_dir, "mnist", names))
    return _raw("mnist", xtr[..., None], ytr, xte[..., None], yte, 10)


def read_cifar_bin(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Reads one CIFAR-10 binary batch: records of 1 label byte + 3072 bytes (3x32x32, CHW)."""
    raw = np.frombuffer(_read_bytes(path), dtype=np.uint8)
    if raw.size % 3073:
        raise ConfigError(f"{path} is not a CIFAR-10 binary batch (size is not a multiple of 3073 bytes)")
    rec = raw.reshape(-1, 3073)
    return rec[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), rec[:, 0]


@DATASETS.register("cifar10")
def load_cifar10(data_dir: str | None, data_seed: int) -> Dataset:
    """CIFAR-10 from its binary distribution (data_batch_1..5.bin, test_batch.bin) under --data_dir.

    The binary version is read because the "python version" is pickled, and decay never unpickles.
    """
    del data_seed
    sub = os.path.join(data_dir, "cifar-10-batches-bin") if data_dir else None
    if sub and os.path.isdir(sub):
        data_dir = sub
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    parts = [read_cifar_bin(p) for p in _find(data_dir, "cifar10", names)]
    xtr = np.concatenate([p[0] for p in parts[:5]])
    ytr = np.concatenate([p[1] for p in parts[:5]])
    return _raw("cifar10", xtr, ytr, parts[5][0], parts[5][1], 10)


def load(name: str, data_dir: str | None, data_seed: int, val_fraction: float = RunConfig.val_fraction) -> Dataset:
    """A registered dataset by name, its validation split carved from the training set, standardized on the training split."""
    ds = split_validation(DATASETS.get(name)(data_dir, data_seed), val_fraction, data_seed)
    return ds if name in PRESTANDARDIZED else standardize(ds)
