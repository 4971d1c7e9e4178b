"""lljax.tasks: the generated algorithmic datasets, their contents checked against their definitions."""
import numpy as np
import pytest

from lljax import data, tasks
from lljax.errors import LLJaxError


@pytest.mark.parametrize("op", tasks.OPERATIONS)
def test_modular_has_every_pair_exactly_once_with_the_right_label(op):
    p = 7
    a = tasks.generate("modular", tasks.TaskOptions(p=p, op=op, test_fraction=0.3))
    x = np.concatenate([a["x_train"], a["x_test"]])
    y = np.concatenate([a["y_train"], a["y_test"]])
    pairs = {(int(u), int(v)) for u, v, _ in x}
    expected = {(u, v) for u in range(p) for v in range(p) if op != "/" or v != 0}
    assert len(x) == len(pairs) == len(expected) and pairs == expected  # each pair once, across both splits
    assert np.all(x[:, 2] == p) and a["vocab_size"] == p + 1 and a["num_classes"] == p
    for (u, v, _), label in zip(x, y):
        want = {"+": u + v, "-": u - v, "*": u * v, "/": None}[op]
        if op == "/":
            assert (label * v) % p == u % p  # label = u / v: label * v = u mod p
        else:
            assert label == want % p
    assert len(a["x_test"]) == round(0.3 * len(expected))


def test_modular_split_is_fixed_by_the_seed_and_fractions_sweep_the_pool():
    first = tasks.generate("modular", tasks.TaskOptions(p=11))
    again = tasks.generate("modular", tasks.TaskOptions(p=11))
    other = tasks.generate("modular", tasks.TaskOptions(p=11, seed=1))
    np.testing.assert_array_equal(first["x_test"], again["x_test"])
    assert not np.array_equal(first["x_test"], other["x_test"])
    ds = data.Dataset.from_arrays("modular", **first)
    assert ds.is_tokens and ds.vocab_size == 12 and ds.x_train.dtype == np.int32
    assert int(data.subset_size(len(ds.y_train), 0.5)) == round(0.5 * len(ds.y_train))


def test_sparse_parity_labels_are_the_parity_of_the_relevant_bits():
    o = tasks.TaskOptions(bits=10, relevant=3, train_size=300, test_size=100, seed=3)
    a = tasks.generate("sparse_parity", o)
    x, y = a["x_train"], a["y_train"]
    assert set(np.unique(x)) <= {0, 1} and a["vocab_size"] == 2 and a["num_classes"] == 2
    # exactly one subset of 3 bits explains every label
    explaining = [s for s in __import__("itertools").combinations(range(10), 3)
                  if np.array_equal(x[:, list(s)].sum(1) % 2, y)]
    assert len(explaining) == 1
    np.testing.assert_array_equal(a["x_test"][:, list(explaining[0])].sum(1) % 2, a["y_test"])


def test_counter_targets_are_the_next_token_with_the_first_ignored():
    a = tasks.generate("counter", tasks.TaskOptions(modulus=9, length=6, train_size=50, test_size=20))
    x, y = a["x_train"], a["y_train"]
    assert x.shape == y.shape == (50, 6)
    assert np.all(y[:, 0] == data.IGNORE)
    np.testing.assert_array_equal(y[:, 1:-1], x[:, 2:])  # the next token
    stride = (x[:, 1] - x[:, 0]) % 9
    assert np.all(stride > 0)
    np.testing.assert_array_equal(y[:, -1], (x[:, -1] + stride) % 9)
    ds = data.Dataset.from_arrays("counter", **a)
    assert ds.per_token and ds.num_classes == 9


@pytest.mark.parametrize("options, message", [
    (dict(p=12), "must be a prime"),
    (dict(relevant=30, bits=20), "cannot exceed"),
    (dict(test_fraction=1.0), "below 1"),
    (dict(op="%"), "unknown task op"),
])
def test_bad_task_options_are_one_line_errors(options, message):
    name = "sparse_parity" if "relevant" in options else "modular"
    with pytest.raises(LLJaxError, match=message):
        tasks.generate(name, tasks.TaskOptions(**options))
