"""Datasets as arrays, and per-member training views.

MNIST-1D (the default) is generated locally by the `mnist1d` package and cached on disk; CIFAR-10 and MNIST are
read from files the user already has; any other data comes from numpy arrays (`Dataset.from_arrays`) or an
`.npz` file holding x_train, y_train, x_test, y_test (`load_npz`). Nothing is ever downloaded.

Inputs are float arrays (signals, images: float32) or integer tokens (sequences: int32, kept integer all the
way to the model; the dataset knows its vocabulary). Targets are one integer class label per example (N,),
integer labels per position (N, T, ...) for sequence labelling and next-token prediction, where `IGNORE` (-1)
marks a position that carries no label (padding, the prompt), or float regression targets.

A member's *view* of the training set (`training_view`) is a deterministic function of its key: a random subset
of `data_fraction` of the examples and labels each replaced with probability `label_noise` by a uniform class
(per labelled position for per-token targets).
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import pickle
import random
import struct
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lljax import losses, tasks
from lljax.errors import LLJaxError

FILE_DATASETS = ("cifar10", "mnist")
DATASETS = ("mnist1d", *FILE_DATASETS, *tasks.TASKS)  # by name; or a PATH.npz
IGNORE = losses.IGNORE  # a per-token target without a label (padding, the prompt): left out of every mean

# Per-channel statistics of the CIFAR-10 training set, as the paper's code normalises it.
CIFAR10_MEAN = np.array([0.4914, 0.4822, 0.4465], np.float32)
CIFAR10_STD = np.array([0.2470, 0.2435, 0.2616], np.float32)
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


class Dataset(NamedTuple):
    """Train and test arrays: x_* is (N, *input_shape) float32 inputs or int32 tokens in [0, vocab_size);
    y_* is (N,) int32 class labels, (N, T, ...) int32 per-token labels (`IGNORE` where unlabelled), or float32
    targets (N, ...) for regression. `num_classes` is the number of classes (the vocabulary of the targets), or
    of outputs for regression (the model's output size); `vocab_size` the number of input tokens (None for float
    inputs)."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    vocab_size: int | None = None

    @classmethod
    def from_arrays(cls, name: str, x_train, y_train, x_test, y_test, num_classes: int | None = None,
                    vocab_size: int | None = None) -> "Dataset":
        """A dataset from numpy arrays. Integer targets are class labels, one per example (N,) or one per
        position (N, T, ...) with `IGNORE` where unlabelled (`num_classes` default: the largest label + 1);
        float targets are regression targets (`num_classes`: their size per example). Integer inputs are tokens
        and stay integers (`vocab_size` default: the largest token + 1); float inputs become float32. Checks
        every array (`check_arrays`) and raises a one-line LLJaxError naming the first problem."""
        arrays = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
        arrays = check_arrays(name, arrays)
        y_train, y_test = arrays["y_train"], arrays["y_test"]
        integer = np.issubdtype(y_train.dtype, np.integer)
        if num_classes is None:
            num_classes = int(max(y_train.max(), y_test.max())) + 1 if integer else int(np.prod(y_train.shape[1:]))
        tokens = np.issubdtype(arrays["x_train"].dtype, np.integer)
        if tokens:
            vocab_size = check_tokens(name, arrays["x_train"], arrays["x_test"], vocab_size)
        elif vocab_size is not None:
            raise LLJaxError(f"dataset {name!r}: vocab_size {vocab_size} is given but the inputs are floats, not "
                             "integer tokens")
        x = (lambda a: a.astype(np.int32)) if tokens else (lambda a: a.astype(np.float32))
        y = (lambda a: a.astype(np.int32)) if integer else (lambda a: a.astype(np.float32))
        return cls(str(name), x(arrays["x_train"]), y(y_train), x(arrays["x_test"]), y(y_test), int(num_classes),
                   vocab_size)

    @property
    def is_classification(self) -> bool:
        return np.issubdtype(self.y_train.dtype, np.integer)

    @property
    def is_tokens(self) -> bool:
        """Whether the inputs are integer tokens."""
        return np.issubdtype(self.x_train.dtype, np.integer)

    @property
    def per_token(self) -> bool:
        """Whether the targets are integer labels per position (N, T, ...)."""
        return self.is_classification and self.y_train.ndim > 1


def check_tokens(name: str, x_train: np.ndarray, x_test: np.ndarray, vocab_size: int | None) -> int:
    """The vocabulary of integer inputs: `vocab_size` checked against every token (none negative, none at or
    above it), else the largest token + 1. An embedding would silently read wrong rows otherwise (Flax's
    `nn.Embed` gives NaN rows at or above its vocabulary and wraps negative ids to the last rows)."""
    low = int(min(x_train.min(), x_test.min()))
    high = int(max(x_train.max(), x_test.max()))
    if low < 0:
        raise LLJaxError(f"dataset {name!r}: the input tokens include {low}; tokens must be in [0, vocab_size)")
    if vocab_size is None:
        return high + 1
    if isinstance(vocab_size, bool) or int(vocab_size) != vocab_size or vocab_size < 1:
        raise LLJaxError(f"dataset {name!r}: vocab_size must be a positive integer, got {vocab_size!r}")
    if high >= vocab_size:
        raise LLJaxError(f"dataset {name!r}: the input tokens include {high}, at or above the vocabulary size "
                         f"{int(vocab_size)}")
    return int(vocab_size)


def check_arrays(name: str, arrays: dict) -> dict[str, np.ndarray]:
    """The four arrays as numpy arrays, checked: numeric, the same number of examples in x and y, equal input
    (and target) shapes in train and test, finite, integer or float targets alike in both splits."""
    out = {}
    for key, value in arrays.items():
        try:
            a = np.asarray(value)
        except Exception as e:  # noqa: BLE001
            raise LLJaxError(f"dataset {name!r}: {key} is not an array ({type(e).__name__})") from None
        if a.dtype == bool or not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
            raise LLJaxError(f"dataset {name!r}: {key} must be numeric, got dtype {a.dtype}")
        if a.ndim == 0 or len(a) == 0:
            raise LLJaxError(f"dataset {name!r}: {key} is empty or not an array of examples (shape {a.shape})")
        if not np.all(np.isfinite(a)):
            raise LLJaxError(f"dataset {name!r}: {key} has non-finite values (NaN or inf)")
        out[key] = a
    for split in ("train", "test"):
        x, y = out[f"x_{split}"], out[f"y_{split}"]
        if len(x) != len(y):
            raise LLJaxError(f"dataset {name!r}: x_{split} has {len(x)} examples but y_{split} has {len(y)}")
    if out["x_train"].shape[1:] != out["x_test"].shape[1:]:
        raise LLJaxError(f"dataset {name!r}: train inputs {out['x_train'].shape[1:]} and test inputs "
                         f"{out['x_test'].shape[1:]} differ in shape")
    integer = [np.issubdtype(out[k].dtype, np.integer) for k in ("y_train", "y_test")]
    if integer[0] != integer[1]:
        raise LLJaxError(f"dataset {name!r}: y_train and y_test must both be integer labels or both float targets")
    if out["y_train"].shape[1:] != out["y_test"].shape[1:]:
        raise LLJaxError(f"dataset {name!r}: train targets {out['y_train'].shape[1:]} and test targets "
                         f"{out['y_test'].shape[1:]} differ in shape")
    return out


def check_labels(dataset: Dataset, classification: bool) -> None:
    """For a classification loss: integer labels (N,) in [0, num_classes), or per-token labels (N, T, ...) in
    [0, num_classes) or `IGNORE`, at least one labelled position in each split, and at least two classes; for a
    regression loss: float targets. A one-line LLJaxError otherwise."""
    name = dataset.name
    if not classification:
        if dataset.is_classification:
            raise LLJaxError(f"dataset {name!r} has integer class labels but the loss is a regression loss; "
                             "use --loss cross_entropy or float targets")
        return
    if not dataset.is_classification:
        raise LLJaxError(f"dataset {name!r} has float targets but the loss needs integer class labels; "
                         "use --loss mse for regression")
    if dataset.num_classes < 2:
        raise LLJaxError(f"dataset {name!r} has {dataset.num_classes} class; classification needs at least 2")
    for key in ("y_train", "y_test"):
        y = getattr(dataset, key)
        labelled = y[y != IGNORE] if y.ndim > 1 else y
        if labelled.size == 0:
            raise LLJaxError(f"dataset {name!r}: every position of {key} is the ignore value {IGNORE}; nothing is "
                             "labelled")
        low, high = int(labelled.min()), int(labelled.max())
        if low < 0 or high >= dataset.num_classes:
            extra = f" (or {IGNORE}: no label)" if y.ndim > 1 else " (per-token targets (N, T) may use -1: no label)"
            raise LLJaxError(f"dataset {name!r}: {key} has labels in [{low}, {high}], outside [0, "
                             f"{dataset.num_classes}) for {dataset.num_classes} classes{extra}")


NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def load_npz(path: str | os.PathLike, name: str | None = None) -> Dataset:
    """A dataset from an .npz file holding x_train, y_train, x_test, y_test (and optionally num_classes and, for
    integer token inputs, vocab_size), named after the file's stem by default."""
    path = Path(path)
    if not path.is_file():
        raise LLJaxError(f"dataset file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as f:
            if not hasattr(f, "files"):
                raise ValueError("a single array, not an archive")
            missing = [k for k in NPZ_KEYS if k not in f.files]
            if missing:
                raise LLJaxError(f"dataset file {path} lacks {', '.join(missing)} (it holds {', '.join(f.files)})")
            arrays = {k: f[k] for k in NPZ_KEYS}
            num_classes = int(f["num_classes"]) if "num_classes" in f.files else None
            vocab_size = int(f["vocab_size"]) if "vocab_size" in f.files else None
    except LLJaxError:
        raise
    except Exception as e:  # noqa: BLE001 -- a file that is not an .npz archive
        raise LLJaxError(f"dataset file {path} is not an .npz archive ({type(e).__name__})") from None
    return Dataset.from_arrays(name or path.stem, **arrays, num_classes=num_classes, vocab_size=vocab_size)


def is_file_dataset(name: str) -> bool:
    return str(name).endswith(".npz")


def dataset_name(name: str) -> str:
    """How a dataset is named in reports: a file's stem, else the name."""
    return Path(name).stem if is_file_dataset(name) else name


def default_cache_dir() -> Path:
    """User cache folder for generated data and compiled programs (`$LLJAX_CACHE`, else ~/.cache/lljax)."""
    root = os.environ.get("LLJAX_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "lljax")
    return Path(root)


def load_dataset(name: str, data_dir: str | os.PathLike | None = None,
                 cache_dir: str | os.PathLike | None = None, task: tasks.TaskOptions | None = None) -> Dataset:
    """Load a dataset by name: 'mnist1d' (generated), 'cifar10' or 'mnist' (read from `data_dir`), an algorithmic
    task ('modular', 'sparse_parity', 'counter': generated with `task`'s parameters, `lljax.tasks`), or a path to
    an .npz file (`load_npz`)."""
    if is_file_dataset(name):
        return load_npz(name)
    if name == "mnist1d":
        return mnist1d(cache_dir)
    if name in tasks.TASKS:
        return Dataset.from_arrays(name, **tasks.generate(name, task))
    if name not in DATASETS:
        raise LLJaxError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)} or give a PATH.npz")
    if data_dir is None:
        raise LLJaxError(f"dataset {name!r} is read from local files: pass --data-dir")
    return cifar10(data_dir) if name == "cifar10" else mnist(data_dir)


# ----------------------------------------------------------------------------------------------- MNIST-1D

def mnist1d(cache_dir: str | os.PathLike | None = None, num_samples: int = 5000, seed: int = 42) -> Dataset:
    """MNIST-1D (Greydanus 2020) with the package's default arguments: 4000 train / 1000 test, length 40.

    Generated once and cached as .npz (keyed by a digest of the generator's arguments); the generator's use of
    the global numpy/python RNG is isolated so the caller's random state is unchanged. A small index file names
    the cached file for this mnist1d version, so a cached load does not import mnist1d (1.5 s: it imports
    matplotlib and scipy).
    """
    from importlib.metadata import version

    cache = Path(cache_dir or default_cache_dir())
    index = cache / f"mnist1d-{version('mnist1d')}-{num_samples}-{seed}.json"
    try:
        path = cache / json.loads(index.read_text())["file"]
        with np.load(path) as f:
            arrays = {k: f[k] for k in ("x", "y", "x_test", "y_test")}
        return Dataset("mnist1d", arrays["x"].astype(np.float32), arrays["y"].astype(np.int32),
                       arrays["x_test"].astype(np.float32), arrays["y_test"].astype(np.int32), 10)
    except Exception:  # noqa: BLE001 -- no index yet, or a damaged file: the full path below
        pass
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.seed = num_samples, seed
    fields = {k: v for k, v in vars(args).items() if k != "url"}
    digest = hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:10]
    path = cache / f"mnist1d-{digest}.npz"
    if path.exists():
        try:
            with np.load(path) as f:
                arrays = {k: f[k] for k in ("x", "y", "x_test", "y_test")}
        except Exception:  # a half-written or corrupted cache is regenerated
            arrays = None
    else:
        arrays = None
    if arrays is None:
        np_state, py_state = np.random.get_state(), random.getstate()
        try:
            raw = make_dataset(args)
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)
        arrays = {k: raw[k] for k in ("x", "y", "x_test", "y_test")}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    tmp = index.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"file": path.name}))
    os.replace(tmp, index)
    return Dataset("mnist1d", arrays["x"].astype(np.float32), arrays["y"].astype(np.int32),
                   arrays["x_test"].astype(np.float32), arrays["y_test"].astype(np.int32), 10)


# ----------------------------------------------------------------------------------------------- CIFAR-10

def cifar10(data_dir: str | os.PathLike) -> Dataset:
    """CIFAR-10 from the python-pickle release: `data_dir` is (or contains) `cifar-10-batches-py`.

    Images become (N, 32, 32, 3) float32 normalised per channel.
    """
    root = Path(data_dir)
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    if not root.is_dir():
        raise LLJaxError(f"CIFAR-10 folder not found: {data_dir}")

    def read(name):
        path = root / name
        if not path.exists():
            raise LLJaxError(f"CIFAR-10 file missing: {path}")
        try:
            with open(path, "rb") as f:
                entry = pickle.load(f, encoding="bytes")
            x = np.asarray(entry[b"data"], np.uint8).reshape(-1, 3, 32, 32)
            y = np.asarray(entry[b"labels"], np.int32)
        except Exception as e:
            raise LLJaxError(f"malformed CIFAR-10 file {path}: {type(e).__name__}: {e}") from None
        if len(x) != len(y):
            raise LLJaxError(f"malformed CIFAR-10 file {path}: {len(x)} images but {len(y)} labels")
        return x, y

    train = [read(f"data_batch_{i}") for i in range(1, 6)]
    x_test, y_test = read("test_batch")
    x_train = np.concatenate([x for x, _ in train])
    y_train = np.concatenate([y for _, y in train])

    def normalise(x):
        x = x.transpose(0, 2, 3, 1).astype(np.float32) / 255.0
        return (x - CIFAR10_MEAN) / CIFAR10_STD

    return Dataset("cifar10", normalise(x_train), y_train, normalise(x_test), y_test, 10)


# ----------------------------------------------------------------------------------------------- MNIST

_MNIST_FILES = {"x_train": "train-images-idx3-ubyte", "y_train": "train-labels-idx1-ubyte",
                "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (plain or gzip) into an array of its stored shape (unsigned-byte data only)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
        zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
        if zero != 0 or dtype_code != 0x08:
            raise ValueError(f"bad magic number {raw[:4].hex()} (expected unsigned-byte IDX)")
        shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
        data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
        if data.size != int(np.prod(shape)):
            raise ValueError(f"{data.size} bytes of data for shape {shape}")
    except (OSError, EOFError, struct.error, ValueError) as e:
        raise LLJaxError(f"malformed IDX file {path}: {e}") from None
    return data.reshape(shape)


def mnist(data_dir: str | os.PathLike) -> Dataset:
    """MNIST from the four IDX files (plain or .gz) in `data_dir`; images (N, 28, 28, 1) float32 normalised."""
    root = Path(data_dir)
    if not root.is_dir():
        raise LLJaxError(f"MNIST folder not found: {data_dir}")
    arrays = {}
    for key, stem in _MNIST_FILES.items():
        candidates = [root / stem, root / (stem + ".gz"), root / stem.replace("-idx", ".idx"),
                      root / (stem.replace("-idx", ".idx") + ".gz")]
        path = next((p for p in candidates if p.exists()), None)
        if path is None:
            raise LLJaxError(f"MNIST file missing: {root / stem}[.gz]")
        arrays[key] = read_idx(path)
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise LLJaxError(f"malformed MNIST {split} files: images {x.shape}, labels {y.shape}")

    def normalise(x):
        return ((x.astype(np.float32) / 255.0 - MNIST_MEAN) / MNIST_STD)[..., None]

    return Dataset("mnist", normalise(arrays["x_train"]), arrays["y_train"].astype(np.int32),
                   normalise(arrays["x_test"]), arrays["y_test"].astype(np.int32), 10)


# ----------------------------------------------------------------------------------------------- views

class View(NamedTuple):
    """One member's training view. order: (N,) permutation whose first `size` entries are the member's subset;
    size: () int32; labels: (N,) int32, the member's (possibly corrupted) labels ((N, T, ...) per-token labels,
    float targets (N, ...) for regression); mask: (N,) float32, 1 on the subset."""

    order: jax.Array
    size: jax.Array
    labels: jax.Array
    mask: jax.Array


def subset_size(num_train: int, data_fraction) -> jax.Array:
    """Number of examples a data fraction keeps: round(f * N), at least 1."""
    return jnp.maximum(1, jnp.round(jnp.asarray(data_fraction) * num_train)).astype(jnp.int32)


def subset_size_host(num_train: int, data_fraction: float) -> int:
    """`subset_size` computed on the host (numpy, in float32 as it): no program compiled for a check."""
    return int(max(1, np.round(np.float32(data_fraction) * np.float32(num_train))))


def training_view(key: jax.Array, labels_N: jax.Array, num_classes: int, data_fraction, label_noise) -> View:
    """A member's subset and labels, deterministic in `key`; `data_fraction` and `label_noise` may be traced.
    Float (regression) targets are kept as they are: label noise applies to class labels only, to each labelled
    position of per-token labels (an `IGNORE` position stays ignored)."""
    key_subset, key_flip, key_class = jax.random.split(key, 3)
    n = labels_N.shape[0]
    order = jax.random.permutation(key_subset, n)
    size = subset_size(n, data_fraction)
    rank = jnp.zeros(n, jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32))
    if jnp.issubdtype(labels_N.dtype, jnp.integer):
        flip = jax.random.uniform(key_flip, labels_N.shape) < label_noise
        if labels_N.ndim > 1:
            flip = flip & (labels_N != IGNORE)
        random_labels = jax.random.randint(key_class, labels_N.shape, 0, num_classes, dtype=jnp.int32)
        labels = jnp.where(flip, random_labels, labels_N).astype(jnp.int32)
    else:
        labels = labels_N
    return View(order.astype(jnp.int32), size, labels, (rank < size).astype(jnp.float32))


# Shuffle rounds: as `jax.random.permutation`, enough that some pair of examples tied in *every* round (the
# only source of bias) has probability <= 1/N; its rule, 2^(bits x rounds) >= N^3, with our shorter keys.
_SHUFFLE_EXPONENT = 3
# Largest N for packed sort keys: beyond it fewer than 8 random bits per round would need too many rounds.
_PACKED_SHUFFLE_MAX_N = 2 ** 23


def _shuffle_round(key: jax.Array, positions_N: jax.Array, size: jax.Array) -> jax.Array:
    """positions_N with its first `size` entries in a random order and the rest left in place.

    Sort keys are (random bits << index_bits) | slot in one uint32: unique, so the sort needs no stability and
    takes XLA:CPU's one-operand fast path (an argsort of float scores, two operands and a comparator, was
    ~6x slower and half of a small MLP ensemble's step time). Slots past `size` get a key above every random
    one, so they stay after the subset and in order. Equal random bits are broken by slot; the next round
    re-randomises them."""
    n = positions_N.shape[0]
    index_bits = max(1, (n - 1).bit_length())
    random_bits = 31 - index_bits  # + 1 bit for the past-the-subset marker
    slot = jnp.arange(n, dtype=jnp.uint32)
    bits = jax.random.bits(key, (n,), jnp.uint32) >> (32 - random_bits)
    top = jnp.where(jnp.arange(n) < size, bits, jnp.uint32(1 << random_bits))
    sorted_keys = jax.lax.sort((top << index_bits) | slot)
    return positions_N[(sorted_keys & jnp.uint32((1 << index_bits) - 1)).astype(jnp.int32)]


def _shuffle_rounds(n: int) -> int:
    index_bits = max(1, (n - 1).bit_length())  # >= log2(n)
    return -(-_SHUFFLE_EXPONENT * index_bits // (31 - index_bits))


def epoch_order(key: jax.Array, view: View) -> jax.Array:
    """(N,) indices of the member's subset in a fresh uniformly random order (a deterministic function of
    `key`), followed by the rest of `view.order` unchanged (never used). Several rounds of sorting by random
    keys, as `jax.random.permutation`; beyond `_PACKED_SHUFFLE_MAX_N` examples, an argsort of random scores."""
    n = view.order.shape[0]
    if n > _PACKED_SHUFFLE_MAX_N:
        scores = jnp.where(jnp.arange(n) < view.size, jax.random.uniform(key, (n,)), 2.0)
        return view.order[jnp.argsort(scores)]
    positions = jnp.arange(n, dtype=jnp.int32)
    for round_key in jax.random.split(key, _shuffle_rounds(n)):
        positions = _shuffle_round(round_key, positions, view.size)
    return view.order[positions]


def batch_indices(order_N: jax.Array, size: jax.Array, step_in_epoch, batch_size: int) -> jax.Array:
    """(B,) indices of minibatch `step_in_epoch` of an epoch; a subset smaller than an epoch wraps around."""
    positions = (step_in_epoch * batch_size + jnp.arange(batch_size)) % size
    return order_N[positions]
