"""Per-example losses and error metrics, defined once for training, the Hessian, curve fitting and evaluation,
and the one chunked evaluator over a dataset.

A `Loss` pairs a per-example loss `loss(outputs_B..., targets_B...) -> (B,)` with an optional error metric
`error(outputs, targets) -> (B,)` in [0, 1]. `cross_entropy` (integer labels, classification error) is the
default; `mse` (float targets of any shape, no error metric) is built in for regression. Where a loss has no
error metric, the pipeline measures mode connectivity on the loss and writes no accuracy columns.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from lljax import registry

PerExample = Callable[[jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class Loss:
    """A per-example loss and its error metric (None for regression). `classification`: targets are integer
    class labels (checked against the number of classes; label noise and accuracy apply)."""

    name: str
    per_example: PerExample
    error: PerExample | None = None
    classification: bool = False

    def mean(self, outputs, targets, weights=None) -> jax.Array:
        """The (weighted) mean loss over a batch."""
        values = self.per_example(outputs, targets)
        return values.mean() if weights is None else jnp.sum(weights * values) / jnp.sum(weights)


def softmax_cross_entropy(logits_BC: jax.Array, labels_B: jax.Array) -> jax.Array:
    """(B,) softmax cross-entropy on integer labels."""
    return optax.softmax_cross_entropy_with_integer_labels(logits_BC, labels_B)


def classification_error(logits_BC: jax.Array, labels_B: jax.Array) -> jax.Array:
    """(B,) 1 where the arg-max class is not the label, else 0."""
    return (logits_BC.argmax(-1) != labels_B).astype(logits_BC.dtype)


def squared_error(outputs_BK: jax.Array, targets_B: jax.Array) -> jax.Array:
    """(B,) mean over the output axes of (outputs - targets)^2; targets (B,) or (B, ...) of the outputs' size."""
    b = outputs_BK.shape[0]
    return jnp.mean((outputs_BK.reshape(b, -1) - targets_B.reshape(b, -1).astype(outputs_BK.dtype)) ** 2, axis=-1)


cross_entropy = Loss("cross_entropy", softmax_cross_entropy, classification_error, classification=True)
mse = Loss("mse", squared_error)
LOSSES = {"cross_entropy": cross_entropy, "mse": mse}


def resolve(name) -> Loss:
    """A built-in loss by name, a `Loss` from an import path `package.module:attribute`, or a `Loss` itself."""
    loss = registry.resolve(name, LOSSES, "loss")
    if not isinstance(loss, Loss):
        raise registry.LLJaxError(f"loss {name!r} is a {type(loss).__name__}, not an lljax.losses.Loss")
    return loss


def evaluate(predict: Callable[[jax.Array], jax.Array], x_NX, y_N, loss: Loss = cross_entropy, weights_N=None,
             batch_size: int = 1000, dtype=jnp.float32, rows_R=None) -> jax.Array:
    """(3,) sums over a dataset in chunks of `batch_size`: weighted loss, weighted error (0 without an error
    metric) and the total weight. `predict(x_BX) -> outputs_B...` is the model at fixed parameters (BatchNorm in
    inference mode); the ragged last chunk is padded with weight 0. Means are sums / total weight.

    `rows_R`, if given, are the examples to use (indices into x and y, R of them, in that order), gathered one
    chunk at a time so the subset is never materialised; `weights_N` are then per row (R,)."""
    n = x_NX.shape[0] if rows_R is None else rows_R.shape[0]
    weights_N = jnp.ones(n, dtype) if weights_N is None else weights_N
    batch_size = min(batch_size, n)
    pad = -n % batch_size
    pad_to = lambda a: jnp.concatenate([a, jnp.zeros((pad, *a.shape[1:]), a.dtype)]) if pad else a
    chunks = lambda a: pad_to(a).reshape(-1, batch_size, *a.shape[1:])
    data = (chunks(x_NX), chunks(y_N)) if rows_R is None else (chunks(rows_R),)

    def body(total, chunk):
        *xy, w = chunk
        x, y = xy if rows_R is None else (x_NX[xy[0]], y_N[xy[0]])
        outputs = predict(x)
        values = loss.per_example(outputs, y)
        wrong = loss.error(outputs, y).astype(values.dtype) if loss.error else jnp.zeros_like(values)
        return total + jnp.stack([(w * values).sum(), (w * wrong).sum()]), None

    total, _ = jax.lax.scan(body, jnp.zeros(2, dtype), (*data, chunks(weights_N)))
    return jnp.concatenate([total, jnp.sum(weights_N)[None].astype(dtype)])
