"""Datasets: an embedded real one (no download), synthetic teacher data, and local MNIST / CIFAR-10.

`load` returns a `Dataset` of float32 NHWC images (or [N, T, features] sequences) and int32
labels (float32 targets for regression) in three disjoint splits:
train, validation (carved from the loader's training set by a permutation fixed by
`data_seed`; every choice of learning rate, budget or best configuration is made on it) and
test (the dataset's own test set, used only for the final numbers). Images are standardized
with the mean and standard deviation of the training split alone.

Each dataset names its task (`decay.tasks`: classification, regression, per_position) and the
loss of the best prediction that ignores the input (`chance_loss`: ln(classes) for
classification; the adding problem's 1/6, the copy task's 10 ln 8 / (T + 20)), against
which trainability is judged. Sequence tasks (`SEQUENCE`) are for the recurrent families.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
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
    task: str = "classification"  # decay.tasks: classification, regression or per_position
    chance_loss: float | None = None  # loss of the best input-blind prediction; None: ln(num_classes)

    @property
    def chance(self) -> float:
        """The loss of the best prediction that ignores the input (trainability is judged against it)."""
        return math.log(self.num_classes) if self.chance_loss is None else self.chance_loss


Loader = Callable[[str | None, int, int], Dataset]  # (data_dir, data_seed, seq_len) -> Dataset
DATASETS: Registry[Loader] = Registry("dataset")
TASK_OF: dict[str, str] = {}  # dataset name -> its task, known without loading it
SEQUENCE: set[str] = set()  # datasets of [N, T, features] sequences (the recurrent families' inputs)


def register(name: str, task: str = "classification", sequence: bool = False) -> Callable[[Loader], Loader]:
    """Decorator: registers a loader under `name` with its task and input kind."""

    def add(loader: Loader) -> Loader:
        DATASETS.add(name, loader)
        TASK_OF[name] = task
        if sequence:
            SEQUENCE.add(name)
        return loader

    return add


def task_of(name: str) -> str:
    """The task of dataset `name` (ValueError listing the names when it is unknown)."""
    DATASETS.get(name)
    return TASK_OF[name]


# Loaders whose inputs are used as generated: standard by construction (synthetic: q^0 = 1 exactly in
# expectation), or defined by the task (the adding problem's values and markers, one-hot tokens).
PRESTANDARDIZED = {"synthetic", "adding", "copy", "recall"}


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


def standardize(ds: Dataset, source: str | None = None) -> Dataset:
    """Every split standardized with the training split's mean and standard deviation.

    Training inputs that all share one value (std 0: blank or corrupt files) give a one-line ConfigError naming
    `source` (default: the dataset) rather than NaN inputs.
    """
    mean, std = float(ds.x_train.mean()), float(ds.x_train.std())
    if not std > 0:
        raise ConfigError(
            f"{source or f'--dataset={ds.name}'}: all {ds.x_train.size} training input values equal {mean:g} (standard"
            " deviation 0), so they cannot be standardized; the files are blank or corrupt: re-download them"
        )

    def z(x):
        return None if x is None else ((x - mean) / std).astype(np.float32)

    return ds._replace(x_train=z(ds.x_train), x_test=z(ds.x_test), x_val=z(ds.x_val))


@register("digits")
def load_digits(data_dir: str | None, data_seed: int, seq_len: int = 0) -> Dataset:
    """UCI handwritten digits as bundled with scikit-learn: 1797 8x8 images, 10 classes.

    It ships inside an installed package (no download, no file to manage), it is real
    handwriting, and it is small enough for a depth sweep of hundreds of runs on a laptop CPU.
    The 80/20 train/test split (1438/359) is a permutation fixed by `data_seed`.
    """
    del data_dir, seq_len
    from sklearn.datasets import load_digits as _load

    bunch = _load()
    x = bunch.images.reshape(-1, 8, 8, 1)
    y = bunch.target
    order = np.random.default_rng(data_seed).permutation(len(y))
    n_train = int(round(0.8 * len(y)))
    tr, te = order[:n_train], order[n_train:]
    return _raw("digits", x[tr], y[tr], x[te], y[te], 10)


@register("synthetic")
def load_synthetic(data_dir: str | None, data_seed: int, seq_len: int = 0) -> Dataset:
    """I.i.d. standard Gaussian 8x8x1 inputs, labels = argmax of a fixed random tanh teacher.

    4096 train and 1024 test examples, 10 classes; the inputs have unit variance per
    coordinate, as mean-field theory assumes.
    """
    del data_dir, seq_len
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
        raise ConfigError(
            _one_line(f"--data_dir={data_dir} is not a folder; --dataset={flag_dataset} expects it to hold {expected}")
        )
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


def _one_line(message: str) -> str:
    return " ".join(message.splitlines())


def _corrupt(path: str, problem: str, fix: str = "re-download it") -> ConfigError:
    """The one-line error for a local data file that cannot be used: the path, the problem, what to do."""
    return ConfigError(_one_line(f"{path} {problem}; {fix}"))


def _read_bytes(path: str) -> bytes:
    """The file's bytes, gunzipped when its name ends in .gz; a one-line ConfigError when it cannot be read."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            return f.read()
    except EOFError:
        raise _corrupt(path, "is a truncated gzip file (the stream ends early)") from None
    except (gzip.BadGzipFile, zlib.error) as e:
        fix = "re-download it, or drop the .gz if it is not compressed"
        raise _corrupt(path, f"is not a valid gzip file ({e})", fix) from None
    except OSError as e:
        raise _corrupt(path, f"cannot be read ({e.strerror or e})", "check its permissions or re-download it") from None


IDX_TYPES = {0x08: "unsigned bytes", 0x09: "signed bytes", 0x0B: "int16", 0x0C: "int32", 0x0D: "float32", 0x0E: "float64"}


def read_idx(path: str, ndim: int | None = None, kind: str = "values") -> np.ndarray:
    """Reads an IDX file (the MNIST distribution format) of unsigned bytes.

    `ndim` is the number of dimensions expected (3 for images, 1 for labels; None: any) and `kind` what the file
    holds, for the messages. Every defect (bad magic number, wrong dimensions, a header or data cut short, trailing
    bytes) is a one-line ConfigError naming the file.
    """
    raw = _read_bytes(path)
    if not raw:
        raise _corrupt(path, "is empty: not an IDX file (no magic number)")
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_TYPES or raw[3] == 0:
        gz = raw[:2] == b"\x1f\x8b"
        raise _corrupt(
            path,
            f"is not an IDX file (bad magic number: {raw[:4].hex()}, expected 00000803 for images or 00000801 for labels)"
            + (": it is gzip-compressed" if gz else ""),
            "rename it to end in .gz" if gz else "re-download it",
        )
    if raw[2] != 0x08:
        raise _corrupt(path, f"is an IDX file of {IDX_TYPES[raw[2]]}, not of unsigned bytes as MNIST's are (bad magic number)")
    dims = raw[3]
    if len(raw) < 4 + 4 * dims:
        raise _corrupt(path, f"is truncated: {len(raw)} bytes, shorter than its own {4 + 4 * dims}-byte header")
    if ndim is not None and dims != ndim:
        other = {1: "labels", 3: "images"}.get(dims, "data")
        raise _corrupt(
            path,
            f"has the wrong magic number {raw[:4].hex()} ({dims}-dimensional {other}) for {kind} (magic number"
            f" 0000080{ndim}, {ndim}-dimensional): are the image and label files swapped?",
            "put each file under its own name, or re-download them",
        )
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    expected, found = math.prod(shape), len(raw) - 4 - 4 * dims
    if found < expected:
        raise _corrupt(path, f"is truncated: its header says shape {shape} ({expected} bytes of data), found {found} bytes")
    if found > expected:
        raise _corrupt(path, f"is corrupt: {found - expected} bytes more than its header's shape {shape} ({expected} bytes)")
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def check_labels(path: str, labels: np.ndarray, num_classes: int) -> None:
    """A one-line ConfigError naming `path` when a label lies outside 0..num_classes - 1 (vectorized)."""
    bad = labels >= num_classes  # unsigned bytes: never negative
    if bad.any():
        first = int(np.argmax(bad))
        raise _corrupt(
            path,
            f"has {int(bad.sum())} labels out of range 0..{num_classes - 1} (the first: label {int(labels[first])} of"
            f" example {first}): it is corrupt or from another dataset",
        )


def check_pair(images_path: str, images: np.ndarray, labels_path: str, labels: np.ndarray) -> None:
    """One-line ConfigErrors when an image file and its label file disagree in count, or hold no examples."""
    if len(images) != len(labels):
        raise ConfigError(
            _one_line(
                f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels: the counts"
                " differ (files from different splits or datasets?); re-download the pair"
            )
        )
    if not len(images):
        raise _corrupt(images_path, "holds no images (the count in its header is 0)")


@register("mnist")
def load_mnist(data_dir: str | None, data_seed: int, seq_len: int = 0) -> Dataset:
    """MNIST from the four IDX files of its standard distribution, under --data_dir."""
    del data_seed, seq_len
    names = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    paths = _find(data_dir, "mnist", names)
    xtr, ytr, xte, yte = (read_idx(p, n, k) for p, n, k in zip(paths, (3, 1, 3, 1), ("images", "labels") * 2, strict=True))
    check_pair(paths[0], xtr, paths[1], ytr)
    check_pair(paths[2], xte, paths[3], yte)
    if xte.shape[1:] != xtr.shape[1:]:
        raise _corrupt(paths[2], f"holds {xte.shape[1:]} images but {paths[0]} holds {xtr.shape[1:]} (the sizes differ)")
    check_labels(paths[1], ytr, 10)
    check_labels(paths[3], yte, 10)
    return _raw("mnist", xtr[..., None], ytr, xte[..., None], yte, 10)


CIFAR_RECORD = 1 + 3 * 32 * 32  # one label byte, then 32x32 pixels per channel (R, G, B)


def read_cifar_bin(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Reads one CIFAR-10 binary batch: records of 1 label byte + 3072 bytes (3x32x32, CHW).

    An empty file, a size that is not a whole number of records, or a label outside 0..9 is a one-line ConfigError.
    """
    raw = np.frombuffer(_read_bytes(path), dtype=np.uint8)
    if not raw.size:
        raise _corrupt(path, "is empty: no CIFAR-10 records")
    if raw.size % CIFAR_RECORD:
        raise _corrupt(
            path,
            f"is truncated or not a CIFAR-10 binary batch: its {raw.size} bytes are not a whole number of"
            f" {CIFAR_RECORD}-byte records ({raw.size // CIFAR_RECORD} records and {raw.size % CIFAR_RECORD} bytes over)",
        )
    rec = raw.reshape(-1, CIFAR_RECORD)
    check_labels(path, rec[:, 0], 10)
    return rec[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), rec[:, 0]


@register("cifar10")
def load_cifar10(data_dir: str | None, data_seed: int, seq_len: int = 0) -> Dataset:
    """CIFAR-10 from its binary distribution (data_batch_1..5.bin, test_batch.bin) under --data_dir.

    The binary version is read because the "python version" is pickled, and decay never unpickles.
    """
    del data_seed, seq_len
    sub = os.path.join(data_dir, "cifar-10-batches-bin") if data_dir else None
    if sub and os.path.isdir(sub):
        data_dir = sub
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    parts = [read_cifar_bin(p) for p in _find(data_dir, "cifar10", names)]
    xtr = np.concatenate([p[0] for p in parts[:5]])
    ytr = np.concatenate([p[1] for p in parts[:5]])
    return _raw("cifar10", xtr, ytr, parts[5][0], parts[5][1], 10)


LOCAL_FILES = {"mnist", "cifar10"}  # loaders that read --data_dir


# The generated sequence tasks: train (before the validation split) and test examples.
SEQ_TRAIN, SEQ_TEST = 5000, 1000
ADDING_CHANCE = 1.0 / 6.0  # MSE of always predicting 1 = Var(u1 + u2), u ~ U[0, 1]
COPY_SYMBOLS, COPY_LENGTH = 8, 10  # symbols 1..8, 10 of them to remember
SOLVED_MSE = 0.01  # the adding problem counts as solved below this test MSE (6% of the 1/6 baseline)


def adding_problem(n: int, seq_len: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The adding problem (Hochreiter and Schmidhuber 1997; Le et al. 2015's version): x [n, T, 2] = (value
    u_t ~ U[0, 1], marker), one marker in each half of the sequence; target the sum of the two marked values."""
    values = rng.uniform(0.0, 1.0, (n, seq_len))
    half = max(seq_len // 2, 1)
    first = rng.integers(0, half, n)
    second = rng.integers(half, seq_len, n) if seq_len > 1 else first
    markers = np.zeros((n, seq_len))
    markers[np.arange(n), first] = 1.0
    markers[np.arange(n), second] = 1.0
    y = values[np.arange(n), first] + values[np.arange(n), second] * (second != first)
    return np.stack([values, markers], axis=-1).astype(np.float32), y.astype(np.float32)


def copy_memory(n: int, blanks: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Copy memory (Arjovsky, Shah and Bengio 2016): 10 symbols from 1..8, `blanks` - 1 blanks (0), the delimiter (9),
    10 blanks; target: blanks, then the 10 symbols. Inputs one-hot [n, T + 20, 10], targets [n, T + 20] in 0..8."""
    length = blanks + 2 * COPY_LENGTH
    symbols = rng.integers(1, COPY_SYMBOLS + 1, (n, COPY_LENGTH))
    tokens = np.zeros((n, length), np.int64)
    tokens[:, :COPY_LENGTH] = symbols
    tokens[:, blanks + COPY_LENGTH - 1] = COPY_SYMBOLS + 1  # the delimiter
    y = np.zeros((n, length), np.int64)
    y[:, -COPY_LENGTH:] = symbols
    return np.eye(COPY_SYMBOLS + 2, dtype=np.float32)[tokens], y.astype(np.int32)


def _sequence_rng(name: str, data_seed: int, seq_len: int) -> np.random.Generator:
    if seq_len < 1:
        raise ConfigError(f"--seq_len={seq_len}; --dataset={name} needs a sequence length >= 1")
    return np.random.default_rng([20_000, sum(map(ord, name)), data_seed, seq_len])


@register("adding", task="regression", sequence=True)
def load_adding(data_dir: str | None, data_seed: int, seq_len: int) -> Dataset:
    """The adding problem at T = seq_len; mean squared error, 1/6 for the constant prediction 1."""
    del data_dir
    rng = _sequence_rng("adding", data_seed, seq_len)
    x, y = adding_problem(SEQ_TRAIN + SEQ_TEST, seq_len, rng)
    ds = Dataset("adding", x[:SEQ_TRAIN], y[:SEQ_TRAIN], x[SEQ_TRAIN:], y[SEQ_TRAIN:], 1)
    return ds._replace(task="regression", chance_loss=ADDING_CHANCE)


def copy_chance(blanks: int) -> float:
    """The memoryless baseline of copy memory: blanks right, the last 10 symbols uniform over 8, per position."""
    return COPY_LENGTH * math.log(COPY_SYMBOLS) / (blanks + 2 * COPY_LENGTH)


@register("copy", task="per_position", sequence=True)
def load_copy(data_dir: str | None, data_seed: int, seq_len: int) -> Dataset:
    """Copy memory with seq_len blanks; cross-entropy per position, 10 ln 8 / (T + 20) for the memoryless baseline."""
    del data_dir
    rng = _sequence_rng("copy", data_seed, seq_len)
    x, y = copy_memory(SEQ_TRAIN + SEQ_TEST, seq_len, rng)
    ds = Dataset("copy", x[:SEQ_TRAIN], y[:SEQ_TRAIN], x[SEQ_TRAIN:], y[SEQ_TRAIN:], COPY_SYMBOLS + 1)
    return ds._replace(task="per_position", chance_loss=copy_chance(seq_len))


def _pixel_sequence(name: str, data_seed: int, permute: bool) -> Dataset:
    ds = load_digits(None, data_seed)
    order = np.random.default_rng([30_000, data_seed]).permutation(64) if permute else np.arange(64)
    seq = lambda x: x.reshape(x.shape[0], 64, 1)[:, order]  # noqa: E731  row-major pixels, one per step
    return ds._replace(name=name, x_train=seq(ds.x_train), x_test=seq(ds.x_test))


@register("seq_digits", sequence=True)
def load_seq_digits(data_dir: str | None, data_seed: int, seq_len: int = 0) -> Dataset:
    """The embedded 8x8 digits read one pixel per step, row by row: 64 steps, 10 classes."""
    del data_dir, seq_len
    return _pixel_sequence("seq_digits", data_seed, False)


@register("perm_digits", sequence=True)
def load_perm_digits(data_dir: str | None, data_seed: int, seq_len: int = 0) -> Dataset:
    """Sequential digits with a fixed pixel permutation (from data_seed): dependencies span the whole sequence."""
    del data_dir, seq_len
    return _pixel_sequence("perm_digits", data_seed, True)


RECALL_KEYS = 32  # associative recall: keys and values each from a vocabulary of this many


def associative_recall(n: int, pairs: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Associative recall: `pairs` (key, value) tokens, keys distinct, then one of the keys again; target its value.

    Tokens one-hot over 2 * RECALL_KEYS symbols (keys 0..31, values 32..63): x [n, 2 pairs + 1, 64], y [n] in 0..31.
    """
    keys = np.argsort(rng.random((n, RECALL_KEYS)), axis=1)[:, :pairs]  # distinct keys per sequence
    values = rng.integers(0, RECALL_KEYS, (n, pairs))
    asked = rng.integers(0, pairs, n)
    tokens = np.zeros((n, 2 * pairs + 1), np.int64)
    tokens[:, 0:-1:2] = keys
    tokens[:, 1:-1:2] = RECALL_KEYS + values
    tokens[:, -1] = keys[np.arange(n), asked]
    return np.eye(2 * RECALL_KEYS, dtype=np.float32)[tokens], values[np.arange(n), asked].astype(np.int32)


@register("recall", sequence=True)
def load_recall(data_dir: str | None, data_seed: int, seq_len: int) -> Dataset:
    """Associative recall with seq_len pairs (2 seq_len + 1 tokens); chance ln 32 (the values are uniform)."""
    del data_dir
    if not 1 <= seq_len <= RECALL_KEYS:
        raise ConfigError(f"--seq_len={seq_len}; --dataset=recall takes 1..{RECALL_KEYS} key-value pairs")
    rng = _sequence_rng("recall", data_seed, seq_len)
    x, y = associative_recall(SEQ_TRAIN + SEQ_TEST, seq_len, rng)
    return Dataset("recall", x[:SEQ_TRAIN], y[:SEQ_TRAIN], x[SEQ_TRAIN:], y[SEQ_TRAIN:], RECALL_KEYS)


@register("patch_digits", sequence=True)
def load_patch_digits(data_dir: str | None, data_seed: int, seq_len: int = 0) -> Dataset:
    """The embedded 8x8 digits as 16 tokens, each a 2x2 patch (4 pixels), row by row of patches: 10 classes."""
    del data_dir, seq_len
    ds = load_digits(None, data_seed)
    patches = lambda x: x.reshape(-1, 4, 2, 4, 2).transpose(0, 1, 3, 2, 4).reshape(-1, 16, 4)  # noqa: E731
    return ds._replace(name="patch_digits", x_train=patches(ds.x_train), x_test=patches(ds.x_test))


def load(
    name: str, data_dir: str | None, data_seed: int, val_fraction: float = RunConfig.val_fraction, seq_len: int = 0
) -> Dataset:
    """A registered dataset by name, its validation split carved from the training set, standardized on the training split."""
    ds = split_validation(DATASETS.get(name)(data_dir, data_seed, seq_len), val_fraction, data_seed)
    source = f"--dataset={name} from --data_dir={data_dir}" if name in LOCAL_FILES else f"--dataset={name}"
    ds = ds if name in PRESTANDARDIZED else standardize(ds, source)
    check_finite(ds, source, "the files are corrupt: re-download them" if name in LOCAL_FILES else "a bug: report it")
    return ds


def check_finite(ds: Dataset, source: str, fix: str) -> None:
    """A one-line ConfigError naming `source` and the count when any input (or float target) of any split is NaN or Inf."""
    arrays = {"training": (ds.x_train, ds.y_train), "validation": (ds.x_val, ds.y_val), "test": (ds.x_test, ds.y_test)}
    for split, (x, y) in arrays.items():
        for what, a in (("input", x), ("target", y)):
            if a is None or not np.issubdtype(a.dtype, np.floating):
                continue
            with np.errstate(over="ignore", invalid="ignore"):
                if np.isfinite(a.sum()):  # the fast path: one pass, no temporary array (an overflow falls through)
                    continue
            bad = a.size - int(np.count_nonzero(np.isfinite(a)))
            if bad:
                raise ConfigError(
                    _one_line(
                        f"{source}: {bad} of {a.size} {split} {what} values are not finite (NaN or Inf) after loading; {fix}"
                    )
                )


def load_for(cfg: RunConfig) -> Dataset:
    """The dataset of a run config."""
    return load(cfg.dataset, cfg.data_dir, cfg.data_seed, cfg.val_fraction, cfg.seq_len)
