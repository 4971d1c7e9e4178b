"""Curves between two models in parameter space, curve fitting and mode connectivity.

Implements the mode-connectivity metric of Yang et al. 2021 (*Taxonomizing local versus global structure in
neural network loss landscapes*), which fits a Bezier curve between two trained models as Garipov et al. 2018
(*Loss surfaces, mode connectivity, and fast ensembling of DNNs*) do.

A curve is a `Curve` over any parameter pytree: fixed endpoints `start`, `end` and `num_bends` control points
`bends` (every leaf has a leading bend axis). Its point `w(t) = sum_i c_i(t) P_i` uses Bernstein coefficients
(Bezier) or hat functions on equally spaced knots (polygonal chain) over P = (start, *bends, end). Only the bends
are ever optimised, so the endpoints are fixed by construction.

Any architecture works: the code takes `model`, a Flax module (hashable by value: the best static argument), a
Flax `apply(variables, x, train=..., mutable=..., rngs=...)` or an lljax `models.ModelSpec`, so no "curve twin" of
a model is written; stochastic layers (Dropout) draw from a 'dropout' key per step. The objective and the error
along the curve come from a `losses.Loss` (cross-entropy and classification error by default). Every function
is for one pair of models; `init_curves`, `fit_curves`, `evaluate_curves` and `linear_barriers` are the same
functions vmapped over a leading pair axis P and jitted.

Data: `x_train`, `y_train` are arrays of examples; `rows`, if given, picks the examples a pair uses (indices, in
that order), gathered a minibatch or a chunk at a time so the subset is never materialised.

BatchNorm: during fitting the model runs in train mode at w(t) (batch statistics; running statistics are not
needed). Before evaluating each t, the running statistics are recomputed exactly from the training data (see
`recompute_batch_stats`), at t = 0 and 1 too, as the paper does.
"""
from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy.special import comb

from lljax import grid, losses, models, pytrees
from lljax.errors import LLJaxError

Params = Any
BatchStats = Any

CURVE_KINDS = ("bezier", "polychain")
INITS = ("linear", "random")
NUM_TS = 21  # default t grid: 21 points, well above the 5 the reference code evaluates


def default_ts(num: int = NUM_TS) -> np.ndarray:
    """(num,) equally spaced t in [0, 1], both ends included."""
    if num < 2:
        raise LLJaxError(f"a t grid needs at least 2 points (0 and 1), got {num}")
    return np.linspace(0.0, 1.0, num)


# ------------------------------------------------------------------------------------------------- curves

def bezier_coefficients(t, num_bends: int) -> jax.Array:
    """(..., num_bends + 2) Bernstein polynomials of degree num_bends + 1 at t (...,); they sum to 1."""
    degree = num_bends + 1
    t = jnp.asarray(t)
    t = t.astype(jnp.result_type(t.dtype, jnp.float32))[..., None]
    k = jnp.arange(degree + 1, dtype=t.dtype)
    binom = jnp.asarray(comb(degree, np.arange(degree + 1)), t.dtype)
    return binom * t ** k * (1 - t) ** (degree - k)


def polychain_coefficients(t, num_bends: int) -> jax.Array:
    """(..., num_bends + 2) weights of a polygonal chain through knots at t = i / (num_bends + 1): hat
    functions, two neighbours non-zero, summing to 1 (Garipov et al. 2018, PolyChain)."""
    segments = num_bends + 1
    t = jnp.asarray(t)
    t = t.astype(jnp.result_type(t.dtype, jnp.float32))[..., None]
    knots = jnp.arange(segments + 1, dtype=t.dtype)
    return jnp.maximum(0, 1 - jnp.abs(t * segments - knots))


def curve_coefficients(kind: str, t, num_bends: int) -> jax.Array:
    if kind == "bezier":
        return bezier_coefficients(t, num_bends)
    if kind == "polychain":
        return polychain_coefficients(t, num_bends)
    raise LLJaxError(f"unknown curve kind {kind!r}; choose one of {', '.join(CURVE_KINDS)}")


class Curve(NamedTuple):
    """A curve from `start` to `end` (parameter pytrees) through control points `bends` (same pytree, every
    leaf with a leading axis of num_bends). `kind` is static (pytree metadata), so curves jit and vmap."""

    start: Params
    bends: Params
    end: Params
    kind: str = "bezier"

    @property
    def num_bends(self) -> int:
        """Control points between the endpoints (for a single, unbatched curve)."""
        return jax.tree.leaves(self.bends)[0].shape[0]


jax.tree_util.register_pytree_node(
    Curve, lambda c: ((c.start, c.bends, c.end), c.kind), lambda kind, children: Curve(*children, kind=kind))


def _check_endpoints(start, end):
    pytrees.check_params(start, "curve endpoint")
    if jax.tree.structure(start) != jax.tree.structure(end):
        raise LLJaxError("curve endpoints have different parameter structures")
    for a, b in zip(jax.tree.leaves(start), jax.tree.leaves(end)):
        if a.shape != b.shape or a.dtype != b.dtype:
            raise LLJaxError(f"curve endpoints differ in a leaf: {a.shape} {a.dtype} vs {b.shape} {b.dtype}")
    if not jax.tree.leaves(start):
        raise LLJaxError("curve endpoints have no parameters")


def init_curve(start: Params, end: Params, num_bends: int = 1, kind: str = "bezier", init: str = "linear",
               key: jax.Array | None = None) -> Curve:
    """A curve between two models with `num_bends` control points (1: the paper's quadratic Bezier).

    init='linear' puts bend i at (i+1)/(num_bends+1) of the way along the segment; for both kinds the curve is
    then exactly the straight segment w(t) = (1-t) start + t end (Bernstein polynomials reproduce linear
    functions). init='random' draws each bend like a fresh network: per leaf, i.i.d. normal entries with the
    root-mean-square of the endpoints' entries of that leaf (needs `key`). num_bends=0 is the segment itself.
    """
    _check_endpoints(start, end)
    if kind not in CURVE_KINDS:
        raise LLJaxError(f"unknown curve kind {kind!r}; choose one of {', '.join(CURVE_KINDS)}")
    if int(num_bends) != num_bends or num_bends < 0:
        raise LLJaxError(f"num_bends must be a non-negative integer, got {num_bends}")
    num_bends = int(num_bends)
    if init == "linear":
        alphas = np.arange(1, num_bends + 1) / (num_bends + 1)

        def bends_of(a, b):
            alpha = jnp.asarray(alphas, a.dtype).reshape(-1, *([1] * a.ndim))
            return (1 - alpha) * a[None] + alpha * b[None]

        bends = jax.tree.map(bends_of, start, end)
    elif init == "random":
        if key is None:
            raise LLJaxError("init='random' needs a key")
        leaves_a, treedef = jax.tree.flatten(start)
        leaves_b = jax.tree.leaves(end)
        sizes = [num_bends * a.size for a in leaves_a]
        # one draw for all leaves: each random-number call is a separate (slow to compile) kernel
        normal = jax.random.normal(key, (sum(sizes),), jnp.result_type(*leaves_a))
        pieces = jnp.split(normal, np.cumsum(sizes)[:-1])
        bends = treedef.unflatten([
            (jnp.sqrt(0.5 * (jnp.mean(a ** 2) + jnp.mean(b ** 2))) * z.reshape(num_bends, *a.shape)).astype(a.dtype)
            for z, a, b in zip(pieces, leaves_a, leaves_b)])
    else:
        raise LLJaxError(f"unknown bend initialisation {init!r}; choose one of {', '.join(INITS)}")
    return Curve(start, bends, end, kind)


def curve_point(curve: Curve, t) -> Params:
    """The parameters w(t) on the curve, t a scalar in [0, 1]; w(0) and w(1) are the endpoints bitwise."""
    num_bends = curve.num_bends

    def point(a, bends, b):
        t_ = jnp.asarray(t, a.dtype)
        c = curve_coefficients(curve.kind, t_, num_bends)
        w = c[0] * a + jnp.tensordot(c[1:-1], bends, axes=1) + c[-1] * b
        # 1*a + 0*bends + 0*b is a up to the sign of zeros; selecting makes the endpoints exact in every bit.
        return jnp.where(t_ == 0, a, jnp.where(t_ == 1, b, w))

    return jax.tree.map(point, curve.start, curve.bends, curve.end)


# ---------------------------------------------------------------------------------------------- fitting

class FitState(NamedTuple):
    """Curve-fitting state of one pair: the curve (only its bends change), the optax state of the optimiser
    over the bends (`curve_optimizer`) and the number of steps taken."""

    curve: Curve
    opt_state: Any
    step: jax.Array  # () int32


def lr_factor(progress) -> jax.Array:
    """Garipov et al.'s curve schedule as a factor of the base lr at `progress` = fraction of training done:
    1 up to 50%, linear down to 0.01 at 90%, then 0.01."""
    progress = jnp.asarray(progress)
    return jnp.where(progress <= 0.5, 1.0,
                     jnp.where(progress <= 0.9, 1.0 - (progress - 0.5) / 0.4 * 0.99, 0.01))


def curve_optimizer(lr, momentum, total_steps: int, dtype=jnp.float32) -> optax.GradientTransformation:
    """SGD with momentum (PyTorch convention, buf = momentum * buf + grad) at lr x `lr_factor(step / total)`:
    Garipov et al.'s curve optimiser, as optax. lr and momentum may be traced scalars."""
    return optax.chain(optax.trace(decay=momentum),
                       optax.scale_by_schedule(lambda count: -lr * lr_factor(count.astype(dtype) / total_steps)))


def fit_init(curve: Curve, optimizer: optax.GradientTransformation) -> FitState:
    return FitState(curve, optimizer.init(curve.bends), jnp.zeros((), jnp.int32))


def _l2_squared(params) -> jax.Array:
    return sum(jnp.sum(p ** 2) for p in jax.tree.leaves(params))


def curve_loss(model: models.Model, curve: Curve, batch_stats: BatchStats, x_BX, y_B, t, weight_decay,
               loss: losses.Loss = losses.cross_entropy, rng: jax.Array | None = None) -> jax.Array:
    """The fitting objective at one t: the mean loss of w(t) on the minibatch (BatchNorm and Dropout in train
    mode, Dropout drawing from `rng`) + 0.5 * weight_decay * ||w(t)||^2, as Garipov et al.'s l2_regularizer."""
    w = curve_point(curve, t)
    outputs, _ = models.apply(model, w, batch_stats, x_BX, train=True, rng=rng)
    return loss.mean(outputs, y_B) + 0.5 * weight_decay * _l2_squared(w)


def fit_step(model: models.Model, optimizer: optax.GradientTransformation, state: FitState,
             batch_stats: BatchStats, x_BX, y_B, t, weight_decay, loss: losses.Loss = losses.cross_entropy,
             rng: jax.Array | None = None) -> tuple[FitState, jax.Array]:
    """One optimiser step on the bends at curve parameter t; returns the new state and the objective before
    the step."""

    def objective(bends):
        return curve_loss(model, state.curve._replace(bends=bends), batch_stats, x_BX, y_B, t, weight_decay,
                          loss, rng)

    value, grads = jax.value_and_grad(objective)(state.curve.bends)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.curve.bends)
    bends = optax.apply_updates(state.curve.bends, updates)
    return FitState(state.curve._replace(bends=bends), opt_state, state.step + 1), value


def _streams(key):
    key_shuffle, key_t = jax.random.split(key)
    return key_shuffle, key_t


def _epoch_order(key_shuffle, epoch, num_train):
    return jax.random.permutation(jax.random.fold_in(key_shuffle, epoch), num_train)


def _step_t(key_t, step, dtype):
    return jax.random.uniform(jax.random.fold_in(key_t, step), (), dtype)


def _num_examples(x_train, y_train, rows) -> int:
    if x_train.shape[0] != y_train.shape[0]:
        raise LLJaxError(f"x_train has {x_train.shape[0]} examples but y_train has {y_train.shape[0]} labels")
    if rows is not None and (rows.ndim != 1 or rows.shape[0] == 0):
        raise LLJaxError(f"rows must be a non-empty 1-D array of example indices, got shape {rows.shape}")
    return x_train.shape[0] if rows is None else rows.shape[0]


def _check_fit_args(num_train, epochs, batch_size):
    if int(epochs) != epochs or epochs <= 0:
        raise LLJaxError(f"epochs must be a positive integer, got {epochs}")
    if int(batch_size) != batch_size or not 0 < batch_size <= num_train:
        raise LLJaxError(f"batch size must be in 1..{num_train} (the training set), got {batch_size}")


def minibatch_plan(key: jax.Array, num_train: int, batch_size: int, epochs: int, dtype=jnp.float32
                   ) -> tuple[jax.Array, jax.Array]:
    """The t values (S,) and minibatch indices (S, B) `fit_curve` draws from `key`, S = epochs * (N // B):
    each epoch is a fresh permutation (`fold_in(shuffle stream, epoch)`, last partial batch dropped) and each
    step one t ~ U(0, 1) (`fold_in(t stream, step)`, in the parameters' dtype). For reproducing a fit
    elsewhere; with `rows`, the indices are positions in `rows`."""
    key_shuffle, key_t = _streams(key)
    steps_per_epoch = num_train // batch_size
    orders = jax.vmap(lambda e: _epoch_order(key_shuffle, e, num_train))(jnp.arange(epochs))
    idx = orders[:, :steps_per_epoch * batch_size].reshape(-1, batch_size)
    ts = jax.vmap(lambda s: _step_t(key_t, s, dtype))(jnp.arange(epochs * steps_per_epoch))
    return ts, idx


def fit_curve(model: models.Model, curve: Curve, x_train, y_train, key: jax.Array, *,
              batch_stats: BatchStats = None, epochs: int, batch_size: int, lr=0.01, weight_decay=5e-4,
              momentum=0.9, loss: losses.Loss = losses.cross_entropy, rows=None) -> tuple[Curve, jax.Array]:
    """Fit the bends of one curve as Garipov et al. 2018 / Yang et al. 2021: SGD with momentum
    (`curve_optimizer`) on `curve_loss` at one t ~ U(0, 1) per minibatch, `epochs` passes over shuffled
    minibatches of x_train (N, ...), y_train (N, ...) (or of their `rows`). `batch_stats` is any batch_stats of
    the model (a template for models with BatchNorm; its values are unused). lr, weight_decay and momentum may
    be traced scalars. Dropout draws from `grid.stream(key, 'dropout')` folded with the step.

    Returns the fitted curve (endpoints untouched) and the mean objective of every epoch (epochs,).
    """
    batch_stats = {} if batch_stats is None else batch_stats
    dtype = jax.tree.leaves(curve.start)[0].dtype

    def start(total_steps):
        optimizer = curve_optimizer(lr, momentum, total_steps, dtype)
        step = lambda state, x, y, t, rng: fit_step(model, optimizer, state, batch_stats, x, y, t, weight_decay,
                                                    loss, rng)
        return fit_init(curve, optimizer), step

    state, epoch_losses = _fit_loop(start, x_train, y_train, key, epochs, batch_size, rows,
                                    lambda key_t, s: _step_t(key_t, s, dtype))
    return state.curve, epoch_losses


def _fit_loop(start, x_train, y_train, key, epochs, batch_size, rows, draw):
    """The minibatch loop every fit shares: `epochs` passes over shuffled minibatches (`fold_in(shuffle stream,
    epoch)`), each step's sample of the curve or surface parameter `draw(t stream, step)` and its Dropout key;
    `start(total_steps) -> (state, step(state, x, y, sample, rng) -> (state, loss))`. Returns the last state
    and the mean loss of every epoch (epochs,)."""
    num_train = _num_examples(x_train, y_train, rows)
    _check_fit_args(num_train, epochs, batch_size)
    key_shuffle, key_t = _streams(key)
    key_dropout = grid.stream(key, "dropout")
    steps_per_epoch = num_train // batch_size
    state, step_fn = start(epochs * steps_per_epoch)

    def epoch(state, e):
        order = _epoch_order(key_shuffle, e, num_train)

        def step(state, j):
            idx = jax.lax.dynamic_slice_in_dim(order, j * batch_size, batch_size)
            idx = idx if rows is None else rows[idx]
            s = e * steps_per_epoch + j
            return step_fn(state, x_train[idx], y_train[idx], draw(key_t, s), jax.random.fold_in(key_dropout, s))

        state, step_losses = jax.lax.scan(step, state, jnp.arange(steps_per_epoch))
        return state, step_losses.mean()

    return jax.lax.scan(epoch, state, jnp.arange(epochs))


# ------------------------------------------------------------------------------------ BatchNorm statistics

def _batch_statistics(model: models.Model, params, batch_stats, x_BX, rng=None):
    """The batch statistics every BatchNorm layer computes on x_BX in train mode.

    The model returns running statistics updated as an exponential moving average, new = m * old + (1 - m) * s
    (flax.linen.BatchNorm, torch BatchNorm). Starting from old = 0 gives (1 - m) * s, and the derivative with
    respect to old (a forward-mode tangent, exact and nearly free: no output depends on old) gives m, so s is
    recovered without knowing the model's momentum.
    """
    zeros = jax.tree.map(jnp.zeros_like, batch_stats)
    ones = jax.tree.map(jnp.ones_like, batch_stats)
    scaled, momentum = jax.jvp(lambda old: models.apply(model, params, old, x_BX, True, rng)[1], (zeros,), (ones,))
    return jax.tree.map(lambda a, m: a / (1 - m), scaled, momentum)


def _combine_chunks(stats_K, weights_K):
    """Population statistics from per-chunk ones (leading axis K, weights n_k / N): means average; a 'var'
    beside a 'mean' (a BatchNorm layer's pair) combines exactly as within-chunk plus between-chunk variance."""
    average = lambda a: jnp.tensordot(weights_K.astype(a.dtype), a, axes=1)
    if isinstance(stats_K, Mapping):
        if "mean" in stats_K and "var" in stats_K:
            out = {k: jax.tree.map(average, v) for k, v in stats_K.items()}
            mean_K, var_K = stats_K["mean"], stats_K["var"]
            out["var"] = average(var_K + (mean_K - out["mean"][None]) ** 2)
            return out
        return {k: _combine_chunks(v, weights_K) for k, v in stats_K.items()}
    return jax.tree.map(average, stats_K)


def recompute_batch_stats(model: models.Model, params: Params, batch_stats: BatchStats, x_train, *,
                          chunk_size: int | None = None, rows=None, rng: jax.Array | None = None) -> BatchStats:
    """Running BatchNorm statistics of `params` recomputed exactly over x_train (N, ...) (or its `rows`): the
    population mean and (biased) variance of every BatchNorm layer's inputs, not a moving average.
    `batch_stats` is a template (structure and shapes). Models without BatchNorm return it unchanged. The
    model runs in train mode, so Dropout is active as in torch's `update_bn`; it draws from `rng`.

    chunk_size=None runs the whole training set as one train-mode batch: every layer's statistics are exact
    and consistent (inference with them reproduces the full-batch train-mode outputs). With chunks of
    `chunk_size` examples, per-chunk means and variances are combined exactly (within- plus between-chunk
    variance): exact for the first BatchNorm layer; deeper layers see inputs normalised with per-chunk
    statistics, as in the reference code's update_bn (which also drops the between-batch variance).
    """
    if not jax.tree.leaves(batch_stats):
        return batch_stats
    n = x_train.shape[0] if rows is None else rows.shape[0]
    chunk = n if chunk_size is None else min(int(chunk_size), n)
    if chunk <= 0:
        raise LLJaxError(f"BatchNorm chunk size must be positive, got {chunk_size}")
    stats_of = lambda x: _batch_statistics(model, params, batch_stats, x, rng)
    examples = (lambda r: x_train[r]) if rows is not None else (lambda x: x)  # rows chunk -> inputs
    source = x_train if rows is None else rows
    if chunk == n:
        return stats_of(examples(source))
    full, rest = divmod(n, chunk)
    stats = jax.lax.map(lambda piece: stats_of(examples(piece)),
                        source[:full * chunk].reshape(full, chunk, *source.shape[1:]))
    weights = [chunk / n] * full
    if rest:
        last = stats_of(examples(source[full * chunk:]))
        stats = jax.tree.map(lambda a, b: jnp.concatenate([a, b[None]]), stats, last)
        weights.append(rest / n)
    return _combine_chunks(stats, jnp.asarray(weights))


# ------------------------------------------------------------------------------------------- evaluation

class CurveMetrics(NamedTuple):
    """Metrics along a curve, each (T,) (a leading pair axis when vmapped): mean loss and error (the loss's
    error metric, e.g. the fraction misclassified, in [0, 1]; NaN for a loss without one) on the training and
    test sets at every t."""

    ts: jax.Array
    train_loss: jax.Array
    train_err: jax.Array
    test_loss: jax.Array
    test_err: jax.Array


def _loss_and_error(model, params, batch_stats, x_NX, y_N, batch_size, loss, rows=None):
    """Mean loss and error over a dataset (or its rows) in inference mode, in chunks of batch_size."""
    dtype = jnp.result_type(jax.tree.leaves(params)[0].dtype, jnp.float32)
    total_loss, total_error, weight = losses.evaluate(lambda x: models.apply(model, params, batch_stats, x)[0],
                                                      x_NX, y_N, loss, None, batch_size, dtype, rows)
    return total_loss / weight, total_error / weight if loss.error else jnp.full((), jnp.nan, dtype)


def evaluate_curve(model: models.Model, curve: Curve, batch_stats: BatchStats, x_train, y_train, x_test, y_test,
                   ts=None, *, bn_chunk_size: int | None = None, eval_batch_size: int = 1000,
                   loss: losses.Loss = losses.cross_entropy, rows=None, rng: jax.Array | None = None
                   ) -> CurveMetrics:
    """Training and test loss and error at every t of `ts` (default `default_ts()`, 21 points), BatchNorm
    statistics recomputed exactly over x_train (or its `rows`) at each t first (`recompute_batch_stats`, with
    Dropout drawing from `rng`). The t loop is sequential (`lax.map`), so memory does not grow with the grid."""
    ts = jnp.asarray(default_ts() if ts is None else ts, jax.tree.leaves(curve.start)[0].dtype)
    if ts.ndim != 1 or ts.shape[0] < 2:
        raise LLJaxError(f"ts must be a 1-D grid of at least 2 values, got shape {ts.shape}")
    _num_examples(x_train, y_train, rows)
    batch_stats = {} if batch_stats is None else batch_stats

    def at(t):
        w = curve_point(curve, t)
        stats = recompute_batch_stats(model, w, batch_stats, x_train, chunk_size=bn_chunk_size, rows=rows, rng=rng)
        train = _loss_and_error(model, w, stats, x_train, y_train, eval_batch_size, loss, rows)
        test = _loss_and_error(model, w, stats, x_test, y_test, eval_batch_size, loss)
        return jnp.stack([*train, *test])

    values = jax.lax.map(at, ts)
    return CurveMetrics(ts, *values.T)


def mode_connectivity(errors_along_t) -> jax.Array:
    """Yang et al. 2021's mode connectivity of a curve from a metric e along a t grid (..., T) whose first and
    last points are the endpoints: m = (e(0) + e(1)) / 2, t* = argmax_t |e(t) - m|, returns m - e(t*) (...,).
    Negative: a barrier; positive: the curve beats its endpoints; about 0: well connected.

    Ties go to the earliest t, as numpy's argmax in the reference code. Both endpoints always deviate from m
    by |e(1) - e(0)| / 2; the deviation is computed so that they tie exactly, so a curve that stays between
    e(0) and e(1) deterministically gets t* = 0 and mc = (e(1) - e(0)) / 2 (the paper's formula is ambiguous
    there; the sign then only says which endpoint is worse)."""
    e = jnp.asarray(errors_along_t)
    if e.ndim < 1 or e.shape[-1] < 2:
        raise LLJaxError(f"mode connectivity needs values at >= 2 points along t, got shape {e.shape}")
    first, last = e[..., :1], e[..., -1:]
    # 2 |e - m| written as |(e - e0) + (e - e1)|: exactly |e1 - e0| at both ends, so they tie bitwise.
    worst = jnp.argmax(jnp.abs((e - first) + (e - last)), axis=-1)
    m = (first[..., 0] + last[..., 0]) / 2
    return m - jnp.take_along_axis(e, worst[..., None], axis=-1)[..., 0]


def linear_barrier(model: models.Model, start: Params, end: Params, batch_stats: BatchStats, x_train, y_train,
                   x_test, y_test, ts=None, *, bn_chunk_size: int | None = None, eval_batch_size: int = 1000,
                   loss: losses.Loss = losses.cross_entropy) -> tuple[jax.Array, CurveMetrics]:
    """The straight segment between two models, no fitting: `mode_connectivity` of the training error along
    it (of the loss, for a loss without an error metric; negative: a barrier on the line) and the metrics
    along it (as `evaluate_curve`)."""
    metrics = evaluate_curve(model, init_curve(start, end, num_bends=0), batch_stats, x_train, y_train,
                             x_test, y_test, ts, bn_chunk_size=bn_chunk_size, eval_batch_size=eval_batch_size,
                             loss=loss)
    return mode_connectivity(metrics.train_err if loss.error else metrics.train_loss), metrics


# ------------------------------------------------------------------------------------------- surfaces

class Surface(NamedTuple):
    """A tensor-product Bezier surface of degree n over parameter pytrees (Ren et al., ICLR 2025): control points
    `controls`, every leaf with leading axes (n + 1, n + 1); the four corners [0, 0], [0, n], [n, 0], [n, n] are
    four trained models and stay fixed. theta(u, v) = sum_i sum_j B_i^n(u) B_j^n(v) theta_ij."""

    controls: Params

    @property
    def degree(self) -> int:
        return jax.tree.leaves(self.controls)[0].shape[0] - 1


def init_surface(w00: Params, w0n: Params, wn0: Params, wnn: Params, degree: int = 2) -> Surface:
    """A surface with the four models at its corners (theta(0, 0) = w00, theta(0, 1) = w0n, theta(1, 0) = wn0,
    theta(1, 1) = wnn) and the other control points on the bilinear interpolation of the corners (so the initial
    surface is that interpolation: Bernstein polynomials reproduce linear functions)."""
    if int(degree) != degree or degree < 1:
        raise LLJaxError(f"a Bezier surface needs a degree of at least 1, got {degree}")
    for other in (w0n, wn0, wnn):
        _check_endpoints(w00, other)
    s = np.arange(degree + 1) / degree

    def controls(a, b, c, d):
        u = jnp.asarray(s, a.dtype).reshape(-1, 1, *([1] * a.ndim))
        v = jnp.asarray(s, a.dtype).reshape(1, -1, *([1] * a.ndim))
        return (1 - u) * (1 - v) * a + (1 - u) * v * b + u * (1 - v) * c + u * v * d

    return Surface(jax.tree.map(controls, w00, w0n, wn0, wnn))


def surface_point(surface: Surface, u, v) -> Params:
    """theta(u, v); the corners are the four models bitwise."""
    n = surface.degree

    def point(c):
        uu, vv = jnp.asarray(u, c.dtype), jnp.asarray(v, c.dtype)
        bu, bv = bezier_coefficients(uu, n - 1), bezier_coefficients(vv, n - 1)  # degree n: n - 1 'bends'
        w = jnp.tensordot(jnp.outer(bu, bv), c, axes=2)
        corner = lambda i, j: c[i, j]
        w = jnp.where((uu == 0) & (vv == 0), corner(0, 0), w)
        w = jnp.where((uu == 0) & (vv == 1), corner(0, n), w)
        w = jnp.where((uu == 1) & (vv == 0), corner(n, 0), w)
        return jnp.where((uu == 1) & (vv == 1), corner(n, n), w)

    return jax.tree.map(point, surface.controls)


def _trainable_mask(n: int, boundary: bool | None) -> np.ndarray:
    """(n + 1, n + 1): which control points a stage trains (never the corners). boundary=True: the edges',
    False: the interior's, None: every non-corner point."""
    i, j = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
    corner = np.isin(i, (0, n)) & np.isin(j, (0, n))
    edge = (np.isin(i, (0, n)) | np.isin(j, (0, n))) & ~corner
    return {None: ~corner, True: edge, False: ~corner & ~edge}[boundary]


def fit_surface(model: models.Model, surface: Surface, x_train, y_train, key: jax.Array, *,
                batch_stats: BatchStats = None, epochs: int, batch_size: int, lr=0.01, weight_decay=5e-4,
                momentum=0.9, loss: losses.Loss = losses.cross_entropy, rows=None, boundary_first: bool = False
                ) -> tuple[Surface, jax.Array]:
    """Fit the non-corner control points: SGD with momentum (`curve_optimizer`) on the loss at one (u, v) ~ U[0,
    1]^2 per minibatch + 0.5 wd ||theta(u, v)||^2, as `fit_curve`. boundary_first: the paper's two stages,
    `epochs` each: the edges' control points on points of the boundary first, then the interior's with the edges
    fixed. Returns the fitted surface and the mean objective of every epoch."""
    batch_stats = {} if batch_stats is None else batch_stats
    dtype = jax.tree.leaves(surface.controls)[0].dtype
    n = surface.degree
    stages = ((True, "boundary"), (False, "interior")) if boundary_first else ((None, "all"),)
    history = []
    for stage, (boundary, name) in enumerate(stages):
        mask = _trainable_mask(n, boundary)

        def start(total_steps, surface=surface, mask=mask):
            optimizer = curve_optimizer(lr, momentum, total_steps, dtype)
            keep = lambda c: jnp.asarray(mask.reshape(mask.shape + (1,) * (c.ndim - 2)), c.dtype)

            def step(state, x, y, uv, rng):
                controls, opt_state = state

                def objective(controls):
                    w = surface_point(Surface(controls), uv[0], uv[1])
                    return loss.mean(models.apply(model, w, batch_stats, x, train=True, rng=rng)[0], y) + \
                        0.5 * weight_decay * _l2_squared(w)

                value, grads = jax.value_and_grad(objective)(controls)
                grads = jax.tree.map(lambda g: g * keep(g), grads)  # corners (and the other stage's points) fixed
                updates, opt_state = optimizer.update(grads, opt_state, controls)
                return (optax.apply_updates(controls, updates), opt_state), value

            return (surface.controls, optimizer.init(surface.controls)), step

        def draw(key_t, s, boundary=boundary):
            u, v = jax.random.uniform(jax.random.fold_in(key_t, s), (2,), dtype)
            if not boundary:
                return jnp.stack([u, v])
            side = jnp.floor(v * 4)  # a point on one of the four edges, uniformly
            return jnp.select([side == 0, side == 1, side == 2], [jnp.stack([u, 0 * u]), jnp.stack([u, 1 + 0 * u]),
                                                                  jnp.stack([0 * u, u])], jnp.stack([1 + 0 * u, u]))

        (controls, _), epoch_losses = _fit_loop(start, x_train, y_train, jax.random.fold_in(key, stage), epochs,
                                                batch_size, rows, draw)
        surface = Surface(controls)
        history.append(epoch_losses)
    return surface, jnp.concatenate(history)


class SurfaceMetrics(NamedTuple):
    """A surface evaluated on a G x G grid of (u, v) (us, vs (G,)): training and test loss and error (G, G), the
    test accuracy of its best point by training loss (a model average), and the test accuracy of the ensemble
    of every grid point's outputs (softmax averaged)."""

    us: jax.Array
    vs: jax.Array
    train_loss: jax.Array
    train_err: jax.Array
    test_loss: jax.Array
    test_err: jax.Array
    best_test_acc: jax.Array
    ensemble_test_acc: jax.Array


def evaluate_surface(model: models.Model, surface: Surface, batch_stats: BatchStats, x_train, y_train, x_test,
                     y_test, grid_size: int = 11, *, bn_chunk_size: int | None = None, eval_batch_size: int = 1000,
                     loss: losses.Loss = losses.cross_entropy, rows=None, rng: jax.Array | None = None
                     ) -> SurfaceMetrics:
    """Every metric of `SurfaceMetrics` on a grid_size x grid_size grid, BatchNorm statistics recomputed exactly
    at every point (Ren et al. interpolate them instead), the points one after another (memory)."""
    if grid_size < 2:
        raise LLJaxError(f"a surface grid needs at least 2 x 2 points, got {grid_size}")
    dtype = jax.tree.leaves(surface.controls)[0].dtype
    ticks = jnp.linspace(0, 1, grid_size).astype(dtype)
    points = jnp.stack(jnp.meshgrid(ticks, ticks, indexing="ij"), -1).reshape(-1, 2)
    batch_stats = {} if batch_stats is None else batch_stats

    def at(uv):
        w = surface_point(surface, uv[0], uv[1])
        stats = recompute_batch_stats(model, w, batch_stats, x_train, chunk_size=bn_chunk_size, rows=rows, rng=rng)
        train = _loss_and_error(model, w, stats, x_train, y_train, eval_batch_size, loss, rows)
        test = _loss_and_error(model, w, stats, x_test, y_test, eval_batch_size, loss)
        outputs = models.apply(model, w, stats, x_test)[0]
        return jnp.stack([*train, *test]), jax.nn.softmax(outputs, -1) if loss.classification else outputs

    values, outputs = jax.lax.map(at, points)
    values = values.reshape(grid_size, grid_size, 4)
    best = jnp.argmin(values[..., 0].reshape(-1))
    if loss.classification:
        ensemble = jnp.mean((jnp.mean(outputs, 0).argmax(-1) == y_test).astype(dtype))
        best_acc = 1 - values[..., 3].reshape(-1)[best]
    else:
        ensemble = best_acc = jnp.full((), jnp.nan, dtype)
    return SurfaceMetrics(ticks, ticks, values[..., 0], values[..., 1], values[..., 2], values[..., 3], best_acc,
                          ensemble)


def surface_connectivity(errors_GG) -> jax.Array:
    """mode connectivity generalised to a surface: m = the mean of the four corners' values, the grid point
    farthest from m, and mc = m - its value (negative: a barrier somewhere on the surface)."""
    e = jnp.asarray(errors_GG)
    corners = jnp.stack([e[..., 0, 0], e[..., 0, -1], e[..., -1, 0], e[..., -1, -1]], -1)
    m = corners.mean(-1)
    flat = e.reshape(*e.shape[:-2], -1)
    worst = jnp.argmax(jnp.abs(flat - m[..., None]), axis=-1)
    return m - jnp.take_along_axis(flat, worst[..., None], -1)[..., 0]


# ------------------------------------------------------------------------------ over pairs (vmapped once)

def _label_axis(y, name):
    if y.ndim not in (1, 2):
        raise LLJaxError(f"{name} must be (N,) shared or (P, N) per pair, got shape {y.shape}")
    return 0 if y.ndim == 2 else None


@functools.partial(jax.jit, static_argnames=("num_bends", "kind", "init"))
def init_curves(starts: Params, ends: Params, num_bends: int = 1, kind: str = "bezier", init: str = "linear",
                keys: jax.Array | None = None) -> Curve:
    """`init_curve` over pairs: starts and ends with a leading pair axis P, keys (P,) for init='random'."""
    if keys is None:
        return jax.vmap(lambda a, b: init_curve(a, b, num_bends, kind, init))(starts, ends)
    return jax.vmap(lambda a, b, k: init_curve(a, b, num_bends, kind, init, k))(starts, ends, keys)


@functools.partial(jax.jit, static_argnames=("model", "epochs", "batch_size", "loss"))
def fit_curves(model: models.Model, curves: Curve, x_train, y_train, keys: jax.Array, *,
               batch_stats: BatchStats = None, epochs: int, batch_size: int, lr=0.01, weight_decay=5e-4,
               momentum=0.9, loss: losses.Loss = losses.cross_entropy) -> tuple[Curve, jax.Array]:
    """`fit_curve` over P pairs in one program: curves, keys (P,) and batch_stats with a leading pair axis;
    x_train shared; y_train (N,) shared or (P, N); lr, weight_decay, momentum scalars or (P,).
    Returns the fitted curves and the per-epoch objective (P, epochs)."""
    num_pairs = keys.shape[0]
    per_pair = lambda v: jnp.broadcast_to(jnp.asarray(v), (num_pairs,))
    fit = lambda c, y, k, bs, lr_, wd, mom: fit_curve(
        model, c, x_train, y, k, batch_stats=bs, epochs=epochs, batch_size=batch_size, lr=lr_,
        weight_decay=wd, momentum=mom, loss=loss)
    batch_stats = {} if batch_stats is None else batch_stats
    return jax.vmap(fit, in_axes=(0, _label_axis(y_train, "y_train"), 0, 0, 0, 0, 0))(
        curves, y_train, keys, batch_stats, per_pair(lr), per_pair(weight_decay), per_pair(momentum))


@functools.partial(jax.jit, static_argnames=("model", "bn_chunk_size", "eval_batch_size", "loss"))
def evaluate_curves(model: models.Model, curves: Curve, batch_stats: BatchStats, x_train, y_train, x_test, y_test,
                    ts=None, *, bn_chunk_size: int | None = None, eval_batch_size: int = 1000,
                    loss: losses.Loss = losses.cross_entropy) -> CurveMetrics:
    """`evaluate_curve` over P pairs: curves and batch_stats with a leading pair axis, inputs shared, labels
    (N,) shared or (P, N); every metric (P, T)."""
    ts = jnp.asarray(default_ts() if ts is None else ts, jax.tree.leaves(curves.start)[0].dtype)
    batch_stats = {} if batch_stats is None else batch_stats
    evaluate = lambda c, bs, y_tr, y_te: evaluate_curve(
        model, c, bs, x_train, y_tr, x_test, y_te, ts, bn_chunk_size=bn_chunk_size,
        eval_batch_size=eval_batch_size, loss=loss)
    return jax.vmap(evaluate, in_axes=(0, 0, _label_axis(y_train, "y_train"), _label_axis(y_test, "y_test")))(
        curves, batch_stats, y_train, y_test)


@functools.partial(jax.jit, static_argnames=("model", "bn_chunk_size", "eval_batch_size", "loss"))
def linear_barriers(model: models.Model, starts: Params, ends: Params, batch_stats: BatchStats, x_train, y_train,
                    x_test, y_test, ts=None, *, bn_chunk_size: int | None = None, eval_batch_size: int = 1000,
                    loss: losses.Loss = losses.cross_entropy) -> tuple[jax.Array, CurveMetrics]:
    """`linear_barrier` over P pairs (leading pair axis on starts, ends, batch_stats): (P,) and (P, T)."""
    segments = jax.vmap(lambda a, b: init_curve(a, b, num_bends=0))(starts, ends)
    metrics = evaluate_curves(model, segments, batch_stats, x_train, y_train, x_test, y_test, ts,
                              bn_chunk_size=bn_chunk_size, eval_batch_size=eval_batch_size, loss=loss)
    return mode_connectivity(metrics.train_err if loss.error else metrics.train_loss), metrics
