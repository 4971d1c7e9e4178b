import functools
import gzip
import pickle
import random
import struct
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lljax import data
from lljax.errors import LLJaxError


def test_mnist1d_shapes_and_cache(tmp_path):
    state = np.random.get_state()
    py_state = random.getstate()
    ds = data.mnist1d(tmp_path)
    assert ds.x_train.shape == (4000, 40) and ds.x_test.shape == (1000, 40)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    assert set(np.unique(ds.y_train)) == set(range(10))
    # the generator seeds numpy's and python's global RNGs: the caller's state must be unchanged
    assert np.array_equal(np.random.get_state()[1], state[1]) and random.getstate() == py_state
    assert len(list(tmp_path.glob("mnist1d-*.npz"))) == 1
    with mock.patch("mnist1d.data.make_dataset", side_effect=AssertionError("regenerated")):
        again = data.mnist1d(tmp_path)  # served from the cache
    np.testing.assert_array_equal(again.x_train, ds.x_train)


def test_mnist1d_corrupt_cache_is_regenerated(tmp_path):
    ds = data.mnist1d(tmp_path)
    path = next(tmp_path.glob("mnist1d-*.npz"))
    path.write_bytes(b"not an npz")
    np.testing.assert_array_equal(data.mnist1d(tmp_path).y_test, ds.y_test)


def _write_cifar(root, n=4, seed=0):
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        entry = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"labels": list(rng.integers(0, 10, n)), b"batch_label": name.encode()}
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f)
        batches[name] = entry
    return batches


def test_cifar10_reads_python_pickle_format(tmp_path):
    batches = _write_cifar(tmp_path)
    ds = data.load_dataset("cifar10", tmp_path)
    assert ds.x_train.shape == (20, 32, 32, 3) and ds.x_test.shape == (4, 32, 32, 3)
    raw = batches["data_batch_2"][b"data"][1].reshape(3, 32, 32).transpose(1, 2, 0)
    expected = (raw / 255.0 - data.CIFAR10_MEAN) / data.CIFAR10_STD
    np.testing.assert_allclose(ds.x_train[5], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(ds.y_test, batches["test_batch"][b"labels"])
    # the folder itself works too
    assert data.cifar10(tmp_path / "cifar-10-batches-py").x_train.shape[0] == 20


def test_cifar10_errors(tmp_path):
    with pytest.raises(LLJaxError, match="not found"):
        data.cifar10(tmp_path / "nope")
    _write_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"garbage")
    with pytest.raises(LLJaxError, match="malformed CIFAR-10 file .*data_batch_3"):
        data.cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(LLJaxError, match="missing.*data_batch_3"):
        data.cifar10(tmp_path)


def _idx_bytes(array):
    return struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + \
        array.astype(np.uint8).tobytes()


@pytest.mark.parametrize("compressed", [False, True])
def test_mnist_reads_idx_files(tmp_path, compressed):
    rng = np.random.default_rng(1)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (6, 28, 28)),
              "train-labels-idx1-ubyte": rng.integers(0, 10, 6),
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (3, 28, 28)),
              "t10k-labels-idx1-ubyte": rng.integers(0, 10, 3)}
    for name, a in arrays.items():
        if compressed:
            with gzip.open(tmp_path / (name + ".gz"), "wb") as f:
                f.write(_idx_bytes(a))
        else:
            (tmp_path / name).write_bytes(_idx_bytes(a))
    ds = data.load_dataset("mnist", tmp_path)
    assert ds.x_train.shape == (6, 28, 28, 1) and ds.y_test.shape == (3,)
    expected = (arrays["t10k-images-idx3-ubyte"][2] / 255.0 - data.MNIST_MEAN) / data.MNIST_STD
    np.testing.assert_allclose(ds.x_test[2, ..., 0], expected, rtol=1e-5)
    np.testing.assert_array_equal(ds.y_train, arrays["train-labels-idx1-ubyte"])


def test_mnist_errors(tmp_path):
    with pytest.raises(LLJaxError, match="not found"):
        data.mnist(tmp_path / "missing")
    with pytest.raises(LLJaxError, match="MNIST file missing"):
        data.mnist(tmp_path)
    bad = tmp_path / "bad-idx"
    bad.write_bytes(b"\x00\x00\x0d\x03" + b"\x00" * 12)
    with pytest.raises(LLJaxError, match="bad magic"):
        data.read_idx(bad)
    short = tmp_path / "short-idx"
    short.write_bytes(_idx_bytes(np.zeros((2, 3)))[:-2])
    with pytest.raises(LLJaxError, match="malformed IDX"):
        data.read_idx(short)


def test_unknown_dataset_and_missing_dir():
    with pytest.raises(LLJaxError, match="unknown dataset"):
        data.load_dataset("imagenet")
    with pytest.raises(LLJaxError, match="--data-dir"):
        data.load_dataset("cifar10")


def test_training_view_subset_and_noise():
    n, classes = 20000, 10
    labels = jnp.asarray(np.arange(n) % classes, jnp.int32)
    key = jax.random.key(3)
    view = data.training_view(key, labels, classes, 0.3, 0.4)
    again = data.training_view(key, labels, classes, 0.3, 0.4)
    for a, b in zip(view, again):  # deterministic by key
        np.testing.assert_array_equal(a, b)
    assert int(view.size) == 6000 and float(view.mask.sum()) == 6000
    subset = np.asarray(view.order[:6000])
    assert np.all(np.asarray(view.mask)[subset] == 1) and len(np.unique(subset)) == 6000
    changed = np.mean(np.asarray(view.labels) != np.asarray(labels))
    # a replaced label equals the old one with probability 1/C: expected changed fraction 0.4 * 0.9
    assert abs(changed - 0.36) < 0.02
    other = data.training_view(jax.random.key(4), labels, classes, 0.3, 0.4)
    assert not np.array_equal(other.order, view.order)
    clean = data.training_view(key, labels, classes, 1.0, 0.0)
    np.testing.assert_array_equal(clean.labels, labels)
    assert int(clean.size) == n


def test_data_fraction_subsets_are_nested_for_one_key():
    labels = jnp.zeros(100, jnp.int32)
    small = data.training_view(jax.random.key(0), labels, 10, 0.2, 0.0)
    large = data.training_view(jax.random.key(0), labels, 10, 0.5, 0.0)
    assert set(np.flatnonzero(small.mask)) <= set(np.flatnonzero(large.mask))


def test_epoch_order_and_batches_stay_in_subset():
    labels = jnp.zeros(50, jnp.int32)
    view = data.training_view(jax.random.key(1), labels, 10, 0.2, 0.0)
    order = data.epoch_order(jax.random.key(2), view)
    subset = set(np.asarray(view.order[:10]).tolist())
    assert set(np.asarray(order[:10]).tolist()) == subset
    seen = np.concatenate([np.asarray(data.batch_indices(order, view.size, j, 4)) for j in range(5)])
    assert set(seen.tolist()) == subset  # 20 draws from a 10-example subset wrap around it, never leave it
    assert np.array_equal(seen[:10], seen[10:20])


@functools.partial(jax.jit, static_argnums=2)
def _epoch_orders_jit(view, key, epochs):
    return jax.vmap(lambda e: data.epoch_order(jax.random.fold_in(key, e), view))(jnp.arange(epochs))


def _epoch_orders(view, key, epochs):
    """(epochs, N) epoch orders as training draws them: fold_in(key, epoch)."""
    return np.asarray(_epoch_orders_jit(view, key, epochs))


@pytest.mark.parametrize("n, fraction", [(4000, 1.0), (4000, 0.3), (37, 0.5), (1, 1.0)])
def test_epoch_order_is_a_permutation_with_the_subset_first(n, fraction):
    view = data.training_view(jax.random.key(5), jnp.zeros(n, jnp.int32), 10, fraction, 0.0)
    size = int(view.size)
    orders = _epoch_orders(view, jax.random.key(6), 3)
    for order in orders:
        np.testing.assert_array_equal(np.sort(order), np.arange(n))
        assert set(order[:size].tolist()) == set(np.asarray(view.order[:size]).tolist())
        np.testing.assert_array_equal(order[size:], np.asarray(view.order[size:]))  # the unused rest stays put


def test_epoch_order_is_deterministic_and_new_each_epoch():
    view = data.training_view(jax.random.key(1), jnp.zeros(500, jnp.int32), 10, 0.6, 0.0)
    key = jax.random.key(2)
    again = _epoch_orders(view, key, 4)
    orders = _epoch_orders(view, key, 4)
    np.testing.assert_array_equal(orders, again)
    np.testing.assert_array_equal(orders[1], np.asarray(data.epoch_order(jax.random.fold_in(key, 1), view)))
    size = int(view.size)
    assert len({tuple(o[:size]) for o in orders}) == 4
    assert not np.array_equal(orders[0], _epoch_orders(view, jax.random.key(3), 1)[0])


def test_epoch_order_vmapped_over_views_equals_loop():
    # views of different subset sizes in one vmap: the size is traced
    labels = jnp.zeros(300, jnp.int32)
    views = [data.training_view(jax.random.key(i), labels, 10, f, 0.0) for i, f in enumerate((0.1, 0.5, 1.0))]
    keys = jax.random.split(jax.random.key(9), 3)
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *views)
    batched = np.asarray(jax.jit(jax.vmap(data.epoch_order))(keys, stacked))
    for i, view in enumerate(views):
        np.testing.assert_array_equal(batched[i], np.asarray(data.epoch_order(keys[i], view)))


def _rank_in_view(view, orders):
    """Each entry of `orders` as its position in view.order (0..size-1 inside the subset)."""
    rank = np.empty(len(view.order), np.int64)
    rank[np.asarray(view.order)] = np.arange(len(view.order))
    return rank[orders]


def test_epoch_order_positions_are_uniform_small():
    # every (position, element) pair of a 6-example subset over 6000 epochs: expected 1000 each. chi^2 with
    # (6-1)^2 = 25 degrees of freedom; 80 is p ~ 1e-7 for a uniform shuffle
    view = data.training_view(jax.random.key(3), jnp.zeros(10, jnp.int32), 10, 0.6, 0.0)
    size = int(view.size)
    ranks = _rank_in_view(view, _epoch_orders(view, jax.random.key(4), 6000)[:, :size])
    counts = np.stack([np.bincount(ranks[:, p], minlength=size) for p in range(size)])
    expected = len(ranks) / size
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 80, (chi2, counts)


def test_epoch_order_positions_are_uniform_at_dataset_size():
    # MNIST-1D size, where sort keys hold only 19 random bits and ties occur every round: the mean rank (in
    # the view's order) found at each position must be (size - 1) / 2 with no trend across positions (ties
    # broken by slot and never re-randomised would put low ranks first)
    view = data.training_view(jax.random.key(7), jnp.zeros(4000, jnp.int32), 10, 0.75, 0.0)
    size, epochs = int(view.size), 400
    ranks = _rank_in_view(view, _epoch_orders(view, jax.random.key(8), epochs)[:, :size])
    mean_rank_P = ranks.mean(0)
    sd = np.sqrt((size ** 2 - 1) / 12 / epochs)  # of one position's mean rank
    z = (mean_rank_P - (size - 1) / 2) / sd
    assert np.abs(z).max() < 5.5, np.abs(z).max()
    assert abs(np.corrcoef(np.arange(size), mean_rank_P)[0, 1]) < 4 / np.sqrt(size)
    # and each example lands in the first half of the epoch as often as in the second
    position_of = np.empty_like(ranks)
    np.put_along_axis(position_of, ranks, np.arange(size)[None, :].repeat(epochs, 0), 1)
    early = (position_of < size // 2).mean(0)
    assert np.abs(early - 0.5).max() < 5.5 * 0.5 / np.sqrt(epochs)


def test_epoch_order_fallback_for_huge_datasets_keeps_the_contract(monkeypatch):
    monkeypatch.setattr(data, "_PACKED_SHUFFLE_MAX_N", 10)
    view = data.training_view(jax.random.key(1), jnp.zeros(50, jnp.int32), 10, 0.4, 0.0)
    order = np.asarray(data.epoch_order(jax.random.key(2), view))
    size = int(view.size)
    np.testing.assert_array_equal(np.sort(order), np.arange(50))
    assert set(order[:size].tolist()) == set(np.asarray(view.order[:size]).tolist())
    assert not np.array_equal(order[:size], np.asarray(view.order[:size]))


# ------------------------------------------------------------------------------------------ your own data

def arrays(n_train=20, n_test=10, shape=(4,), classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return dict(x_train=rng.normal(size=(n_train, *shape)), y_train=rng.integers(0, classes, n_train),
                x_test=rng.normal(size=(n_test, *shape)), y_test=rng.integers(0, classes, n_test))


def test_from_arrays_classification_and_regression():
    ds = data.Dataset.from_arrays("mine", **arrays())
    assert ds.name == "mine" and ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    assert ds.num_classes == 3 and ds.is_classification
    assert data.Dataset.from_arrays("mine", **arrays(), num_classes=10).num_classes == 10
    a = arrays()
    reg = data.Dataset.from_arrays("reg", a["x_train"], np.ones((20, 2, 3)), a["x_test"], np.ones((10, 2, 3)))
    assert not reg.is_classification and reg.num_classes == 6 and reg.y_train.dtype == np.float32
    data.check_labels(reg, classification=False)


@pytest.mark.parametrize("change,match", [
    (lambda a: {**a, "y_train": a["y_train"][:-1]}, "x_train has 20 examples but y_train has 19"),
    (lambda a: {**a, "x_test": np.zeros((10, 5))}, r"train inputs \(4,\) and test inputs \(5,\) differ"),
    (lambda a: {**a, "x_train": np.full((20, 4), np.nan)}, "x_train has non-finite values"),
    (lambda a: {**a, "y_test": np.full(10, np.inf)}, "y_test has non-finite"),
    (lambda a: {**a, "y_test": a["y_test"].astype(float)}, "both be integer labels or both float targets"),
    (lambda a: {**a, "x_train": np.array(["a"] * 20)}, "x_train must be numeric"),
    (lambda a: {**a, "x_test": np.zeros((0, 4))}, "x_test is empty"),
])
def test_from_arrays_names_the_problem(change, match):
    with pytest.raises(LLJaxError, match=match):
        data.Dataset.from_arrays("mine", **change(arrays()))


def test_labels_are_checked_against_the_loss():
    ds = data.Dataset.from_arrays("mine", **arrays(), num_classes=2)
    with pytest.raises(LLJaxError, match=r"labels in \[0, 2\], outside \[0, 2\)"):
        data.check_labels(ds, classification=True)
    with pytest.raises(LLJaxError, match="integer class labels but the loss is a regression loss"):
        data.check_labels(data.Dataset.from_arrays("m", **arrays()), classification=False)
    with pytest.raises(LLJaxError, match="1 class"):
        data.check_labels(data.Dataset.from_arrays("m", **arrays(classes=1)), classification=True)


def test_npz_files(tmp_path):
    np.savez(tmp_path / "blobs.npz", **arrays())
    ds = data.load_dataset(str(tmp_path / "blobs.npz"))
    assert ds.name == "blobs" and ds.x_train.shape == (20, 4) and ds.num_classes == 3
    np.savez(tmp_path / "ten.npz", **arrays(), num_classes=10)
    assert data.load_npz(tmp_path / "ten.npz").num_classes == 10
    assert data.dataset_name(str(tmp_path / "blobs.npz")) == "blobs" and data.dataset_name("mnist1d") == "mnist1d"
    partial = arrays()
    del partial["y_test"]
    np.savez(tmp_path / "partial.npz", **partial)
    with pytest.raises(LLJaxError, match="lacks y_test"):
        data.load_npz(tmp_path / "partial.npz")
    (tmp_path / "text.npz").write_text("not an archive")
    with pytest.raises(LLJaxError, match="is not an .npz archive"):
        data.load_npz(tmp_path / "text.npz")
    np.save(tmp_path / "single.npy", np.zeros(3))
    (tmp_path / "single.npy").rename(tmp_path / "single.npz")
    with pytest.raises(LLJaxError, match="is not an .npz archive"):
        data.load_npz(tmp_path / "single.npz")
    with pytest.raises(LLJaxError, match="dataset file not found"):
        data.load_npz(tmp_path / "missing.npz")


def test_regression_targets_keep_their_values_in_a_view():
    targets = jnp.arange(12, dtype=jnp.float32).reshape(6, 2)
    view = data.training_view(jax.random.key(0), targets, 2, 0.5, 0.9)  # label noise ignored for float targets
    np.testing.assert_array_equal(view.labels, targets)
    assert int(view.size) == 3


# ---------------------------------------------------------------------------------- tokens and per-token targets

def test_token_inputs_stay_integers_and_know_their_vocabulary(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 7, (20, 5)), rng.integers(0, 3, 20)
    ds = data.Dataset.from_arrays("toks", x[:16], y[:16], x[16:], y[16:])
    assert ds.is_tokens and ds.x_train.dtype == np.int32 and ds.vocab_size == int(x.max()) + 1
    np.testing.assert_array_equal(ds.x_train, x[:16])
    declared = data.Dataset.from_arrays("toks", x[:16], y[:16], x[16:], y[16:], vocab_size=50)
    assert declared.vocab_size == 50
    np.savez(tmp_path / "toks.npz", x_train=x[:16], y_train=y[:16], x_test=x[16:], y_test=y[16:], vocab_size=9)
    loaded = data.load_npz(tmp_path / "toks.npz")
    assert loaded.vocab_size == 9 and loaded.x_train.dtype == np.int32
    floats = data.Dataset.from_arrays("f", x[:16] * 0.5, y[:16], x[16:] * 0.5, y[16:])
    assert not floats.is_tokens and floats.vocab_size is None and floats.x_train.dtype == np.float32


@pytest.mark.parametrize("x_test, vocab, match", [
    (np.array([[1, -2]]), None, "include -2; tokens must be in"),
    (np.array([[1, 9]]), 8, "include 9, at or above the vocabulary size 8"),
    (np.array([[1, 2]]), 0, "vocab_size must be a positive integer"),
])
def test_tokens_outside_the_vocabulary_are_one_line_errors(x_test, vocab, match):
    with pytest.raises(LLJaxError, match=match):
        data.Dataset.from_arrays("toks", np.array([[0, 1], [2, 3]]), np.array([0, 1]), x_test, np.array([1]),
                                 vocab_size=vocab)


def test_vocab_size_with_float_inputs_is_an_error():
    with pytest.raises(LLJaxError, match="inputs are floats"):
        data.Dataset.from_arrays("f", np.ones((2, 3)), np.array([0, 1]), np.ones((1, 3)), np.array([1]),
                                 vocab_size=4)


def test_per_token_labels_with_ignored_positions():
    x = np.arange(12).reshape(4, 3)
    y = np.array([[-1, 1, 2], [-1, 0, 2], [-1, 2, 1], [-1, 1, 0]])
    ds = data.Dataset.from_arrays("seq", x[:3], y[:3], x[3:], y[3:], num_classes=3)
    assert ds.per_token
    data.check_labels(ds, classification=True)
    bad = ds._replace(y_train=np.where(ds.y_train == 2, 5, ds.y_train))
    with pytest.raises(LLJaxError, match=r"labels in \[0, 5\], outside \[0, 3\)"):
        data.check_labels(bad, classification=True)
    nothing = ds._replace(y_test=np.full_like(ds.y_test, data.IGNORE))
    with pytest.raises(LLJaxError, match="every position of y_test is the ignore value"):
        data.check_labels(nothing, classification=True)
    one_label = data.Dataset.from_arrays("one", x[:3], np.array([0, -1, 1]), x[3:], np.array([1]), num_classes=2)
    with pytest.raises(LLJaxError, match=r"outside \[0, 2\).*may use -1"):
        data.check_labels(one_label, classification=True)


def test_label_noise_replaces_labelled_positions_only():
    labels = jnp.asarray(np.where(np.arange(4000).reshape(1000, 4) % 4 == 0, -1, 1))
    view = data.training_view(jax.random.key(0), labels, 5, 1.0, 0.5)
    new = np.asarray(view.labels)
    assert np.all(new[:, 0] == -1)  # ignored positions stay ignored
    changed = np.mean(new[:, 1:] != 1)
    assert abs(changed - 0.5 * 4 / 5) < 0.03  # p x (1 - 1/K) of the labelled positions change
    one = data.training_view(jax.random.key(0), jnp.ones(1000, jnp.int32), 5, 1.0, 0.5)
    assert one.labels.shape == (1000,)


def test_subset_size_on_the_host_equals_the_traced_one():
    fractions = [1e-4, 0.001, 0.1, 0.125, 0.3, 1 / 3, 0.5, 0.7, 0.9999, 1.0]
    for n in (1, 7, 100, 4000, 50000, 60001):
        want = np.asarray(jax.vmap(lambda f: data.subset_size(n, f))(jnp.asarray(fractions, jnp.float32)))
        assert [data.subset_size_host(n, f) for f in fractions] == want.tolist(), n
