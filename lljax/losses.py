"""Per-example losses and error metrics, defined once for training, the Hessian, curve fitting and evaluation,
and the one chunked evaluator over a dataset.

A `Loss` pairs a per-example loss `loss(outputs_B..., targets_B...) -> (B,)` with an optional error metric
`error(outputs, targets) -> (B,)` in [0, 1]. `cross_entropy` (integer labels, classification error) is the
default; `mse` (float targets of any shape, no error metric) is built in for regression. Where a loss has no
error metric, the pipeline measures mode connectivity on the loss and writes no accuracy columns.

Per-token targets. A classification loss also takes integer labels per position, targets (B, T, ...) against
outputs (B, T, ..., C), with `IGNORE` (-1) where a position has no label: the loss and the error are computed
for every position (the per-example function applied to the positions as examples), and **every mean is over
the labelled positions**: sum over the batch's labelled positions / their number, each labelled token counting
once (PyTorch's cross_entropy(ignore_index=-1, reduction='mean')); weighted means (a member's subset, chunk
padding) weight each example's positions by the example's weight. Training, evaluation, accuracy, the Hessian's
loss, curve fitting and the error along curves all use it. With one label per example (B,) every mean is the
plain mean over examples, as before.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from lljax import registry

PerExample = Callable[[jax.Array, jax.Array], jax.Array]
IGNORE = -1  # a per-token target without a label (padding, the prompt)


@dataclasses.dataclass(frozen=True)
class Loss:
    """A per-example loss and its error metric (None for regression). `classification`: targets are integer
    class labels (checked against the number of classes; label noise and accuracy apply)."""

    name: str
    per_example: PerExample
    error: PerExample | None = None
    classification: bool = False

    def per_token(self, targets) -> bool:
        """Whether `targets` are per-token labels (B, T, ...) (a classification loss and more than one axis)."""
        return self.classification and targets.ndim > 1

    def totals(self, outputs, targets) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(B,) each example's loss summed over its labelled positions, (B,) its errors summed likewise (zeros
        without an error metric) and (B,) the number of its labelled positions (1 for one label per example)."""
        if not self.per_token(targets):
            values = self.per_example(outputs, targets)
            wrong = self.error(outputs, targets).astype(values.dtype) if self.error else jnp.zeros_like(values)
            return values, wrong, jnp.ones_like(values)
        b, labelled = targets.shape[0], targets != IGNORE
        flat_outputs = outputs.reshape(-1, outputs.shape[-1])
        flat_targets = jnp.where(labelled, targets, 0).reshape(-1)
        values = self.per_example(flat_outputs, flat_targets)
        weight = labelled.reshape(-1).astype(values.dtype)
        wrong = self.error(flat_outputs, flat_targets).astype(values.dtype) if self.error else jnp.zeros_like(values)
        per_example = lambda v: (v * weight).reshape(b, -1).sum(1)
        return per_example(values), per_example(wrong), weight.reshape(b, -1).sum(1)

    def mean(self, outputs, targets, weights=None) -> jax.Array:
        """The (weighted) mean loss over a batch: over its examples, or over its labelled positions for
        per-token targets (module docstring)."""
        if self.per_token(targets):
            values, _, counts = self.totals(outputs, targets)
            counts = counts if weights is None else weights * counts
            return jnp.sum(values if weights is None else weights * values) / jnp.maximum(jnp.sum(counts), 1)
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


# The losses of Zhou et al. (NeurIPS 2022, "Are all losses created equal: a neural collapse perspective"), each a
# classification loss with the classification error. Their parameters are fields of small frozen dataclasses, so
# two losses with equal parameters are equal (one compiled program) and the loss is hashable (a static argument).

@dataclasses.dataclass(frozen=True)
class LabelSmoothing:
    """(B,) label-smoothed cross-entropy (1 - a) CE + a mean_k(-log p_k) (Szegedy et al. 2016; a = 0: CE)."""

    a: float = 0.05

    def __call__(self, logits_BC, labels_B):
        logp_BC = jax.nn.log_softmax(logits_BC)
        nll_B = -jnp.take_along_axis(logp_BC, labels_B[..., None].astype(jnp.int32), -1)[..., 0]
        return (1 - self.a) * nll_B - self.a * logp_BC.mean(-1)


@dataclasses.dataclass(frozen=True)
class Focal:
    """(B,) focal loss -(1 - p_y)^gamma log p_y (Lin et al. 2017; gamma = 0: CE)."""

    gamma: float = 3.0

    def __call__(self, logits_BC, labels_B):
        logp_B = jnp.take_along_axis(jax.nn.log_softmax(logits_BC), labels_B[..., None].astype(jnp.int32), -1)[..., 0]
        if not self.gamma:
            return -logp_B
        # 1 - p_y, kept above 0: with 0 < gamma < 1 the derivative of q^gamma is infinite at q = 0 (p_y = 1)
        q_B = jnp.maximum(-jnp.expm1(logp_B), jnp.finfo(logp_B.dtype).tiny)
        return -(q_B ** self.gamma) * logp_B


@dataclasses.dataclass(frozen=True)
class ScaledOneHotMSE:
    """(B,) mean over the C classes of (z_k - scale 1[k = y])^2: the logits regressed on a scaled one-hot target
    (Hui & Belkin 2021's rescaling, as Zhou et al. 2022; scale 1: plain one-hot)."""

    scale: float = 15.0

    def __call__(self, logits_BC, labels_B):
        target_BC = self.scale * jax.nn.one_hot(labels_B, logits_BC.shape[-1], dtype=logits_BC.dtype)
        return jnp.mean((logits_BC - target_BC) ** 2, axis=-1)


def label_smoothing(a: float = 0.05) -> Loss:
    return Loss("label_smoothing", LabelSmoothing(float(a)), classification_error, classification=True)


def focal(gamma: float = 3.0) -> Loss:
    return Loss("focal", Focal(float(gamma)), classification_error, classification=True)


def mse_onehot(scale: float = 15.0) -> Loss:
    return Loss("mse_onehot", ScaledOneHotMSE(float(scale)), classification_error, classification=True)


LOSSES = {"cross_entropy": cross_entropy, "mse": mse, "label_smoothing": label_smoothing(), "focal": focal(),
          "mse_onehot": mse_onehot()}
# the classification losses a grid may sweep (`--losses`), compared by Zhou et al.
SWEPT_LOSSES = ("cross_entropy", "label_smoothing", "focal", "mse_onehot")


def check_parameters(label_smoothing: float, focal_gamma: float, mse_scale: float) -> None:
    """One-line LLJaxErrors for loss parameters outside their ranges."""
    if not 0 <= label_smoothing < 1:
        raise registry.LLJaxError(f"label smoothing must be in [0, 1), got {label_smoothing:g}")
    if not focal_gamma >= 0:
        raise registry.LLJaxError(f"focal gamma must be non-negative, got {focal_gamma:g}")
    if not mse_scale > 0:
        raise registry.LLJaxError(f"mse scale must be positive, got {mse_scale:g}")


def build(name, label_smoothing: float = 0.05, focal_gamma: float = 3.0, mse_scale: float = 15.0) -> Loss:
    """`resolve`, the parametrised built-ins (label_smoothing, focal, mse_onehot) built with the given parameters."""
    makers = {"label_smoothing": (globals()["label_smoothing"], label_smoothing), "focal": (focal, focal_gamma),
              "mse_onehot": (mse_onehot, mse_scale)}
    if isinstance(name, str) and name in makers:
        check_parameters(label_smoothing, focal_gamma, mse_scale)
        make, value = makers[name]
        return make(value)
    return resolve(name)


def resolve(name) -> Loss:
    """A built-in loss by name, a `Loss` from an import path `package.module:attribute`, or a `Loss` itself."""
    loss = registry.resolve(name, LOSSES, "loss")
    if not isinstance(loss, Loss):
        raise registry.LLJaxError(f"loss {name!r} is a {type(loss).__name__}, not an lljax.losses.Loss")
    return loss


def evaluate(predict: Callable[[jax.Array], jax.Array], x_NX, y_N, loss: Loss = cross_entropy, weights_N=None,
             batch_size: int = 1000, dtype=jnp.float32, rows_R=None) -> jax.Array:
    """(3,) sums over a dataset in chunks of `batch_size`: weighted loss, weighted error (0 without an error
    metric) and the total weight (of labelled positions, for per-token targets). `predict(x_BX) -> outputs_B...`
    is the model at fixed parameters (BatchNorm in inference mode); the ragged last chunk is padded with weight
    0. Means are sums / total weight.

    `rows_R`, if given, are the examples to use (indices into x and y, R of them, in that order), gathered one
    chunk at a time so the subset is never materialised; `weights_N` are then per row (R,)."""
    n = x_NX.shape[0] if rows_R is None else rows_R.shape[0]
    weights_N = jnp.ones(n, dtype) if weights_N is None else weights_N
    batch_size = min(batch_size, n)
    pad = -n % batch_size
    pad_to = lambda a: jnp.concatenate([a, jnp.zeros((pad, *a.shape[1:]), a.dtype)]) if pad else a
    chunks = lambda a: pad_to(a).reshape(-1, batch_size, *a.shape[1:])
    data = (chunks(x_NX), chunks(y_N)) if rows_R is None else (chunks(rows_R),)

    per_token = loss.per_token(y_N)

    def body(total, chunk):
        *xy, w = chunk
        x, y = xy if rows_R is None else (x_NX[xy[0]], y_N[xy[0]])
        values, wrong, counts = loss.totals(predict(x), y)
        sums = [(w * values).sum(), (w * wrong).sum()] + ([(w * counts).sum()] if per_token else [])
        return total + jnp.stack(sums).astype(dtype), None

    total, _ = jax.lax.scan(body, jnp.zeros(3 if per_token else 2, dtype), (*data, chunks(weights_N)))
    return total if per_token else jnp.concatenate([total, jnp.sum(weights_N)[None].astype(dtype)])
