"""Training: one member's loss, step and loop as pure functions; the ensemble is `jit(vmap(...))` of them.

Optimiser by default as the paper: SGD with momentum (PyTorch convention, buf = m * buf + g) and L2 weight decay
added to the gradient (`OPTIMIZERS`: also 'adam' and 'adamw', or any optax transformation giving a descent
direction); learning-rate schedule 'step' (constant, x0.1 from 75% of training), 'cosine' or 'constant', after
an optional linear warm-up. The loss is a `losses.Loss` (cross-entropy by default); models with Dropout get a
per-step 'dropout' key. Batch size `FULL_BATCH` (0) trains full-batch: every step is the mean over the member's
whole subset (the training set weighted by its mask, one step per epoch, no shuffling), so members with
different data fractions still share one program.
Sharpness-aware minimisation (Foret et al. 2021) with a per-member radius `Hyper.sam_rho` (`sam_gradient`): the
gradient at theta + rho g / ||g|| (g the loss's gradient, weight decay then added at theta by the optimiser, as
the usual two-pass PyTorch implementation), about two gradient evaluations per step; BatchNorm statistics are
updated once per step, from the unperturbed forward pass; the reported minibatch loss is the unperturbed one.
Per-member hyperparameters (lr, weight decay, momentum, data fraction, label noise, SAM radius) are traced scalars, so
members that differ only in them share one compiled program. The step loop is `lax.scan` over epochs and
steps; a member whose loss or update turns non-finite stops updating and is flagged `diverged`.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from lljax import data, grid, losses, milestones, models, precision, registry, sharding
from lljax.errors import LLJaxError
from lljax.models import ModelSpec

SCHEDULES = ("step", "cosine", "constant")
FULL_BATCH = 0  # batch size of full-batch training (`--batch-sizes full`)


class Hyper(NamedTuple):
    """One member's dynamic hyperparameters (scalars; stacked to (M,) for an ensemble). `beta2`: Adam's
    second-moment decay, None for optax's default (0.999). `sam_rho`: the radius of sharpness-aware minimisation
    (`sam_gradient`), None for plain training (a program without SAM; a radius of 0 inside a SAM program gives
    the plain gradient)."""

    lr: jax.Array
    weight_decay: jax.Array
    momentum: jax.Array
    data_fraction: jax.Array
    label_noise: jax.Array
    beta2: jax.Array | None = None
    sam_rho: jax.Array | None = None


def _scale_by_adam(hyper: Hyper) -> optax.GradientTransformation:
    return optax.scale_by_adam(b1=hyper.momentum) if hyper.beta2 is None else \
        optax.scale_by_adam(b1=hyper.momentum, b2=hyper.beta2)


def sgd(hyper: Hyper) -> optax.GradientTransformation:
    """SGD direction with momentum and coupled L2 weight decay (torch.optim.SGD semantics); the step applies
    the scheduled learning rate, so the optimiser state holds no step counter of its own."""
    return optax.chain(optax.add_decayed_weights(hyper.weight_decay), optax.trace(decay=hyper.momentum))


def adam(hyper: Hyper) -> optax.GradientTransformation:
    """Adam's direction with coupled L2 weight decay (torch.optim.Adam semantics); `momentum` is beta1."""
    return optax.chain(optax.add_decayed_weights(hyper.weight_decay), _scale_by_adam(hyper))


def adamw(hyper: Hyper) -> optax.GradientTransformation:
    """AdamW: Adam's direction plus decoupled weight decay (scaled by the learning rate, as optax.adamw and
    torch.optim.AdamW); `momentum` is beta1, `beta2` beta2."""
    return optax.chain(_scale_by_adam(hyper), optax.add_decayed_weights(hyper.weight_decay))


# name -> (Hyper -> optax transformation giving a descent direction; the step scales it by -lr(step))
OPTIMIZERS: dict[str, Callable[[Hyper], optax.GradientTransformation]] = {"sgd": sgd, "adam": adam, "adamw": adamw}
Optimizer = str | Callable[[Hyper], optax.GradientTransformation] | optax.GradientTransformation


def direction(optimizer: Optimizer, hyper: Hyper) -> optax.GradientTransformation:
    """The transformation of a registered name, an import path, a `Hyper -> transformation` function, or a
    transformation used as it is for every member."""
    found = registry.resolve(optimizer, OPTIMIZERS, "optimizer")
    if isinstance(found, optax.GradientTransformation):
        return found
    if not callable(found):
        raise LLJaxError(f"optimizer {registry.describe(optimizer)!r} is neither an optax transformation nor a "
                         "function of the member's hyperparameters returning one")
    return found(hyper)


@dataclasses.dataclass(frozen=True)
class TrainSpec:
    """Static part of training (never stacked): architecture, batch size (`FULL_BATCH`: full-batch), length,
    schedule, data size, loss, optimiser (see `direction`), precision policy (`lljax.precision`), linear warm-up
    steps, the inputs' dtype (float32, or int32 tokens), and `eval_every` K > 0: training and test accuracy
    recorded every K steps inside the loop (`lljax.milestones`; evaluated in chunks of `eval_batch_size`)."""

    model: ModelSpec
    batch_size: int
    epochs: int
    num_train: int
    schedule: str = "step"
    loss: losses.Loss = losses.cross_entropy
    optimizer: Optimizer = "sgd"
    precision: str = "float32"
    warmup_steps: int = 0
    input_dtype: str = "float32"
    eval_every: int = 0
    eval_batch_size: int = 1000

    def __post_init__(self):
        precision.check(self.precision)
        if self.schedule not in SCHEDULES:
            raise LLJaxError(f"unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        if self.batch_size < 0:
            raise LLJaxError(f"batch size must be positive (or {FULL_BATCH}: full batch), got {self.batch_size}")
        if self.batch_size > self.num_train:
            raise LLJaxError(f"batch size {self.batch_size} is larger than the training set ({self.num_train})")
        if self.epochs <= 0:
            raise LLJaxError(f"epochs must be positive, got {self.epochs}")
        if self.warmup_steps < 0:
            raise LLJaxError(f"warm-up steps must be non-negative, got {self.warmup_steps}")
        if self.eval_every < 0:
            raise LLJaxError(f"eval_every must be non-negative, got {self.eval_every}")

    @property
    def full_batch(self) -> bool:
        return self.batch_size == FULL_BATCH

    @property
    def steps_per_epoch(self) -> int:
        return 1 if self.full_batch else self.num_train // self.batch_size

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch


class Member(NamedTuple):
    """Everything per-member that is fixed during training: hyperparameters, keys and training view."""

    hyper: Hyper
    shuffle_key: jax.Array
    view: data.View
    dropout_key: jax.Array


class MemberState(NamedTuple):
    params: Any
    batch_stats: Any
    opt_state: Any
    diverged: jax.Array  # () bool
    loss: jax.Array  # () float32, mean training loss of the last epoch run
    curves: milestones.Curves | None = None  # accuracies every eval_every steps (None: not recorded)


def learning_rate(spec: TrainSpec, base_lr, step) -> jax.Array:
    """The schedule's learning rate at global step `step` (0-based), times (step + 1) / warmup_steps during a
    linear warm-up."""
    frac = step / spec.total_steps
    if spec.warmup_steps:
        base_lr = base_lr * jnp.minimum(1.0, (step + 1) / spec.warmup_steps)
    if spec.schedule == "step":
        return base_lr * jnp.where(frac < 0.75, 1.0, 0.1)
    if spec.schedule == "cosine":
        return base_lr * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))
    return base_lr * jnp.ones_like(frac)


def init_member(spec: TrainSpec, key: jax.Array, hyper: Hyper, labels_N: jax.Array,
                input_shape: tuple[int, ...], view_key: jax.Array | None = None) -> tuple[MemberState, Member]:
    """Initial state and fixed inputs of one member from its seed key (streams: init, view, shuffle, dropout).
    `view_key`, if given, draws the training view (subset and noisy labels) instead of the member's own stream,
    so several members can share one view."""
    key_init, key_view, key_shuffle = jax.random.split(key, 3)
    key_view = key_view if view_key is None else view_key
    params, batch_stats = models.init(spec.model, key_init, input_shape, spec.input_dtype)
    view = data.training_view(key_view, labels_N, spec.model.num_classes, hyper.data_fraction,
                              hyper.label_noise)
    curves = milestones.empty(spec.total_steps // spec.eval_every) if spec.eval_every else None
    state = MemberState(params, batch_stats, direction(spec.optimizer, hyper).init(params), jnp.zeros((), bool),
                        jnp.full((), jnp.nan, jnp.float32), curves)
    return state, Member(hyper, key_shuffle, view, grid.stream(key, "dropout"))


def train_step(spec: TrainSpec, member: Member, state: MemberState, x_BX: jax.Array, y_B: jax.Array, step,
               weights_B: jax.Array | None = None) -> tuple[MemberState, jax.Array]:
    """SGD step number `step` (global, 0-based) on a minibatch (weighted by `weights_B` if given: full-batch
    training's subset mask); returns the new state and the minibatch loss (before the step)."""

    def loss(params):
        outputs, batch_stats = models.apply(spec.model, params, state.batch_stats, x_BX, train=True,
                                            rng=jax.random.fold_in(member.dropout_key, step),
                                            policy=spec.precision)
        return spec.loss.mean(outputs, y_B, weights_B), batch_stats

    (value, batch_stats), grads = jax.value_and_grad(loss, has_aux=True)(state.params)
    if member.hyper.sam_rho is not None:
        grads = sam_gradient(lambda p: loss(p)[0], state.params, grads, member.hyper.sam_rho)
    descent, opt_state = direction(spec.optimizer, member.hyper).update(grads, state.opt_state, state.params)
    updates = jax.tree.map(lambda d: -learning_rate(spec, member.hyper.lr, step) * d, descent)
    params = optax.apply_updates(state.params, updates)
    bad = state.diverged | ~jnp.isfinite(value) | ~jnp.isfinite(optax.tree.norm(updates))
    keep = lambda old, new: jax.tree.map(lambda o, n: jnp.where(bad, o, n), old, new)
    new = state._replace(params=keep(state.params, params), batch_stats=keep(state.batch_stats, batch_stats),
                         opt_state=keep(state.opt_state, opt_state), diverged=bad)
    return new, value


def sam_perturbation(grads, rho):
    """Sharpness-aware minimisation's ascent step eps = rho g / ||g|| (Foret et al. 2021; the norm over every
    parameter of the model), 0 where the gradient is 0 (or rho is)."""
    norm = optax.tree.norm(grads)
    scale = jnp.where(norm > 0, rho / jnp.where(norm > 0, norm, 1.0), 0.0)
    return jax.tree.map(lambda g: (scale * g).astype(g.dtype), grads)


def sam_gradient(loss: Callable[[Any], jax.Array], params, grads, rho):
    """The SAM gradient: of `loss` at params + eps (`sam_perturbation` of `grads`, the loss's gradient at params),
    on the same minibatch (and the same Dropout masks); exactly `grads` where rho is 0. The model's BatchNorm
    statistics are those of the unperturbed pass (the caller's), so they are updated once per step."""
    eps = sam_perturbation(grads, rho)
    perturbed = jax.grad(loss)(jax.tree.map(jnp.add, params, eps))
    return jax.tree.map(lambda g, h: jnp.where(rho == 0, g, h), grads, perturbed)


def train_epochs(spec: TrainSpec, state: MemberState, member: Member, x_train: jax.Array, first_epoch,
                 last_epoch, x_test: jax.Array | None = None, y_test: jax.Array | None = None) -> MemberState:
    """Run epochs [first_epoch, last_epoch) for one member (bounds may be traced, so every chunk of a run
    shares one compiled program); each epoch reshuffles the member's subset with `fold_in(shuffle_key, epoch)`,
    so a run split into chunks draws the same batches as one uninterrupted run. Full-batch: one step per epoch
    on the whole subset, nothing drawn. With `spec.eval_every` the accuracies on the member's training view and
    on (x_test, y_test) are recorded every eval_every steps (`milestones.record`)."""
    B = spec.batch_size

    def checked(state, step):  # after step `step` (0-based, global)
        if not spec.eval_every:
            return state
        accuracy = lambda x, y, w: evaluate(spec.model, state.params, state.batch_stats, x, y, w,
                                            spec.eval_batch_size, spec.loss)[1]
        measure = lambda: (accuracy(x_train, member.view.labels, member.view.mask), accuracy(x_test, y_test, None))
        return state._replace(curves=milestones.record(state.curves, step, spec.eval_every, measure))

    if spec.full_batch:
        def full_step(e, state):
            state, value = train_step(spec, member, state, x_train, member.view.labels, e, member.view.mask)
            return checked(state, e)._replace(loss=value)

        return jax.lax.fori_loop(first_epoch, last_epoch, full_step, state)

    def epoch(e, state):
        order = data.epoch_order(jax.random.fold_in(member.shuffle_key, e), member.view)

        def step(state, j):
            idx = data.batch_indices(order, member.view.size, j, B)
            step_ = e * spec.steps_per_epoch + j
            state, value = train_step(spec, member, state, x_train[idx], member.view.labels[idx], step_)
            return checked(state, step_), value

        state, losses = jax.lax.scan(step, state, jnp.arange(spec.steps_per_epoch))
        return state._replace(loss=losses.mean())

    return jax.lax.fori_loop(first_epoch, last_epoch, epoch, state)


def evaluate(model: models.Model, params, batch_stats, x_NX: jax.Array, y_N: jax.Array, weights_N=None,
             batch_size: int = 1000, loss: losses.Loss = losses.cross_entropy) -> tuple[jax.Array, jax.Array]:
    """Weighted mean loss and accuracy (1 - error; NaN without an error metric) over a dataset, BatchNorm in
    inference mode, in chunks (`losses.evaluate`)."""
    dtype = jnp.result_type(jax.tree.leaves(params)[0].dtype, jnp.float32)
    total_loss, total_error, weight = losses.evaluate(
        lambda x: models.apply(model, params, batch_stats, x)[0], x_NX, y_N, loss, weights_N, batch_size, dtype)
    accuracy = (weight - total_error) / weight if loss.error else jnp.full((), jnp.nan, dtype)
    return total_loss / weight, accuracy


# ---------------------------------------------------------------------------------- ensembles (vmapped once)

# XLA:CPU compiles the initialisation (the initialisers' and the training view's threefry streams, unrolled, for
# every parameter) at LLVM optimisation level 1 instead of 2: 3-4x quicker to compile (an MLP's took longer than
# its training program), run once, and bit for bit the same weights and views (tests/test_train.py compares
# them with the default level for every built-in model and the NNX and Equinox adapters). Level 0 is not: it
# rounds the truncated normal's transcendental functions differently. Other backends keep their defaults.
INIT_COMPILER_OPTIONS = {"cpu": {"xla_backend_optimization_level": 1}}


def init_members(spec, keys, hyper, labels_N, input_shape, view_keys=None):
    """`init_member` vmapped (jitted by `init_program`)."""
    return jax.vmap(init_member, in_axes=(None, 0, 0, None, None, 0))(
        spec, keys, hyper, labels_N, input_shape, view_keys)


_INIT_PROGRAMS = {backend: jax.jit(init_members, static_argnames=("spec", "input_shape"), compiler_options=options)
                  for backend, options in INIT_COMPILER_OPTIONS.items()}
_init_default = jax.jit(init_members, static_argnames=("spec", "input_shape"))


def init_program(traced: bool = False):
    """The jitted initialisation of the default backend (`init_ensemble` runs it); `traced`: inside another
    jit or `eval_shape`, where only a top-level program takes compiler options."""
    return _init_default if traced else _INIT_PROGRAMS.get(jax.default_backend(), _init_default)


def init_ensemble(spec: TrainSpec, keys: jax.Array, hyper: Hyper, labels_N: jax.Array,
                  input_shape: tuple[int, ...], view_keys: jax.Array | None = None) -> tuple[MemberState, Member]:
    """`init_member` over members: keys (M,), hyper fields (M,), optional view_keys (M,); one compiled program
    per spec and shapes (`init_program`)."""
    traced = any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves((keys, hyper, labels_N, view_keys)))
    return init_program(traced)(spec, keys, hyper, labels_N, input_shape, view_keys)


@functools.partial(jax.jit, static_argnames=("spec", "passes", "mesh"), donate_argnames=("state",))
def train_ensemble(spec: TrainSpec, state: MemberState, member: Member, x_train: jax.Array, first_epoch,
                   last_epoch, passes: int = 1, mesh: Mesh | None = None, x_test: jax.Array | None = None,
                   y_test: jax.Array | None = None) -> MemberState:
    """`train_epochs` over members; the dataset (and the test set, for `spec.eval_every`) and epoch bounds are
    shared, the rest has a member axis (M,).

    `passes` > 1 trains each device's members in that many slices one after another inside the program,
    member i in slice i % passes: on a CPU a smaller slice's working set stays in cache (`sharding.cpu_passes`);
    for the `map` convolution strategy each slice's convolutions are grouped over that slice only.
    With `mesh` (members sharded over its 'members' axis, M a multiple of its size) the program is a
    `shard_map`: each device trains its own members and nothing moves between devices (no grouped convolution
    is gathered). Same numbers as one pass up to float rounding (kernels differ with the batch).
    """
    count = jax.tree.leaves(member)[0].shape[0]
    devices = 1 if mesh is None else mesh.size
    if passes < 1 or count % (passes * devices):
        raise LLJaxError(f"passes must be a positive divisor of the {count // devices} members per device, "
                         f"got {passes}")
    if spec.eval_every and (x_test is None or y_test is None):
        raise LLJaxError("training with eval_every needs the test set (x_test, y_test)")
    local = sharding.per_device(functools.partial(_train_local, spec, passes=passes), mesh,
                                (0, 0, None, None, None, None, None))
    return local(state, member, x_train, first_epoch, last_epoch, x_test, y_test)


def _train_local(spec, state, member, x_train, first_epoch, last_epoch, x_test, y_test, passes):
    count = jax.tree.leaves(member)[0].shape[0]
    run = jax.vmap(train_epochs, in_axes=(None, 0, 0, None, None, None, None, None))
    if passes == 1:
        return run(spec, state, member, x_train, first_epoch, last_epoch, x_test, y_test)
    split = lambda a: jnp.swapaxes(a.reshape(count // passes, passes, *a.shape[1:]), 0, 1)  # (P, M / P, ...)
    join = lambda a: jnp.swapaxes(a, 0, 1).reshape(count, *a.shape[2:])
    trained = jax.lax.map(lambda sm: run(spec, *sm, x_train, first_epoch, last_epoch, x_test, y_test),
                          jax.tree.map(split, (state, member)))
    return jax.tree.map(join, trained)


@functools.partial(jax.jit, static_argnames=("model", "batch_size", "loss"))
def evaluate_ensemble(model: models.Model, params, batch_stats, x_NX, labels_MN, weights_MN=None,
                      batch_size: int = 1000, loss: losses.Loss = losses.cross_entropy):
    """(M,) losses and accuracies; labels and weights are per member (M, N, ...) (a member's own view)."""
    return jax.vmap(evaluate, in_axes=(None, 0, 0, None, 0, 0, None, None))(
        model, params, batch_stats, x_NX, labels_MN, weights_MN, batch_size, loss)
