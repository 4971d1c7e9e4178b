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

from lljax import checkpoint, data, ensemble, models, similarity, train
from lljax.errors import LLJaxError

# Metric families a run can compute; 'loss' (training and test loss/accuracy) is always computed.
METRIC_FAMILIES = ("loss",)
PAIR_FAMILIES = ("cka", "l2")


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
    metrics: tuple[str, ...] = ("loss",)
    seed: int = 0
    eval_batch_size: int = 1000
    cka_samples: int = 768  # mixup probe inputs for CKA (the paper's 768)

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


PRESETS: dict[str, dict[str, Any]] = {
    # ~1-2 minutes on a 2-core CPU: the paper's picture in miniature (width x learning rate).
    "quick": dict(model="mlp", widths=(4, 16, 64), lrs=(0.01, 0.05, 0.25), batch_sizes=(64,), seeds=2, epochs=20),
    # <= 10 minutes on a 2-core CPU.
    "default": dict(model="mlp", widths=(2, 4, 8, 16, 32, 64, 128), lrs=(0.005, 0.02, 0.08, 0.32),
                    batch_sizes=(64,), seeds=3, epochs=60),
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


# ------------------------------------------------------------------------------------------ one group

@dataclasses.dataclass
class GroupContext:
    """What metric families see of a trained group."""

    config: Config
    spec: train.TrainSpec
    dataset: data.Dataset
    members: list[ensemble.MemberConfig]
    state: train.MemberState
    member: train.Member
    key: jax.Array


def train_group(config: Config, dataset: data.Dataset, group: ensemble.Group,
                members: Sequence[ensemble.MemberConfig], ckpt_dir: Path | None,
                progress: Callable[[float, str], None] = lambda amount, message: None,
                checkpoint_seconds: float = 60.0) -> GroupContext:
    """Train one group, resuming from its newest checkpoint in `ckpt_dir` if any, and saving one there at most
    every `checkpoint_seconds` (training is deterministic per epoch, so where it resumes does not matter)."""
    spec = train.TrainSpec(models.ModelSpec(config.model, group.width, dataset.num_classes, config.depth),
                           group.batch_size, config.epochs, len(dataset.y_train), config.schedule)
    group_members = [members[i] for i in group.members]
    column = lambda name: jnp.asarray([getattr(m, name) for m in group_members], jnp.float32)
    hyper = train.Hyper(column("lr"), column("weight_decay"), column("momentum"), column("data_fraction"),
                        column("label_noise"))
    keys = jax.vmap(member_key, in_axes=(None, 0))(config.seed, jnp.asarray([m.seed for m in group_members]))
    view_keys = None
    if config.shared_data:  # the paper's setting: seeds differ in initialisation and batch order only
        view_keys = jnp.stack([jax.random.fold_in(jax.random.key(config.seed), VIEW_STREAM)] * len(group_members))
    state, member = train.init_ensemble(spec, keys, hyper, jnp.asarray(dataset.y_train),
                                        dataset.x_train.shape[1:], view_keys)
    x_train = jnp.asarray(dataset.x_train)
    every = max(1, math.ceil(config.epochs / 10))  # epochs per call: the progress bar's resolution
    epoch, last_save = 0, time.time()
    if ckpt_dir is not None:
        step = checkpoint.latest_step(ckpt_dir)
        if step is not None:
            state, epoch = checkpoint.restore(ckpt_dir, step, state), step
            progress(step, f"group {group.index}: resumed at epoch {step}")
    label = f"width {group.width}, batch {group.batch_size}, {len(group_members)} members"
    while epoch < config.epochs:
        stop = min(epoch + every, config.epochs)
        state = train.train_ensemble(spec, state, member, x_train, epoch, stop)
        jax.block_until_ready(state)
        if ckpt_dir is not None and stop < config.epochs and time.time() - last_save > checkpoint_seconds:
            checkpoint.save(ckpt_dir, stop, state)
            last_save = time.time()
        progress(stop - epoch, f"group {group.index} ({label}) epoch {stop}/{config.epochs}")
        epoch = stop
    return GroupContext(config, spec, dataset, group_members, state, member,
                        jax.random.fold_in(jax.random.key(config.seed), 10_000 + group.index))


def loss_metrics(ctx: GroupContext) -> dict[str, np.ndarray]:
    """Per-member training loss/accuracy on the member's own view and labels, test loss/accuracy on the clean
    test set; BatchNorm in inference mode; accuracies in [0, 1]."""
    ds, s = ctx.dataset, ctx.state
    train_loss, train_acc = train.evaluate_ensemble(ctx.spec.model, s.params, s.batch_stats,
                                                    jnp.asarray(ds.x_train), ctx.member.view.labels,
                                                    ctx.member.view.mask, ctx.config.eval_batch_size)
    y_test = jnp.broadcast_to(jnp.asarray(ds.y_test), (len(ctx.members), len(ds.y_test)))
    test_loss, test_acc = train.evaluate_ensemble(ctx.spec.model, s.params, s.batch_stats, jnp.asarray(ds.x_test),
                                                  y_test, None, ctx.config.eval_batch_size)
    return {"train_loss": train_loss, "train_acc": train_acc, "test_loss": test_loss, "test_acc": test_acc,
            "diverged": s.diverged}


@functools.partial(jax.jit, static_argnums=0)
def ensemble_logits(spec: models.ModelSpec, params, batch_stats, x_NX) -> jax.Array:
    """(M, N, C) logits of every member on the same inputs, BatchNorm in inference mode."""
    return jax.vmap(lambda p, s: models.apply(spec, p, s, x_NX)[0])(params, batch_stats)


def cka_metrics(ctx: GroupContext, pairs: np.ndarray) -> dict[str, np.ndarray]:
    """Linear CKA of the two members' softmax outputs and logits on the paper's probe: training inputs mixed up
    with lambda ~ Beta(16, 16) (Yang et al. 2021)."""
    x = jnp.asarray(ctx.dataset.x_train)
    probe = similarity.mixup_inputs(jax.random.fold_in(ctx.key, 1), x, num=min(ctx.config.cka_samples, len(x)))
    logits = ensemble_logits(ctx.spec.model, ctx.state.params, ctx.state.batch_stats, probe)
    matrices = similarity.all_pairs_output_cka(logits)
    a, b = pairs[:, 0], pairs[:, 1]
    return {"cka_softmax": matrices["softmax"][a, b], "cka_logits": matrices["logits"][a, b]}


def l2_metrics(ctx: GroupContext, pairs: np.ndarray) -> dict[str, np.ndarray]:
    """L2 distance between the two members' parameters."""
    return {"l2": similarity.all_pairs_l2(ctx.state.params)[pairs[:, 0], pairs[:, 1]]}


# name -> (function of a trained group returning per-member arrays (M, ...), relative cost for the progress bar)
MEMBER_METRICS: dict[str, tuple[Callable[[GroupContext], dict], float]] = {"loss": (loss_metrics, 0.02)}
# name -> (function of a trained group and its pairs (P, 2) of member positions returning per-pair arrays, cost)
PAIR_METRICS: dict[str, tuple[Callable[[GroupContext, np.ndarray], dict], float]] = {
    "cka": (cka_metrics, 0.01), "l2": (l2_metrics, 0.005)}


def measure_group(ctx: GroupContext, metrics: Sequence[str],
                  progress: Callable[[float, str], None] = lambda amount, message: None) -> dict[str, np.ndarray]:
    """Every requested metric of a trained group: 'member/<name>' (M, ...) and 'pair/<name>' (P, ...) arrays,
    plus 'pair/a', 'pair/b' (positions of the two members within the group)."""
    out: dict[str, np.ndarray] = {}
    for name in ("loss", *[m for m in metrics if m in MEMBER_METRICS and m != "loss"]):
        fn, cost = MEMBER_METRICS[name]
        out.update({f"member/{k}": np.asarray(v) for k, v in fn(ctx).items()})
        progress(cost * ctx.config.epochs, f"{name} metrics")
    pairs = np.asarray(ensemble.pairs_within_points(ctx.members, range(len(ctx.members))), np.int32).reshape(-1, 2)
    out["pair/a"], out["pair/b"] = pairs[:, 0], pairs[:, 1]
    for name in [m for m in metrics if m in PAIR_METRICS]:
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
    prepare_out_dir(config, out_dir)
    members = ensemble.grid_members(config.knob_values(), config.seeds)
    groups = ensemble.group_members(members)
    metric_cost = sum(MEMBER_METRICS[m][1] if m in MEMBER_METRICS else PAIR_METRICS[m][1]
                      for m in set(config.metrics) | {"loss"})
    bar = Progress(len(groups) * config.epochs * (1 + metric_cost), enabled=progress)
    (out_dir / "groups").mkdir(exist_ok=True)
    group_metrics = []
    for group in groups:
        path = out_dir / "groups" / f"group-{group.index}.npz"
        if path.exists():
            group_metrics.append(checkpoint.load_arrays(path))
            bar.update(config.epochs * (1 + metric_cost), f"group {group.index}: already done")
            continue
        ckpt_dir = out_dir / "checkpoints" / f"group-{group.index}"
        ctx = train_group(config, dataset, group, members, ckpt_dir, bar.update, checkpoint_seconds)
        checkpoint.save(ckpt_dir, config.epochs, ctx.state)  # the trained ensemble, for resuming and re-analysis
        metrics = measure_group(ctx, config.metrics, bar.update)
        checkpoint.save_arrays(path, metrics)
        group_metrics.append(metrics)
    bar.close()
    outcome = RunResult(config, members, groups, group_metrics, time.time() - start)
    results.write_all(outcome, out_dir)
    return outcome
