"""The pipeline: configuration -> grid of members -> groups -> train -> metrics -> results folder.

`run(config, out_dir)` does a whole study. Each group (members sharing static shapes) is trained as one vmapped
program, checkpointed every few epochs, then measured; its metrics are saved as soon as it finishes, so a run
that is killed resumes where it stopped and produces the same numbers as an uninterrupted one.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lljax import checkpoint, curves, data, ensemble, hessian, models, phases, sharding, similarity, train
from lljax.errors import LLJaxError

# Metric families a run can compute; 'loss' (training and test loss/accuracy) is always computed.
METRIC_FAMILIES = ("loss", "hessian")
PAIR_FAMILIES = ("curves", "cka", "l2")


@dataclasses.dataclass(frozen=True)
class Config:
    """A whole study. List-valued fields are swept; the grid is their cartesian product x `seeds`."""

    dataset: str = "mnist1d"
    data_dir: str | None = None
    model: str = "mlp"
    depth: int = 2
    widths: tuple[int, ...] = (8, 32, 128)
    batch_sizes: tuple[int, ...] = (64,)
    lrs: tuple[float, ...] = (0.05,)
    weight_decays: tuple[float, ...] = (5e-4,)
    momentum: tuple[float, ...] = (0.9,)
    label_noise: tuple[float, ...] = (0.0,)
    data_fractions: tuple[float, ...] = (1.0,)
    seeds: int = 2
    shared_data: bool = True  # all seeds at a grid point see one training view (subset and noisy labels)
    epochs: int = 30
    schedule: str = "step"
    metrics: tuple[str, ...] = METRIC_FAMILIES + PAIR_FAMILIES
    seed: int = 0
    eval_batch_size: int = 1000
    max_pairs: int | None = None  # pairs of seeds per grid point for the pair metrics (None: all)
    cka_samples: int = 768  # mixup probe inputs for CKA (the paper's 768)
    hessian_samples: int = 1000  # training samples of the Hessian (the paper's 200 gives noisy estimates)
    hessian_top_k: int = 3
    hessian_density_runs: int = 4  # stochastic Lanczos quadrature runs for the spectral density
    curve_epochs: int | None = None  # curve-fitting epochs (None: the training epochs)
    curve_lr: float = 0.2  # measured on MNIST-1D MLPs: 0.02 leaves a 16% barrier that 0.2 removes (README)
    curve_batch_size: int = 128
    curve_points: int = 21  # t grid on which curves are evaluated (the reference code used 5)
    phase_train_loss: float = phases.Thresholds.train_loss
    phase_mc_band: float = phases.Thresholds.mc_band
    phase_cka: float = phases.Thresholds.cka
    max_members_per_chunk: int | None = None  # cap on members per compiled call (None: sized from memory)

    @property
    def thresholds(self) -> phases.Thresholds:
        return phases.Thresholds(self.phase_train_loss, self.phase_mc_band, self.phase_cka)

    @property
    def hessian(self) -> hessian.HessianConfig:
        return hessian.HessianConfig(num_samples=self.hessian_samples, top_k=self.hessian_top_k,
                                     density_runs=self.hessian_density_runs)

    def knob_values(self) -> dict[str, tuple]:
        return {"width": self.widths, "batch_size": self.batch_sizes, "lr": self.lrs,
                "weight_decay": self.weight_decays, "momentum": self.momentum,
                "data_fraction": self.data_fractions, "label_noise": self.label_noise}

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict) -> "Config":
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(values) - set(fields)
        if unknown:
            raise LLJaxError(f"unknown configuration field(s): {', '.join(sorted(unknown))}")
        tuples = {k: tuple(v) for k, v in values.items() if isinstance(v, list)}
        return cls(**{**values, **tuples})


PAPER_WIDTHS = (2, 3, 4, 6, 8, 11, 16, 23, 32, 45, 64, 91, 128)
PAPER_BATCH_SIZES = (16, 19, 24, 27, 32, 44, 64, 92, 128, 180, 256, 364, 512, 724, 1024)

PRESETS: dict[str, dict[str, Any]] = {
    # <= 2 minutes on a 2-core CPU: the paper's picture in miniature (width x learning rate).
    "quick": dict(model="mlp", widths=(8, 32, 128, 256), lrs=(0.03, 0.1, 0.3), batch_sizes=(64,), seeds=2,
                  epochs=40, curve_epochs=60, hessian_samples=500),
    # <= 10 minutes on a 2-core CPU.
    "default": dict(model="mlp", widths=(4, 8, 16, 32, 64, 128, 256), lrs=(0.01, 0.03, 0.1, 0.3), batch_sizes=(64,),
                    seeds=3, epochs=60),
    # The paper's main grid (Yang et al. 2021 Figure 2): ResNet18 on CIFAR-10 (--data-dir), 13 widths x 15 batch
    # sizes x 5 seeds = 975 models, 100 epochs, every metric. For GPUs; see docs/distributed.md.
    "paper": dict(dataset="cifar10", model="resnet18", widths=PAPER_WIDTHS, batch_sizes=PAPER_BATCH_SIZES,
                  lrs=(0.05,), weight_decays=(5e-4,), seeds=5, epochs=100, curve_lr=0.05, eval_batch_size=500),
}


def validate(config: Config) -> None:
    """Every check that needs no data: raises LLJaxError naming the first problem."""
    if config.dataset not in data.DATASETS:
        raise LLJaxError(f"unknown dataset {config.dataset!r}; choose one of {', '.join(data.DATASETS)}")
    if config.model not in models.MODELS:
        raise LLJaxError(f"unknown model {config.model!r}; choose one of {', '.join(models.MODELS)}")
    if config.schedule not in train.SCHEDULES:
        raise LLJaxError(f"unknown schedule {config.schedule!r}; choose one of {', '.join(train.SCHEDULES)}")
    for name, values in config.knob_values().items():
        if len(values) == 0:
            raise LLJaxError(f"empty grid: no values for {name}")
        if len(set(values)) != len(values):
            raise LLJaxError(f"repeated values for {name}: {list(values)}")
    for w in config.widths:
        if not float(w).is_integer() or w <= 0:
            raise LLJaxError(f"width must be a positive integer, got {w}")
    for b in config.batch_sizes:
        if not float(b).is_integer() or b <= 0:
            raise LLJaxError(f"batch size must be a positive integer, got {b}")
    for name, values, low_open in (("data fraction", config.data_fractions, True),
                                   ("label-noise fraction", config.label_noise, False),
                                   ("momentum", config.momentum, False)):
        for v in values:
            if not (0 < v <= 1 if low_open else 0 <= v <= 1) or not math.isfinite(v):
                raise LLJaxError(f"{name} must be in {'(0, 1]' if low_open else '[0, 1]'}, got {v}")
    for name, values in (("learning rate", config.lrs), ("weight decay", config.weight_decays)):
        for v in values:
            if not math.isfinite(v) or v < 0 or (name == "learning rate" and v == 0):
                raise LLJaxError(f"{name} must be {'positive' if name == 'learning rate' else 'non-negative'}, "
                                 f"got {v}")
    if config.seeds < 1:
        raise LLJaxError(f"seeds must be at least 1, got {config.seeds}")
    if config.epochs < 1:
        raise LLJaxError(f"epochs must be at least 1, got {config.epochs}")
    if config.depth < 1:
        raise LLJaxError(f"depth must be at least 1, got {config.depth}")
    known = METRIC_FAMILIES + PAIR_FAMILIES
    for m in config.metrics:
        if m not in known:
            raise LLJaxError(f"unknown metric {m!r}; choose from {', '.join(known)}")
    config.thresholds, config.hessian  # noqa: B018 -- both validate their fields
    positive = {"eval_batch_size": config.eval_batch_size, "cka_samples": config.cka_samples,
                "curve_batch_size": config.curve_batch_size, "curve_epochs": config.curve_epochs,
                "max_pairs": config.max_pairs, "max_members_per_chunk": config.max_members_per_chunk}
    for name, value in positive.items():
        if value is not None and (not float(value).is_integer() or value < 1):
            raise LLJaxError(f"{name.replace('_', ' ')} must be a positive integer, got {value}")
    if config.curve_points < 2:
        raise LLJaxError(f"curve points must be at least 2 (the two endpoints), got {config.curve_points}")
    if not math.isfinite(config.curve_lr) or config.curve_lr <= 0:
        raise LLJaxError(f"curve learning rate must be positive, got {config.curve_lr}")


def validate_with_data(config: Config, dataset: data.Dataset) -> None:
    """Checks that need the dataset's size."""
    n = len(dataset.y_train)
    smallest = int(data.subset_size(n, min(config.data_fractions)))
    for b in config.batch_sizes:
        if b > smallest:
            where = "the training set" if smallest == n else f"the smallest training subset ({smallest} examples)"
            raise LLJaxError(f"batch size {b} is larger than {where} ({n} examples in {dataset.name})"
                             if smallest == n else f"batch size {b} is larger than {where}")


VIEW_STREAM = 2**31 - 1  # fold_in index of the shared training view, apart from every seed index


def member_key(base_seed: int, seed_index) -> jax.Array:
    """The key of seed index s: the same at every grid point, so points differ only by their knobs."""
    return jax.random.fold_in(jax.random.key(base_seed), seed_index)


# ------------------------------------------------------------------------------------------ progress

class Progress:
    """A one-line progress bar on stderr over weighted units of work (redrawn in place on a terminal)."""

    def __init__(self, total: float, stream=sys.stderr, enabled: bool = True):
        self.total, self.done, self.stream, self.enabled = max(total, 1e-9), 0.0, stream, enabled
        self.start = time.time()
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self.last_print = 0.0

    def update(self, amount: float, message: str) -> None:
        self.done += amount
        if not self.enabled:
            return
        frac = min(self.done / self.total, 1.0)
        elapsed = time.time() - self.start
        eta = elapsed / frac - elapsed if frac > 0.02 else float("nan")
        bar = "#" * int(30 * frac) + "." * (30 - int(30 * frac))
        eta_text = f"eta {eta:4.0f}s" if math.isfinite(eta) else "eta   ?"
        line = f"[{bar}] {100 * frac:5.1f}% {elapsed:5.0f}s {eta_text}  {message}"
        if self.tty:
            self.stream.write("\r" + line[:150].ljust(150))
        elif time.time() - self.last_print > 5 or frac >= 1:
            self.stream.write(line + "\n")
            self.last_print = time.time()
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()


# ------------------------------------------------------------------------------------------ placement

@dataclasses.dataclass(frozen=True)
class Placement:
    """Where a group's ensemble programs run: the member (or pair) axis sharded over a mesh of every device,
    at most `cap` members per call (None: as many as memory allows, see `chunk_for`)."""

    mesh: Any
    cap: int | None = None

    def chunk_for(self, count: int, estimate: Callable[[], int] | None = None) -> int:
        """Members per call for `count` members. With no user cap: all of them on a CPU (host memory is large
        and shared), else as many as `sharding.chunk_size` fits in device memory by `estimate()`, the bytes
        one member needs."""
        if self.cap is not None:
            return min(self.cap, count)
        if estimate is None or jax.default_backend() == "cpu":
            return count
        return min(count, sharding.chunk_size(estimate(), num_devices=self.mesh.size))

    def passes_for(self, count: int, params) -> int:
        """Sequential slices for `train.train_ensemble` when training `count` members (a multiple of the mesh
        size) with parameters `params` (leaves (M, ...)): cache-sized slices on a CPU, one pass elsewhere."""
        if jax.default_backend() != "cpu":
            return 1
        return sharding.cpu_passes(count // self.mesh.size, sharding.nbytes(params) // count)

    def map(self, fn: Callable, *member_args, chunk: int | None = None):
        """`fn(*member_args)` (every argument with a leading member axis; bind shared inputs in `fn`) over
        chunks of members sharded on the mesh; host numpy outputs, member for member equal to one call."""
        count = sharding.member_count(member_args)
        return sharding.map_chunks(fn, member_args, chunk or self.chunk_for(count), self.mesh)


def default_placement(cap: int | None = None) -> Placement:
    return Placement(sharding.member_mesh(), cap)


def use_all_cpu_cores() -> None:
    """Split the CPU into one JAX device per core, so sharding the member axis uses every core (XLA:CPU runs
    one program on a single device mostly on one thread for small models). Must run before JAX's backend
    starts; a no-op afterwards or when the user set the device count."""
    try:
        if not os.environ.get("JAX_NUM_CPU_DEVICES") and \
                "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
            jax.config.update("jax_num_cpu_devices", os.cpu_count() or 1)
    except RuntimeError:  # the backend is already initialised: keep its devices
        pass


# ------------------------------------------------------------------------------------------ one group

@dataclasses.dataclass
class GroupContext:
    """What metric families see of a trained group: state and member views as host arrays (M, ...)."""

    config: Config
    spec: train.TrainSpec
    dataset: data.Dataset
    members: list[ensemble.MemberConfig]
    state: train.MemberState
    member: train.Member
    key: jax.Array
    placement: Placement
    chunk: int  # members per compiled call, as in training (memory)

    def map(self, fn: Callable, *member_args):
        """`Placement.map` in chunks of this group's size (metric programs need about what training needs)."""
        return self.placement.map(fn, *member_args, chunk=self.chunk)


def _train_chunk(spec, keys, hyper, view_keys, labels, x_train, placement, ckpt_dir, epochs, progress, label,
                 checkpoint_seconds):
    """Train one chunk of members (padded to the mesh) to `epochs`, resuming from and saving checkpoints."""
    state, member = train.init_ensemble(spec, keys, hyper, labels, x_train.shape[1:], view_keys)
    state, member = sharding.shard_members((state, member), placement.mesh)
    passes = placement.passes_for(sharding.member_count(member), state.params)
    every = max(1, math.ceil(epochs / 10))  # epochs per call: the progress bar's resolution
    epoch, last_save = 0, time.time()
    step = checkpoint.latest_step(ckpt_dir) if ckpt_dir is not None else None
    step = int(sharding.from_lead(np.int64(-1 if step is None else step)))  # several hosts: process 0's view
    step = None if step < 0 else step
    if step is not None:
        state = sharding.shard_members(checkpoint.restore(ckpt_dir, step, state), placement.mesh)
        epoch = step
        progress(step, f"{label}: resumed at epoch {step}")
    while epoch < epochs:
        stop = min(epoch + every, epochs)
        state = train.train_ensemble(spec, state, member, x_train, epoch, stop, passes)
        jax.block_until_ready(state)
        if ckpt_dir is not None and (stop == epochs or time.time() - last_save > checkpoint_seconds):
            checkpoint.save(ckpt_dir, stop, state)  # the last one keeps the trained ensemble for re-analysis
            last_save = time.time()
        progress(stop - epoch, f"{label} epoch {stop}/{epochs}")
        epoch = stop
    return sharding.to_host((state, member))


def train_group(config: Config, dataset: data.Dataset, group: ensemble.Group,
                members: Sequence[ensemble.MemberConfig], ckpt_dir: Path | None,
                progress: Callable[[float, str], None] = lambda amount, message: None,
                checkpoint_seconds: float = 60.0, placement: Placement | None = None) -> GroupContext:
    """Train one group, members sharded over every device and split into chunks that fit memory, resuming
    each chunk from its newest checkpoint in `ckpt_dir` if any and saving one at most every
    `checkpoint_seconds` (training is deterministic per epoch, so where it resumes does not matter)."""
    placement = placement or default_placement(config.max_members_per_chunk)
    spec = train.TrainSpec(models.ModelSpec(config.model, group.width, dataset.num_classes, config.depth),
                           group.batch_size, config.epochs, len(dataset.y_train), config.schedule)
    group_members = [members[i] for i in group.members]
    count = len(group_members)
    column = lambda name: np.asarray([getattr(m, name) for m in group_members], np.float32)
    hyper = train.Hyper(column("lr"), column("weight_decay"), column("momentum"), column("data_fraction"),
                        column("label_noise"))
    keys = jax.vmap(member_key, in_axes=(None, 0))(config.seed, jnp.asarray([m.seed for m in group_members]))
    if config.shared_data:  # the paper's setting: seeds differ in initialisation and batch order only
        view_keys = jnp.stack([jax.random.fold_in(jax.random.key(config.seed), VIEW_STREAM)] * count)
    else:
        view_keys = jax.vmap(lambda k: jax.random.fold_in(k, VIEW_STREAM))(keys)
    labels = jnp.asarray(dataset.y_train)
    x_train = sharding.replicate(jnp.asarray(dataset.x_train), placement.mesh)

    def estimate():  # bytes per member of one training epoch, from XLA's memory analysis (compiles, runs nothing)
        one = jax.tree.map(lambda a: a[:1], (keys, hyper, view_keys))
        state, member = jax.eval_shape(lambda k, h, v: train.init_ensemble(spec, k, h, labels, x_train.shape[1:],
                                                                           v), *one)
        return sharding.bytes_per_member_estimate(
            lambda s, m, x: train.train_ensemble(spec, s, m, x, 0, 1), state, member, x_train, in_axes=(0, 0, None))

    chunk = placement.chunk_for(count, estimate)
    size = -(-chunk // placement.mesh.size) * placement.mesh.size  # every chunk the same size: one program
    parts = []
    for c, start in enumerate(range(0, count, size)):
        piece, real = sharding.pad_members(jax.tree.map(lambda a: a[start:start + size], (keys, hyper, view_keys)),
                                           size)
        folder = None if ckpt_dir is None else (ckpt_dir if size >= count else ckpt_dir / f"chunk-{c}")
        label = f"group {group.index} (width {group.width}, batch {group.batch_size}, {count} members" + \
            (f", chunk {c + 1}/{-(-count // size)})" if size < count else ")")
        parts.append(sharding.unpad(_train_chunk(spec, *piece, labels, x_train, placement, folder, config.epochs,
                                                 progress, label, checkpoint_seconds), real))
    join = lambda *a: jnp.concatenate(a) if isinstance(a[0], jax.Array) else np.concatenate(a)  # keys stay JAX
    state, member = jax.tree.map(join, *parts) if len(parts) > 1 else parts[0]
    return GroupContext(config, spec, dataset, group_members, state, member,
                        jax.random.fold_in(jax.random.key(config.seed), 10_000 + group.index), placement, size)


# ------------------------------------------------------------------------------------------ metric families

def loss_metrics(ctx: GroupContext) -> dict[str, np.ndarray]:
    """Per-member training loss/accuracy on the member's own view and labels, test loss/accuracy on the clean
    test set; BatchNorm in inference mode; accuracies in [0, 1]."""
    ds, s, mesh = ctx.dataset, ctx.state, ctx.placement.mesh
    x_train, x_test = (sharding.replicate(jnp.asarray(x), mesh) for x in (ds.x_train, ds.x_test))
    y_test = np.broadcast_to(ds.y_test, (len(ctx.members), len(ds.y_test)))

    def evaluate(x):
        return lambda p, bs, y, w: train.evaluate_ensemble(ctx.spec.model, p, bs, x, y, w, ctx.config.eval_batch_size)

    train_loss, train_acc = ctx.map(evaluate(x_train), s.params, s.batch_stats, ctx.member.view.labels,
                                    ctx.member.view.mask)
    test_loss, test_acc = ctx.map(lambda p, bs, y: evaluate(x_test)(p, bs, y, None), s.params, s.batch_stats,
                                  y_test)
    return {"train_loss": train_loss, "train_acc": train_acc, "test_loss": test_loss, "test_acc": test_acc,
            "diverged": np.asarray(s.diverged)}


def weighted_loss(spec: models.ModelSpec, batch_stats) -> Callable:
    """loss(params, (x_SX, y_S, w_S)): the w-weighted mean cross-entropy, BatchNorm in inference mode."""
    def loss(params, batch):
        x, y, w = batch
        ce = models.cross_entropy(models.apply(spec, params, batch_stats, x)[0], y)
        return jnp.sum(w * ce) / jnp.sum(w)
    return loss


@functools.partial(jax.jit, static_argnums=(0, 1))
def _hessian_program(spec: models.ModelSpec, config: hessian.HessianConfig, params, batch_stats, x_MSX, y_MS,
                     w_MS, keys_M) -> hessian.HessianMetrics:
    one = lambda p, bs, x, y, w, k: hessian.hessian_metrics(weighted_loss(spec, bs), p, (x, y, w), k, config)
    return jax.vmap(one)(params, batch_stats, x_MSX, y_MS, w_MS, keys_M)


def member_samples(view: data.View, count: int) -> tuple[np.ndarray, np.ndarray]:
    """(M, S) indices of the first S = min(count, N) examples of each member's subset (a random subset of it,
    wrapping around when the subset is smaller) and their (M, S) labels."""
    order, size, labels = np.asarray(view.order), np.asarray(view.size), np.asarray(view.labels)
    positions = np.arange(min(count, order.shape[1]))[None, :] % size[:, None]
    idx = np.take_along_axis(order, positions, axis=1)
    return idx, np.take_along_axis(labels, idx, axis=1)


def hessian_metrics(ctx: GroupContext) -> dict[str, np.ndarray]:
    """Top-k eigenvalues, trace (with its standard error) and spectral density of every member's training-loss
    Hessian on `hessian_samples` examples of its own view and labels (BatchNorm in inference mode)."""
    config = ctx.config.hessian
    idx, y = member_samples(ctx.member.view, config.num_samples)
    size = np.asarray(ctx.member.view.size)
    # a subset smaller than the sample count is used once, not repeated: later copies get weight 0
    w = (np.arange(idx.shape[1])[None, :] < size[:, None]).astype(np.float32)
    keys = jax.random.split(jax.random.fold_in(ctx.key, 2), len(ctx.members))
    out = ctx.map(functools.partial(_hessian_program, ctx.spec.model, config), ctx.state.params,
                  ctx.state.batch_stats, ctx.dataset.x_train[idx], y, w, keys)
    eig = np.asarray(out.top_eigenvalues)
    columns = {"hessian_top_eig": eig[:, 0], **{f"hessian_eig_{i + 1}": eig[:, i] for i in range(1, eig.shape[1])},
               "hessian_top_residual": np.asarray(out.top_residuals)[:, 0],
               "hessian_trace": np.asarray(out.trace), "hessian_trace_se": np.asarray(out.trace_se)}
    return {**columns, "hessian_density_nodes": np.asarray(out.density_nodes),
            "hessian_density_weights": np.asarray(out.density_weights)}


@functools.partial(jax.jit, static_argnames=("apply_fn", "shared_x", "epochs", "batch_size", "num_ts",
                                             "eval_batch_size"))
def _curve_program(apply_fn, starts, ends, batch_stats, x_train, y_train, x_test, y_test, keys, lr, weight_decay,
                   *, shared_x: bool, epochs: int, batch_size: int, num_ts: int, eval_batch_size: int):
    """For P pairs: fit a one-bend Bezier curve and evaluate it and the straight segment on `num_ts` points."""
    ts = jnp.asarray(curves.default_ts(num_ts), jnp.float32)

    def one(a, b, bs, x, y, k, lr_, wd):
        curve, losses = curves.fit_curve(apply_fn, curves.init_curve(a, b, num_bends=1), x, y, k, batch_stats=bs,
                                         epochs=epochs, batch_size=batch_size, lr=lr_, weight_decay=wd)
        evaluate = lambda c: curves.evaluate_curve(apply_fn, c, bs, x, y, x_test, y_test, ts,
                                                   bn_chunk_size=eval_batch_size, eval_batch_size=eval_batch_size)
        return evaluate(curve), evaluate(curves.init_curve(a, b, num_bends=0)), losses

    x_axis = None if shared_x else 0
    return jax.vmap(one, in_axes=(0, 0, 0, x_axis, 0, 0, 0, 0))(
        starts, ends, batch_stats, x_train, y_train, keys, lr, weight_decay)


def curve_metrics(ctx: GroupContext, pairs: np.ndarray) -> dict[str, np.ndarray]:
    """Mode connectivity of every pair (Yang et al. 2021): a quadratic Bezier curve between the two members,
    its bend fitted on member a's training view and labels (SGD momentum 0.9 at `curve_lr`, the members'
    weight decay), evaluated with BatchNorm statistics recomputed at each t. mc on training error (the
    paper's), on training loss and on test error; `barrier_linear` is mc of the straight segment."""
    cfg, ds = ctx.config, ctx.dataset
    view = ctx.member.view
    order, size, labels = (np.asarray(v) for v in (view.order, view.size, view.labels))
    a, b = pairs[:, 0], pairs[:, 1]
    take = lambda tree, i: jax.tree.map(lambda leaf: np.asarray(leaf)[i], tree)
    out: dict[str, np.ndarray] = {}
    x_test, y_test = jnp.asarray(ds.x_test), jnp.asarray(ds.y_test)
    keys = jax.random.split(jax.random.fold_in(ctx.key, 3), len(pairs))
    for n in np.unique(size[a]):  # pairs whose subsets have the same size share one program
        sel = np.flatnonzero(size[a] == n)
        idx = order[a[sel], :n]
        shared_x = bool((idx == idx[:1]).all())
        x = jnp.asarray(ds.x_train[idx[0]]) if shared_x else ds.x_train[idx]
        y = np.take_along_axis(labels[a[sel]], idx, axis=1)
        wd = np.asarray([ctx.members[i].weight_decay for i in a[sel]], np.float32)
        lr = np.full(len(sel), cfg.curve_lr, np.float32)
        program = functools.partial(
            _curve_program, curves.model_apply(ctx.spec.model), x_test=x_test, y_test=y_test, shared_x=shared_x,
            epochs=cfg.curve_epochs or cfg.epochs, batch_size=min(cfg.curve_batch_size, int(n)),
            num_ts=cfg.curve_points, eval_batch_size=cfg.eval_batch_size)

        def call(s, e, bs, y_, k, lr_, wd_, *per_pair_x):  # x is a member argument only when pairs differ in it
            return program(s, e, bs, per_pair_x[0] if per_pair_x else x, y_, keys=k, lr=lr_, weight_decay=wd_)

        fitted, line, losses = ctx.map(call, take(ctx.state.params, a[sel]), take(ctx.state.params, b[sel]),
                                       take(ctx.state.batch_stats, a[sel]), y, keys[sel], lr, wd,
                                       *([] if shared_x else [x]))
        values = {**{f"curve_{k}": getattr(fitted, k) for k in ("train_err", "train_loss", "test_err", "test_loss")},
                  **{f"line_{k}": getattr(line, k) for k in ("train_err", "train_loss", "test_err")},
                  "curve_fit_loss": losses}
        for name, value in values.items():
            out.setdefault(name, np.zeros((len(pairs), *np.shape(value)[1:]), np.float32))[sel] = value
    mc = lambda e: np.asarray(curves.mode_connectivity(e))
    return {"mc": mc(out["curve_train_err"]), "mc_loss": mc(out["curve_train_loss"]),
            "mc_test": mc(out["curve_test_err"]), "barrier_linear": mc(out["line_train_err"]),
            "barrier_linear_loss": mc(out["line_train_loss"]), **out}


@functools.partial(jax.jit, static_argnums=0)
def ensemble_logits(spec: models.ModelSpec, params, batch_stats, x_NX) -> jax.Array:
    """(M, N, C) logits of every member on the same inputs, BatchNorm in inference mode."""
    return jax.vmap(lambda p, s: models.apply(spec, p, s, x_NX)[0])(params, batch_stats)


def cka_metrics(ctx: GroupContext, pairs: np.ndarray) -> dict[str, np.ndarray]:
    """Linear CKA of the two members' softmax outputs and logits on the paper's probe: training inputs mixed up
    with lambda ~ Beta(16, 16) (Yang et al. 2021)."""
    x = jnp.asarray(ctx.dataset.x_train)
    probe = similarity.mixup_inputs(jax.random.fold_in(ctx.key, 1), x, num=min(ctx.config.cka_samples, len(x)))
    probe = sharding.replicate(probe, ctx.placement.mesh)
    logits = ctx.map(lambda p, bs: ensemble_logits(ctx.spec.model, p, bs, probe), ctx.state.params,
                     ctx.state.batch_stats)
    matrices = similarity.all_pairs_output_cka(logits)
    a, b = pairs[:, 0], pairs[:, 1]
    return {"cka_softmax": np.asarray(matrices["softmax"])[a, b], "cka_logits": np.asarray(matrices["logits"])[a, b]}


def l2_metrics(ctx: GroupContext, pairs: np.ndarray) -> dict[str, np.ndarray]:
    """L2 distance between the two members' parameters."""
    return {"l2": np.asarray(similarity.all_pairs_l2(ctx.state.params))[pairs[:, 0], pairs[:, 1]]}


# name -> (function of a trained group returning per-member arrays (M, ...), relative cost for the progress bar
# in units of training)
MEMBER_METRICS: dict[str, tuple[Callable[[GroupContext], dict], float]] = {
    "loss": (loss_metrics, 0.02), "hessian": (hessian_metrics, 0.1)}
# name -> (function of a trained group and its pairs (P, 2) of member positions returning per-pair arrays, cost)
PAIR_METRICS: dict[str, tuple[Callable[[GroupContext, np.ndarray], dict], float]] = {
    "curves": (curve_metrics, 1.0), "cka": (cka_metrics, 0.01), "l2": (l2_metrics, 0.005)}


def measure_group(ctx: GroupContext, metrics: Sequence[str],
                  progress: Callable[[float, str], None] = lambda amount, message: None) -> dict[str, np.ndarray]:
    """Every requested metric of a trained group: 'member/<name>' (M, ...) and 'pair/<name>' (P, ...) arrays,
    plus 'pair/a', 'pair/b' (positions of the two members within the group)."""
    out: dict[str, np.ndarray] = {}
    for name in ("loss", *[m for m in metrics if m in MEMBER_METRICS and m != "loss"]):
        fn, cost = MEMBER_METRICS[name]
        out.update({f"member/{k}": np.asarray(v) for k, v in fn(ctx).items()})
        progress(cost * ctx.config.epochs, f"{name} metrics")
    pairs = np.asarray(ensemble.pairs_within_points(ctx.members, range(len(ctx.members)), ctx.config.max_pairs),
                       np.int32).reshape(-1, 2)
    out["pair/a"], out["pair/b"] = pairs[:, 0], pairs[:, 1]
    for name in [m for m in PAIR_METRICS if m in metrics]:
        fn, cost = PAIR_METRICS[name]
        if len(pairs):
            out.update({f"pair/{k}": np.asarray(v) for k, v in fn(ctx, pairs).items()})
        progress(cost * ctx.config.epochs, f"{name} metrics")
    return out


# ------------------------------------------------------------------------------------------ the run

def prepare_out_dir(config: Config, out_dir: Path) -> None:
    """Create the results folder, or accept an existing one holding the same configuration (to resume);
    refuse a folder with another configuration or foreign content."""
    config_path = out_dir / "config.json"
    if out_dir.exists():
        if not out_dir.is_dir():
            raise LLJaxError(f"output path {out_dir} exists and is not a folder")
        if config_path.exists():
            try:
                previous = Config.from_dict(json.loads(config_path.read_text()))
            except (ValueError, TypeError) as e:
                raise LLJaxError(f"{config_path} is unreadable ({e}); use a new --out folder")
            if previous != config:
                changed = [f.name for f in dataclasses.fields(Config)
                           if getattr(previous, f.name) != getattr(config, f.name)]
                raise LLJaxError(f"{out_dir} holds a run with a different configuration ({', '.join(changed)} "
                                 "differ); use a new --out folder or the same settings to resume")
            return
        if any(out_dir.iterdir()):
            raise LLJaxError(f"output folder {out_dir} is not empty and holds no lljax run; use a new --out folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint.write_atomic(config_path, config.to_json() + "\n")


def prepare_shared_out_dir(config: Config, out_dir: Path) -> None:
    """`prepare_out_dir` on process 0; with several processes, every other one then checks that it sees the
    same folder (storage shared by every host, as orbax's multi-host checkpoints need), and all of them raise
    when any check fails (no process is left waiting for the others)."""
    if jax.process_count() == 1:
        return prepare_out_dir(config, out_dir)
    error = None
    if sharding.is_lead_process():
        try:
            prepare_out_dir(config, out_dir)
        except LLJaxError as e:
            error = e
    if not sharding.agree(error is None):
        raise error or LLJaxError(f"process 0 refused the results folder {out_dir}; its error says why")
    try:
        seen = Config.from_dict(json.loads((out_dir / "config.json").read_text())) == config
    except (OSError, ValueError, TypeError, LLJaxError):
        seen = False
    if not sharding.agree(seen):
        where = "" if seen else f": process {jax.process_index()} does not find the config.json process 0 wrote"
        raise LLJaxError(f"the results folder {out_dir} is not the same folder on every host{where}; put --out "
                         "on storage every host shares")


def enable_compilation_cache() -> None:
    """JAX's persistent compilation cache in the user cache folder, so repeated runs skip compilation."""
    cache = data.default_cache_dir() / "jax"
    cache.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(cache))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


@dataclasses.dataclass
class RunResult:
    config: Config
    members: list[ensemble.MemberConfig]
    groups: list[ensemble.Group]
    group_metrics: list[dict[str, np.ndarray]]
    seconds: float


def run(config: Config, out_dir: str | os.PathLike, progress: bool = True, dataset: data.Dataset | None = None,
        checkpoint_seconds: float = 60.0) -> RunResult:
    """Run (or resume) a study into `out_dir` and write every output there. Bad input raises LLJaxError before
    anything is created. `dataset` overrides loading `config.dataset` (tests, custom data); training state is
    checkpointed at most every `checkpoint_seconds`."""
    from lljax import results  # figures and tables; imported here to keep the library import light

    start = time.time()
    validate(config)
    dataset = dataset or data.load_dataset(config.dataset, config.data_dir)
    validate_with_data(config, dataset)
    out_dir = Path(out_dir)
    prepare_shared_out_dir(config, out_dir)
    lead = sharding.is_lead_process()  # several hosts: all compute, process 0 writes files and prints
    members = ensemble.grid_members(config.knob_values(), config.seeds)
    groups = ensemble.group_members(members)
    metric_cost = sum(MEMBER_METRICS[m][1] if m in MEMBER_METRICS else PAIR_METRICS[m][1]
                      for m in set(config.metrics) | {"loss"})
    bar = Progress(len(groups) * config.epochs * (1 + metric_cost), enabled=progress and lead)
    (out_dir / "groups").mkdir(exist_ok=True)
    placement = default_placement(config.max_members_per_chunk)
    paths = [out_dir / "groups" / f"group-{group.index}.npz" for group in groups]
    done = sharding.from_lead(np.asarray([path.exists() for path in paths]))
    group_metrics = []
    for group, path, finished in zip(groups, paths, done):
        if finished:
            group_metrics.append(checkpoint.load_arrays(path))
            bar.update(config.epochs * (1 + metric_cost), f"group {group.index}: already done")
            continue
        ckpt_dir = out_dir / "checkpoints" / f"group-{group.index}"
        ctx = train_group(config, dataset, group, members, ckpt_dir, bar.update, checkpoint_seconds, placement)
        metrics = measure_group(ctx, config.metrics, bar.update)
        if lead:
            checkpoint.save_arrays(path, metrics)
        group_metrics.append(metrics)
    bar.close()
    outcome = RunResult(config, members, groups, group_metrics, time.time() - start)
    if lead:
        results.write_all(outcome, out_dir)
    return outcome
