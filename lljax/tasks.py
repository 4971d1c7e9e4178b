"""Algorithmic tasks generated locally (nothing is downloaded), named like datasets: `--dataset modular`,
`sparse_parity` or `counter`, their parameters in the configuration's `task` section (`--task-p 97`, ...).

`modular`        x o y mod p for a prime p and o in + - * / (Power et al. 2022; Liu et al. 2022; Nanda et al.
                 2023): the sequence of tokens (x, y, '=') with '=' the token p (vocabulary p + 1), the label
                 x o y mod p (p classes) read out at the last position. Every pair (x, y) in [0, p)^2 appears
                 exactly once (for '/' only y != 0: x * y^(p-2) mod p), in a random order fixed by `seed`; the
                 first round(test_fraction * pairs) of that order are the test set, the rest the training pool.
                 `--data-fractions f` trains a model on the fraction f of the pool, i.e. on f x (1 - test_fraction)
                 of all pairs (the grokking literature's "training fraction" is that product).
`sparse_parity`  n random bits as tokens 0/1 (vocabulary 2); the label is the parity of k relevant bits, a random
                 subset of the n fixed by `seed` (Barak et al. 2022). Training and test examples are drawn
                 independently (with few bits they may repeat).
`counter`        next-token prediction on a modular counter: each sequence starts at a random state s in [0, m)
                 and steps by a random stride d in [1, m): z_t = s + t d mod m, t = 0..L. The inputs are z_0..z_{L-1},
                 the targets z_1..z_L per position (m classes), the first target ignored (`data.IGNORE`: the stride
                 is not known from one token). A model that infers the stride reaches accuracy 1.

Each generator returns the four arrays and its vocabularies; `data.load_dataset` makes the `Dataset`.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from lljax import options
from lljax.errors import LLJaxError
from lljax.losses import IGNORE

option = options.option
OPERATIONS = ("+", "-", "*", "/")


@dataclasses.dataclass(frozen=True)
class TaskOptions:
    """Parameters of the generated tasks (the `task` section of a configuration; flags --task-<field>)."""

    p: int = option(97, "modular: the prime modulus p", low=2)
    op: str = option("+", "modular: the operation of x o y mod p", choices=OPERATIONS)
    test_fraction: float = option(0.5, "modular: the fraction of all pairs held out as the test set (--data-fractions "
                                       "f trains on f of the others)", low=0, high=1, low_open=True)
    bits: int = option(20, "sparse_parity: input bits n", low=1)
    relevant: int = option(3, "sparse_parity: relevant bits k, whose parity is the label", low=1)
    modulus: int = option(16, "counter: states m of the counter (the vocabulary)", low=2)
    length: int = option(16, "counter: tokens per sequence", low=2)
    train_size: int = option(2000, "sparse_parity, counter: training examples", low=1)
    test_size: int = option(1000, "sparse_parity, counter: test examples", low=1)
    seed: int = option(0, "seed of the generated data (split, relevant bits, sequences)", low=0)

    def validate(self) -> None:
        if not is_prime(self.p):
            raise LLJaxError(f"task p must be a prime (modular arithmetic), got {self.p}")
        if self.test_fraction >= 1:
            raise LLJaxError(f"task test fraction must be below 1 (something must be trained on), got "
                             f"{self.test_fraction:g}")
        if self.relevant > self.bits:
            raise LLJaxError(f"task relevant bits ({self.relevant}) cannot exceed the bits ({self.bits})")


def is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, int(n ** 0.5) + 1))


class Arrays(dict):
    """x_train, y_train, x_test, y_test, num_classes, vocab_size."""


def modular(o: TaskOptions) -> Arrays:
    p = o.p
    x, y = (a.ravel() for a in np.meshgrid(np.arange(p), np.arange(p), indexing="ij"))
    if o.op == "/":
        keep = y != 0
        x, y = x[keep], y[keep]
        labels = x * np.asarray([pow(int(b), p - 2, p) for b in y]) % p
    else:
        labels = {"+": x + y, "-": x - y, "*": x * y}[o.op] % p
    tokens = np.stack([x, y, np.full_like(x, p)], 1)
    order = np.random.default_rng(o.seed).permutation(len(x))
    n_test = int(round(o.test_fraction * len(x)))
    if n_test < 1 or n_test >= len(x):
        raise LLJaxError(f"task test fraction {o.test_fraction:g} of {len(x)} pairs leaves an empty split")
    test, train = order[:n_test], order[n_test:]
    return Arrays(x_train=tokens[train], y_train=labels[train], x_test=tokens[test], y_test=labels[test],
                  num_classes=p, vocab_size=p + 1)


def sparse_parity(o: TaskOptions) -> Arrays:
    rng = np.random.default_rng(o.seed)
    relevant = np.sort(rng.choice(o.bits, o.relevant, replace=False))
    draw = lambda n: rng.integers(0, 2, (n, o.bits))
    x_train, x_test = draw(o.train_size), draw(o.test_size)
    label = lambda x: x[:, relevant].sum(1) % 2
    return Arrays(x_train=x_train, y_train=label(x_train), x_test=x_test, y_test=label(x_test), num_classes=2,
                  vocab_size=2)


def counter(o: TaskOptions) -> Arrays:
    rng = np.random.default_rng(o.seed)
    m = o.modulus

    def draw(n):
        start, stride = rng.integers(0, m, (n, 1)), rng.integers(1, m, (n, 1))
        z = (start + stride * np.arange(o.length + 1)) % m
        targets = z[:, 1:].copy()
        targets[:, 0] = IGNORE
        return z[:, :-1], targets

    (x_train, y_train), (x_test, y_test) = draw(o.train_size), draw(o.test_size)
    return Arrays(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test, num_classes=m, vocab_size=m)


TASKS = {"modular": modular, "sparse_parity": sparse_parity, "counter": counter}


def generate(name: str, task_options: TaskOptions | None = None) -> Arrays:
    """The arrays of task `name` with the given options (defaults when None)."""
    o = task_options or TaskOptions()
    options.check(o, "task")
    o.validate()
    return TASKS[name](o)
