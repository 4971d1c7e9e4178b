"""The pipeline: configuration -> grid of members -> groups -> train -> metric families -> results folder.

`run(config, out_dir)` does a whole study. Each group (members sharing static shapes) is trained as one vmapped
program, checkpointed every few epochs, then measured by every requested metric family (each family's
function for one member or pair, vmapped, chunked and sharded here); its metrics are saved as soon as it
finishes, so a run that is killed resumes where it stopped and produces the same numbers as an uninterrupted
one. The model, loss, optimiser and dataset may be given as Python objects (`run(..., model=factory,
dataset=..., loss=..., optimizer=...)`) or named by the configuration.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lljax import config as configs
from lljax import data, losses, metrics, models, pytrees, registry, sharding, store, tables, timings, tracking
from lljax import conv, milestones, probe, shards, train
from lljax import grid as grids
from lljax.config import Config
from lljax.errors import LLJaxError, one_line
from lljax.metrics import Context, Family, Member, Shared
from lljax.progress import Progress


@dataclasses.dataclass(frozen=True)
class Parts:
    """The run's model factory (a registered name or a factory), loss and optimiser, resolved and checked, and
    the further factory arguments (`models.ModelSpec.extras`: the transformer options set, what the data says)."""

    model: Any
    loss: losses.Loss
    optimizer: Any
    depth: int | None = None
    extras: tuple = ()

    def spec(self, width: int, num_classes: int) -> models.ModelSpec:
        return models.ModelSpec(self.model, width, num_classes, self.depth, extras=self.extras)

    def loss_of(self, config: Config, group: grids.Group) -> losses.Loss:
        """The group's loss: its own where the loss is a knob (`Config.loss_is_knob`), else the run's."""
        return self.loss if group.loss is None else config.loss_named(group.loss)


def model_extras(config: Config, dataset: data.Dataset) -> tuple:
    """Factory arguments from the data (vocab_size and seq_len of token inputs, per_token for per-token targets)
    and the transformer options set (`models.TransformerOptions`)."""
    extras = dict(config.transformer.extras())
    if dataset.is_tokens:
        extras.update(vocab_size=int(dataset.vocab_size), seq_len=int(dataset.x_train.shape[1]))
    if dataset.per_token:
        extras["per_token"] = True
    return tuple(sorted(extras.items()))


def hyper_columns(config: Config, members: Sequence[grids.MemberConfig]) -> train.Hyper:
    """The members' dynamic hyperparameters, (M,) each (beta2 only when the configuration sets it, the SAM radius
    only when the run uses SAM: `Config.uses_sam`)."""
    column = lambda name: np.asarray([getattr(m, name) for m in members], np.float32)
    beta2 = None if config.beta2 is None else np.full(len(members), config.beta2, np.float32)
    sam_rho = column("sam_rho") if config.uses_sam else None
    return train.Hyper(column("lr"), column("weight_decay"), column("momentum"), column("data_fraction"),
                       column("label_noise"), beta2, sam_rho)


def train_spec(config: Config, parts: Parts, dataset: data.Dataset, width: int, batch_size: int,
               loss: losses.Loss | None = None) -> train.TrainSpec:
    """The group's static training settings; `loss` (default: the run's) is the group's loss."""
    return train.TrainSpec(parts.spec(width, dataset.num_classes), batch_size, config.epochs, len(dataset.y_train),
                           config.schedule, parts.loss if loss is None else loss, parts.optimizer, config.precision,
                           config.warmup_steps,
                           str(dataset.x_train.dtype), config.milestones.every,
                           config.eval_batch_size if config.milestones.every else 1000)


def milestone_arrays(config: Config, g: "TrainedGroup") -> dict[str, np.ndarray]:
    """The group's accuracy milestones (`lljax.milestones`): 'member/steps_to_fit', 'member/steps_to_generalise'
    and 'member/step_budget' (M,), the curves 'member/acc_curve_train' and 'member/acc_curve_test' (M, C); {}
    when not recorded."""
    if g.state.curves is None:
        return {}
    every, budget, threshold = g.spec.eval_every, g.spec.total_steps, config.milestones.threshold
    train_acc, test_acc = (np.asarray(c, np.float64) for c in g.state.curves)
    steps = lambda curve: milestones.steps_to_threshold(curve, every, budget, threshold)
    return {"member/steps_to_fit": steps(train_acc), "member/steps_to_generalise": steps(test_acc),
            "member/step_budget": np.full(len(train_acc), budget, np.int64),
            "member/acc_curve_train": train_acc, "member/acc_curve_test": test_acc,
            "meta/milestone_every": np.asarray(every)}


# ------------------------------------------------------------------------------------------ one group

@dataclasses.dataclass
class TrainedGroup:
    """A trained group as the metric families see it: state and member views as host arrays (M, ...)."""

    config: Config
    spec: train.TrainSpec
    dataset: data.Dataset
    members: list[grids.MemberConfig]
    state: train.MemberState
    member: train.Member
    key: jax.Array
    placement: sharding.Placement
    chunk: int  # members per compiled call, as in training (memory)
    snapshots: Callable[[int], tuple] | None = None  # epoch -> (params, batch_stats, diverged) of every member

    def map(self, fn: Callable, *member_args):
        """`Placement.map` in chunks of this group's size (metric programs need about what training needs)."""
        return self.placement.map(fn, *member_args, chunk=self.chunk)

    def at_epoch(self, epoch: int) -> "TrainedGroup":
        """The group as it was after `epoch` epochs (a tracked epoch: `tracking`)."""
        params, batch_stats, diverged = self.snapshots(epoch)
        return dataclasses.replace(self, state=self.state._replace(params=params, batch_stats=batch_stats,
                                                                   diverged=diverged))


def _snapshot(state: train.MemberState) -> tuple:
    return state.params, state.batch_stats, state.diverged


def _train_chunk(spec, keys, hyper, view_keys, labels, x_train, placement, ckpt_dir, epochs, progress, label,
                 checkpoint_seconds, track_epochs=(), map_chunk=1, test=(None, None)):
    """Train one chunk of members (padded to the mesh) to `epochs`, resuming from and saving checkpoints, and
    snapshot it at the tracked epochs before the last (on disk under ckpt_dir/track, in memory without a
    folder). `test`: (x_test, y_test) for `spec.eval_every`. Returns the trained (state, member) as host arrays
    and `epoch -> snapshot` (host arrays)."""
    count = sharding.member_count(keys)
    # the initialisation's own program traced once (its call below reuses the trace)
    abstract = train.init_program().eval_shape(spec, keys, hyper, labels, x_train.shape[1:], view_keys)
    passes = placement.passes_for(count, abstract[0].params, spec.model.conv, map_chunk)
    compiling = _compile_training(spec, abstract, x_train, passes, placement.mesh, test)
    state, member = train.init_ensemble(spec, keys, hyper, labels, x_train.shape[1:], view_keys)
    state, member = sharding.shard_members((state, member), placement.mesh)
    run = _training_program(compiling, spec, passes, placement.mesh)
    every = max(1, math.ceil(epochs / 10))  # epochs per call: the progress bar's resolution
    epoch, last_save = 0, time.time()
    step = store.latest_step(ckpt_dir) if ckpt_dir is not None else None
    step = int(sharding.from_lead(np.int64(-1 if step is None else step)))  # several hosts: process 0's view
    step = None if step < 0 else step
    if step is not None:
        state = sharding.shard_members(store.restore(ckpt_dir, step, state), placement.mesh)
        epoch = step
        progress(step, f"{label}: resumed at epoch {step}")
    snapshot_dir = None if ckpt_dir is None else ckpt_dir / "track"
    targets = [e for e in track_epochs if e < epochs]
    in_memory: dict[int, tuple] = {}
    while epoch < epochs:
        stop = min(epoch + every, epochs, *[e for e in targets if e > epoch])  # a tracked epoch is a stop
        state = run(state, member, x_train, epoch, stop, *test)
        jax.block_until_ready(state)
        if stop in targets:  # saved before any later checkpoint: a resumed run past `stop` finds it
            if snapshot_dir is None:
                in_memory[stop] = sharding.to_host(_snapshot(state))
            else:
                store.save_snapshot(snapshot_dir, stop, _snapshot(state))
        if ckpt_dir is not None and (stop == epochs or time.time() - last_save > checkpoint_seconds):
            store.save(ckpt_dir, stop, state)  # the last one keeps the trained ensemble for re-analysis
            last_save = time.time()
        progress(stop - epoch, f"{label} epoch {stop}/{epochs}")
        epoch = stop
    like = _snapshot(state)
    load = lambda e: in_memory[e] if e in in_memory else sharding.to_host(store.restore(snapshot_dir, e, like))
    return sharding.to_host((state, member)), load


@functools.partial(jax.jit, static_argnums=(0, 2))
def _member_keys(seed: int, seeds, shared_data: bool):
    """(keys, view_keys) (M,) of members with seed indices `seeds` (M,): one program (the same keys as deriving
    them one operation at a time, which compiled four)."""
    keys = jax.vmap(grids.member_key, in_axes=(None, 0))(seed, seeds)
    if shared_data:  # the paper's setting: seeds differ in initialisation and batch order only
        return keys, jnp.stack([grids.stream(jax.random.key(seed), "view")] * len(seeds))
    return keys, jax.vmap(lambda k: grids.stream(k, "view"))(keys)


def _compile_training(spec, abstract, x_train, passes, mesh, test) -> concurrent.futures.Future | None:
    """The group's training program compiling in a thread while the main thread compiles and runs the
    initialisation (two single-threaded XLA compilations at once); from the initialised ensemble's shapes
    (`abstract`), placed as `shard_members` places it. None with several processes."""
    if jax.process_count() > 1:
        return None
    placed = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(sharding.MEMBER_AXIS))
    state, member = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=placed), abstract)
    compile_ = lambda: train.train_ensemble.lower(spec, state, member, x_train, 0, 1, passes, mesh, *test).compile()
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="lljax-compile")
    future = executor.submit(compile_)
    executor.shutdown(wait=False)
    return future


def _training_program(compiling: concurrent.futures.Future | None, spec, passes, mesh) -> Callable:
    """`train.train_ensemble` for the chunk: the program compiled ahead (`_compile_training`) while the arguments
    are those it was compiled for, else the jitted function (which compiles it)."""
    jitted = lambda state, member, x, first, last, *test: train.train_ensemble(spec, state, member, x, first, last,
                                                                               passes, mesh, *test)
    if compiling is None:
        return jitted
    compiled = compiling.result()

    def run(state, member, x, first, last, *test):
        try:
            return compiled(state, member, x, first, last, *test)
        except (TypeError, ValueError):  # arguments placed or typed otherwise than compiled for
            return jitted(state, member, x, first, last, *test)

    return run


def train_group(config: Config, dataset: data.Dataset, group: grids.Group, members: Sequence[grids.MemberConfig],
                ckpt_dir: Path | None, progress: Callable[[float, str], None] = lambda amount, message: None,
                checkpoint_seconds: float = 60.0, placement: sharding.Placement | None = None,
                parts: Parts | None = None) -> TrainedGroup:
    """Train one group, members sharded over every device and split into chunks that fit memory, resuming
    each chunk from its newest checkpoint in `ckpt_dir` if any and saving one at most every
    `checkpoint_seconds` (training is deterministic per epoch, so where it resumes does not matter), and
    snapshot it at the tracked epochs (`TrainedGroup.at_epoch`)."""
    placement = placement or sharding.Placement.default(config.max_members_per_chunk)
    parts = parts or dataclasses.replace(resolve_parts(config), extras=model_extras(config, dataset))
    spec = train_spec(config, parts, dataset, group.width, group.batch_size, parts.loss_of(config, group))
    group_members = [members[i] for i in group.members]
    count = len(group_members)
    hyper = hyper_columns(config, group_members)
    keys, view_keys = _member_keys(config.seed, np.asarray([m.seed for m in group_members], np.int32),
                                   config.shared_data)
    labels = jnp.asarray(dataset.y_train)
    x_train = sharding.replicate(jnp.asarray(dataset.x_train), placement.mesh)
    test = sharding.replicate((jnp.asarray(dataset.x_test), jnp.asarray(dataset.y_test)), placement.mesh) \
        if spec.eval_every else (None, None)

    def estimate(spec):  # bytes per member of one training epoch, from XLA's memory analysis (runs nothing)
        one = jax.tree.map(lambda a: a[:1], (keys, hyper, view_keys))
        state, member = jax.eval_shape(lambda k, h, v: train.init_ensemble(spec, k, h, labels, x_train.shape[1:],
                                                                           v), *one)
        return sharding.bytes_per_member_estimate(
            lambda s, m, x: train.train_ensemble(spec, s, m, x, 0, 1, x_test=test[0], y_test=test[1]), state, member,
            x_train, in_axes=(0, 0, None))

    def chunk_size(spec):  # members per call, every chunk the same size (one program) and a multiple of the mesh
        chunk = placement.chunk_for(count, lambda: estimate(spec))
        return -(-chunk // placement.mesh.size) * placement.mesh.size

    with_conv = lambda name: dataclasses.replace(spec, model=dataclasses.replace(spec.model, conv=name))
    spec = with_conv(config.conv)
    size = chunk_size(spec)
    strategy = group_strategy(config, spec, size, dataset, placement, ckpt_dir)
    if strategy != spec.model.conv:
        spec = with_conv(strategy)
        if strategy == "im2col" != conv.concrete(config.conv):  # its patches need more memory than lax's kernel
            size = min(size, chunk_size(spec))
    pieces, loaders = [], []
    track_epochs = tracking.tracked_epochs(config)
    for c, start in enumerate(range(0, count, size)):
        piece, real = sharding.pad_members(jax.tree.map(lambda a: a[start:start + size], (keys, hyper, view_keys)),
                                           size)
        folder = None if ckpt_dir is None else (ckpt_dir if size >= count else ckpt_dir / f"chunk-{c}")
        label = f"group {group.index} (width {group.width}, batch {group.batch_size}" + \
            (f", {group.loss}" if group.loss else "") + f", {count} members" + \
            (f", chunk {c + 1}/{-(-count // size)})" if size < count else ")")
        trained, load = _train_chunk(spec, *piece, labels, x_train, placement, folder, config.epochs, progress,
                                     label, checkpoint_seconds, track_epochs, config.conv_chunk, test)
        pieces.append(sharding.unpad(trained, real))
        loaders.append(lambda e, load=load, real=real: sharding.unpad(load(e), real))
    join = lambda *a: jnp.concatenate(a) if isinstance(a[0], jax.Array) else np.concatenate(a)  # keys stay JAX
    gather = lambda parts: jax.tree.map(join, *parts) if len(parts) > 1 else parts[0]
    state, member = gather(pieces)
    return TrainedGroup(config, spec, dataset, group_members, state, member,
                        grids.group_key(config.seed, group.index), placement, size,
                        lambda e: gather([load(e) for load in loaders]))


def group_strategy(config: Config, spec: train.TrainSpec, members: int, dataset: data.Dataset,
                   placement: sharding.Placement, ckpt_dir: Path | None) -> str:
    """The group's convolution strategy: --conv, or what `auto` resolves to (`probe.choose`); kept beside the
    group's checkpoints, so a resumed run trains with the strategy it started with. Every process takes the
    lead process's choice."""
    saved = None if ckpt_dir is None else ckpt_dir / "conv.txt"
    if config.conv != "auto":
        return config.conv
    if saved is not None and saved.is_file():
        strategy = saved.read_text().strip()
    else:
        strategy = probe.choose(spec, members, dataset.x_train, dataset.y_train, placement, config.conv_probe,
                                config.conv_chunk)
    strategy = conv.CONCRETE[int(sharding.from_lead(np.int64(conv.CONCRETE.index(strategy))))]
    if saved is not None and sharding.is_lead_process():
        saved.parent.mkdir(parents=True, exist_ok=True)
        saved.write_text(strategy)
    return strategy


# ------------------------------------------------------------------------------------------ metric families

@functools.partial(jax.jit, static_argnums=(0, 1))
def _family_program(compute: Callable, ctx: Context, shared: Shared, *per_member):
    """A family's function for one member (pair) vmapped over the leading axis of `per_member`. Sharded by
    XLA's propagation, not `sharding.per_device` as training is: a shard_map of the curves family's program
    crashes XLA:CPU (segmentation fault, jax 0.11.2 with 2 CPU devices)."""
    return jax.vmap(lambda *args: compute(ctx, shared, *args))(*per_member)


def family_context(family: Family, g: TrainedGroup) -> Context:
    return Context(g.spec.model, g.spec.loss, g.config.options(family.name), g.config.epochs,
                   g.config.eval_batch_size)


def shared_inputs(g: TrainedGroup) -> Shared:
    """The arrays every member of the group sees, replicated on every device."""
    ds = g.dataset
    return sharding.replicate(Shared(jnp.asarray(ds.x_train), jnp.asarray(ds.x_test), jnp.asarray(ds.y_test)),
                              g.placement.mesh)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _family_keys(group_key: jax.Array, stream_name: str, count: int) -> tuple[jax.Array, jax.Array]:
    """A family's key (its named stream of the group's key) and `count` keys split from it, in one program."""
    key = grids.stream(group_key, stream_name)
    return key, jax.random.split(key, count)


def measure_family(family: Family, g: TrainedGroup, tuples: np.ndarray, shared: Shared | None = None
                   ) -> dict[str, np.ndarray]:
    """Every output of one family for a trained group: (M, ...) arrays for a member family, (P, ...) for a
    pair (quad) family over `tuples` (P, 2) ((Q, 4)) of member positions (ignored by a member family). Keys
    come from the family's named stream; `shared` defaults to `shared_inputs(g)`."""
    count = len(g.members) if family.kind == "member" else len(tuples)
    if count == 0:
        return {}
    ctx = family_context(family, g)
    if family.skip is not None and family.skip(ctx):
        return {}
    key, keys = _family_keys(g.key, family.stream_name, count)
    shared = shared_inputs(g) if shared is None else shared
    if family.prepare is not None:
        shared = shared._replace(extra=sharding.replicate(family.prepare(ctx, shared, key), g.placement.mesh))
    if not family.sharded:  # a host callback cannot be partitioned over devices: run on one device
        shared = jax.device_put(sharding.to_host(shared), jax.local_devices()[0])
    s = g.state
    member = Member(s.params, s.batch_stats, g.member.view, g.member.hyper, np.asarray(s.diverged))
    take = lambda tree, i: jax.tree.map(lambda leaf: leaf[i], tree)
    args = (member,) if family.kind == "member" else tuple(take(member, column) for column in tuples.T)
    first = args[0]
    sizes = np.asarray(first.view.size) if family.static_subset else np.zeros(count, int)
    out: dict[str, np.ndarray] = {}
    for n in np.unique(sizes):  # members (pairs) whose subsets differ in size get their own static context
        sel = np.flatnonzero(sizes == n)
        c = dataclasses.replace(ctx, subset_size=int(n)) if family.static_subset else ctx
        program = lambda *a: _family_program(family.compute, c, shared, *a)
        # every member (pair) at once: the arrays as they are (indexing device arrays compiles a gather)
        chosen = (*args, keys) if len(sel) == count else (*take(args, sel), keys[sel])
        with jax.enable_x64(True) if family.x64 else contextlib.nullcontext():
            if family.sharded:
                values = g.map(program, *chosen)
            else:
                values = sharding.map_chunks(program, chosen, g.chunk)
        for name, value in values.items():
            value = np.asarray(value)
            out.setdefault(name, np.zeros((count, *value.shape[1:]), value.dtype))[sel] = value
    columns = family.column_names(ctx)
    missing = [c for c in columns if c not in out]
    if missing:
        raise LLJaxError(f"metric family {family.name!r} declares column(s) {', '.join(missing)} it does not return")
    return {name: out[name] for name in (*columns, *[k for k in out if k not in columns])}  # the declared order


def measure_group(g: TrainedGroup, families: Sequence[Family],
                  progress: Callable[[float, str], None] = lambda amount, message: None) -> dict[str, np.ndarray]:
    """Every requested family of a trained group: 'member/<name>' (M, ...), 'pair/<name>' (P, ...) and
    'quad/<name>' (Q, ...) arrays, plus 'pair/a', 'pair/b' (positions of the two members within the group) and,
    with a quad family, 'quad/members' (Q, 4)."""
    positions = range(len(g.members))
    pairs = np.asarray(grids.pairs_within_points(g.members, positions, g.config.max_pairs), np.int32).reshape(-1, 2)
    quads = np.asarray(grids.quads_within_points(g.members, positions), np.int32).reshape(-1, 4)
    out: dict[str, np.ndarray] = {"pair/a": pairs[:, 0], "pair/b": pairs[:, 1]}
    if any(family.kind == "quad" for family in families):
        out["quad/members"] = quads
    tuples = {"member": None, "pair": pairs, "quad": quads}
    shared = shared_inputs(g)
    for family in families:
        with timings.section(f"measure/{family.name}"), one_line(f"metric family {family.name!r} failed"):
            values = measure_family(family, g, tuples[family.kind], shared)
        out.update({f"{family.kind}/{k}": np.asarray(v) for k, v in values.items()})
        ctx = family_context(family, g)
        if family.layers is not None and family.layer_column_names(ctx):  # the rows of layers.csv
            names = family.layers(ctx, jax.tree.map(lambda leaf: leaf[0], g.state.params))
            out[f"meta/{family.name}/layers"] = np.asarray(names, dtype=str)
            out[f"meta/{family.name}/layer_columns"] = np.asarray(family.layer_column_names(ctx), dtype=str)
        progress(family.cost * g.config.epochs, f"{family.name} metrics")
    return out


# ------------------------------------------------------------------------------------------ the run

def resolve_parts(config: Config, model=None, loss=None, optimizer=None) -> Parts:
    factory, loss, optimizer = configs.check_plugins(config, model, loss, optimizer)
    return Parts(config.model if model is None else factory, loss, optimizer, config.depth)


def check_model(parts: Parts, config: Config, dataset: data.Dataset, families: Sequence[Family] = ()) -> None:
    """Build and initialise the model and the optimiser on the data's input shape (shapes only, nothing runs): a
    factory that fails, a module whose `__call__` does not take `train`, non-float parameters, outputs of the
    wrong size or an optimiser that gives no optax transformation are one-line errors before anything is
    written; so is a family that cannot run on this model or loss (its `check`)."""
    spec = parts.spec(config.widths[0], dataset.num_classes)
    x = jax.ShapeDtypeStruct((2, *dataset.x_train.shape[1:]), dataset.x_train.dtype)
    what = "tokens" if dataset.is_tokens else "inputs"
    with one_line(f"model {spec.name!r} fails on {what} of shape {x.shape[1:]}"):
        key = jax.eval_shape(jax.random.key, 0)  # abstract: nothing compiled for a check
        params, batch_stats = jax.eval_shape(lambda k: models.init(spec, k, x.shape[1:], str(x.dtype)), key)
        outputs = jax.eval_shape(lambda p, bs, x_, k: models.apply(spec, p, bs, x_, train=True, rng=k)[0],
                                 params, batch_stats, x, key)
    pytrees.check_params(params, f"model {spec.name!r} parameters")
    hyper = train.Hyper(*(np.float32(v) for v in (0.1, 0.0, 0.9, 1.0, 0.0)))
    with one_line(f"optimizer {registry.describe(parts.optimizer)!r} does not give an optax transformation for "
                  "the member's hyperparameters"):
        jax.eval_shape(lambda p: train.direction(parts.optimizer, hyper).init(p), params)
    if parts.loss.per_token(dataset.y_train):
        wanted = (*dataset.y_train.shape[1:], dataset.num_classes)
        if tuple(outputs.shape[1:]) != wanted:
            raise LLJaxError(f"model {spec.name!r} gives outputs of shape {tuple(outputs.shape[1:])} per example but "
                             f"the per-token targets need {wanted} (a logit per position and class)")
    else:
        size = int(np.prod(outputs.shape[1:]))
        wanted = dataset.num_classes if parts.loss.classification else int(np.prod(dataset.y_train.shape[1:]))
        if size != wanted:
            what = "classes" if parts.loss.classification else "targets per example"
            raise LLJaxError(f"model {spec.name!r} gives {size} outputs per example but the data has {wanted} {what}")
    if train.FULL_BATCH in config.batch_sizes and jax.tree.leaves(batch_stats) and min(config.data_fractions) < 1:
        raise LLJaxError(f"full-batch training of model {spec.name!r} (BatchNorm) on a data fraction below 1: its "
                         "batch statistics would include examples outside the subset; use minibatches")
    for family in families:
        with one_line(f"metric family {family.name!r} cannot run on model {spec.name!r}"):
            ctx = Context(spec, parts.loss, config.options(family.name), config.epochs, config.eval_batch_size)
            if family.check is not None:
                family.check(ctx, params, batch_stats, x)
            trace_family(family, ctx, config, dataset, params, batch_stats)


def trace_family(family: Family, ctx: Context, config: Config, dataset: data.Dataset, params, batch_stats) -> None:
    """Trace a family's function on the shapes of one member (pair, quad) of the model (`jax.eval_shape`: nothing
    runs), so that a family that cannot run on the model or the data fails before anything is trained."""
    f32 = jax.ShapeDtypeStruct((), jnp.float32)
    like = lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype)
    view = jax.eval_shape(lambda k, y: data.training_view(k, y, dataset.num_classes, 1.0, 0.0),
                          jax.eval_shape(jax.random.key, 0), like(dataset.y_train))
    hyper = train.Hyper(f32, f32, f32, f32, f32, None if config.beta2 is None else f32,
                        f32 if config.uses_sam else None)
    member = Member(params, batch_stats, view, hyper, jax.ShapeDtypeStruct((), jnp.bool_))
    shared = Shared(like(dataset.x_train), like(dataset.x_test), like(dataset.y_test))
    if family.static_subset:
        ctx = dataclasses.replace(ctx, subset_size=data.subset_size_host(len(dataset.y_train),
                                                                         min(config.data_fractions)))
    key = jax.eval_shape(jax.random.key, 0)
    if family.prepare is not None:
        shared = shared._replace(extra=jax.eval_shape(lambda sh, k: family.prepare(ctx, sh, k), shared, key))
    jax.eval_shape(lambda sh, k, *ms: family.compute(ctx, sh, *ms, k), shared, key,
                   *[member] * metrics.family.KINDS[family.kind])


def run(config: Config, out_dir: str | os.PathLike, *, model=None, dataset: data.Dataset | None = None,
        loss: losses.Loss | str | None = None, optimizer=None, progress: bool = True,
        checkpoint_seconds: float = 60.0, shard: tuple[int, int] | None = None,
        print_timings: bool = False) -> tables.Results | None:
    """Run (or resume) a study into `out_dir` and write every output there; returns the `tables.Results`.

    model: a factory(width, num_classes) -> flax.linen.Module, or an NNX (`*, rngs`) or Equinox (`*, key`)
    factory (`lljax.adapters`; default: `config.model`); dataset: a
    `data.Dataset` (default: loaded from `config.dataset`); loss: a `losses.Loss` or its name (default:
    `config.loss`); optimizer: an optax transformation, or a function of `train.Hyper` returning one, giving a
    descent direction that lljax scales by the scheduled learning rate (default: `config.optimizer`). Objects
    passed here are named in config.json. Bad input raises LLJaxError before anything is created; training
    state is checkpointed at most every `checkpoint_seconds`.

    shard=(i, n) computes only shard i of n of the groups (`shards.assign`); every group is claimed first, so
    shards and workers sharing `out_dir` never compute a group twice (a run without `shard` waits for groups
    another live process holds). The outputs are written once every group is done, by whoever finishes last;
    until then a sharded run returns None. Every run writes timings.json (`lljax.timings`); `print_timings`
    also prints the breakdown."""
    start = time.time()
    recorder = timings.Timings()
    try:
        return _run(config, out_dir, model, dataset, loss, optimizer, progress, checkpoint_seconds, shard,
                    print_timings, start, recorder)
    finally:
        recorder.close()


def _run(config, out_dir, model, dataset, loss, optimizer, progress, checkpoint_seconds, shard, print_timings,
         start, recorder):
    named = {"model": model, "loss": loss.name if isinstance(loss, losses.Loss) else loss, "optimizer": optimizer}
    config = config.replace(**{k: registry.describe(v) for k, v in named.items() if v is not None},
                            **({"dataset": dataset.name} if dataset is not None else {}))
    with timings.section("validate"):
        configs.validate(config, custom_dataset=dataset is not None)
        parts = resolve_parts(config, model, loss, optimizer)
    with timings.section("data"):
        dataset = dataset or data.load_dataset(config.dataset, config.data_dir, task=config.task)
    with timings.section("validate"):
        configs.validate_with_data(config, dataset, parts.loss)
        parts = dataclasses.replace(parts, extras=model_extras(config, dataset))
        families = [metrics.get(name) for name in config.metric_names]
        check_model(parts, config, dataset, families)
    out_dir = Path(out_dir)
    store.prepare_shared_out_dir(config, out_dir, resolved_data(config, dataset, parts.loss))
    lead = sharding.is_lead_process()  # several hosts: all compute, process 0 writes files and prints
    members = grids.grid_members(config.knob_values(), config.seeds)
    groups = grids.group_members(members)
    mine = groups
    if shard is not None:
        mine = [groups[k] for k in shards.assign(group_costs(config, dataset, parts, groups), shard[1])[shard[0]]]
    track_epochs = tracking.tracked_epochs(config)
    tracked = [f for f in families if f.name in tracking.tracked_families(config)]
    metric_cost = sum(f.cost for f in families) + max(len(track_epochs) - 1, 0) * sum(f.cost for f in tracked)
    bar = Progress(len(mine) * config.epochs * (1 + metric_cost), enabled=progress and lead,
                   report_to=os.environ.get("LLJAX_PROGRESS_FILE"))
    (out_dir / "groups").mkdir(exist_ok=True)
    placement = sharding.Placement.default(config.max_members_per_chunk)
    paths = {g.index: out_dir / "groups" / f"group-{g.index}.npz" for g in groups}
    epoch_path = lambda group, e: out_dir / "groups" / f"group-{group.index}.epoch-{e}.npz"
    claims = jax.process_count() == 1  # several hosts: process 0's view decides, broadcast (no claim files)
    digest = config.measurement_digest()

    def done(path: Path) -> bool:
        """A group's (snapshot's) results exist and were measured with this run's settings (a folder measured
        again with other --metrics re-measures its groups; results from before digests were stored count)."""
        if not path.exists():
            return False
        stored = store.load_arrays(path, ("meta/measurement",)).get("meta/measurement")
        return stored is None or str(stored) == digest

    for group in mine:
        whole = config.epochs * (1 + metric_cost)
        if bool(sharding.from_lead(np.asarray(done(paths[group.index])))):
            bar.update(whole, f"group {group.index}: already done")
            continue
        claim = out_dir / "groups" / f"group-{group.index}.claim"
        if claims and not store.claim(claim):
            if shard is not None:  # another worker has it
                bar.update(whole, f"group {group.index}: another worker's")
                continue
            while not done(paths[group.index]) and not store.claim(claim):  # wait for its holder
                time.sleep(2.0)
            if done(paths[group.index]):
                bar.update(whole, f"group {group.index}: done by another worker")
                continue
        try:
            beat = (lambda amount, message: (store.heartbeat(claim), bar.update(amount, message))) if claims \
                else bar.update
            group_start = time.time()
            ckpt_dir = out_dir / "checkpoints" / f"group-{group.index}"
            with timings.section("train"):
                g = train_group(config, dataset, group, members, ckpt_dir, beat, checkpoint_seconds, placement,
                                parts)
            try:
                for e in track_epochs[:-1]:  # the snapshots' metrics first: a finished group has all of them
                    if not bool(sharding.from_lead(np.asarray(done(epoch_path(group, e))))):
                        arrays = measure_group(g.at_epoch(e), tracked, lambda a, m, e=e: beat(a, f"epoch {e}: {m}"))
                        arrays["meta/measurement"] = np.asarray(digest)
                        if lead:
                            store.save_arrays(epoch_path(group, e), arrays)
                arrays = measure_group(g, families, beat)
            except LLJaxError as e:
                raise LLJaxError(f"group {group.index} (width {group.width}, batch {group.batch_size}): {e}; its "
                                 f"trained models stay in {ckpt_dir}: run again into the same --out with other "
                                 "--metrics to measure the rest without training") from None
            arrays.update(milestone_arrays(config, g))
            arrays["meta/measurement"] = np.asarray(digest)
            arrays["meta/seconds"] = np.asarray(time.time() - group_start)  # this run's time for the group
            arrays["meta/conv"] = np.asarray(g.spec.model.conv)  # the convolution strategy it trained with
            if lead:
                store.save_arrays(paths[group.index], arrays)
        finally:
            if claims:
                store.release(claim)
    bar.close()
    missing = [g.index for g in groups if not done(paths[g.index])]
    if missing:  # a shard whose siblings are not finished: the last one to finish writes the outputs
        if lead:
            print(f"lljax: shard {shard[0]}/{shard[1]} done; {len(missing)} of {len(groups)} groups still to come "
                  f"from other shards (the last to finish writes the report; or lljax report --out {out_dir})")
        return None
    group_metrics = [store.load_arrays(paths[g.index]) for g in groups]
    trajectories = [{e: store.load_arrays(epoch_path(g, e)) for e in track_epochs[:-1]} for g in groups]
    seconds = time.time() - start if shard is None else float(sum(a["meta/seconds"] for a in group_metrics))
    results = make_results(config, parts.loss, group_metrics, trajectories, seconds)
    if lead:
        from lljax import report  # figures and the report: imported when they are written

        report.write_all(results, out_dir)
        summary = recorder.write(out_dir / "timings.json")
        if print_timings:
            print(timings.format_summary(summary))
    return results


def resolved_data(config: Config, dataset: data.Dataset, loss: losses.Loss) -> dict:
    """What the run read from its data and chose from it (config.json's 'resolved', the report): the inputs
    (float or tokens, with the vocabulary), the targets (labels, per-token labels, regression) and the CKA
    probe."""
    from lljax.metrics import cka

    out = {"inputs": "tokens" if dataset.is_tokens else "float", "input_shape": list(dataset.x_train.shape[1:]),
           "targets": "per-token labels" if dataset.per_token else "labels" if dataset.is_classification
           else "regression", "num_classes": dataset.num_classes}
    if dataset.is_tokens:
        out["vocab_size"] = dataset.vocab_size
    if "cka" in config.metric_names:
        out["cka_probe"] = cka.probe_kind(config.options("cka").probe, dataset.is_tokens,
                                          loss.per_token(dataset.y_train))
    return out


def group_costs(config: Config, dataset: data.Dataset, parts: Parts, groups: Sequence[grids.Group]) -> list[float]:
    """Every group's estimated cost (`shards.group_cost`), from its parameter count (shapes only)."""
    counts = {}
    for width in {g.width for g in groups}:
        spec = parts.spec(width, dataset.num_classes)
        shape = jax.eval_shape(lambda k: models.init(spec, k, dataset.x_train.shape[1:], str(dataset.x_train.dtype))[0],
                               jax.random.key(0))
        counts[width] = models.count_params(shape)
    return [shards.group_cost(len(g.members), counts[g.width], config.epochs) for g in groups]


def make_results(config: Config, loss: losses.Loss, group_metrics: list, trajectories: list,
                 seconds: float) -> tables.Results:
    """The `tables.Results` of a run from its configuration and its groups' stored arrays."""
    members = grids.grid_members(config.knob_values(), config.seeds)
    groups = grids.group_members(members)
    families = [metrics.get(name) for name in config.metric_names]
    ctx = Context(models.ModelSpec(config.model, config.widths[0]), loss, None, config.epochs, config.eval_batch_size)
    contexts = [dataclasses.replace(ctx, options=config.options(f.name)) for f in families]
    correlated = {c: f.kind_of_metric for f, cx in zip(families, contexts) for c in f.correlated_names(cx)}
    return tables.Results(
        config, config.dataset_name, registry.describe(config.model), members, groups, group_metrics, seconds,
        error_metric=loss.error is not None,
        loss_name=", ".join(config.losses) if config.loss_is_knob else loss.name, correlated=tuple(correlated),
        kinds=correlated,
        heatmaps=tuple(h for f in families for h in f.heatmaps), families=tuple(families),
        trajectories=trajectories, tracked_epochs=tracking.tracked_epochs(config))


def rebuild(out_dir: str | os.PathLike, loss: losses.Loss | None = None) -> tables.Results:
    """Write the tables, figures and report of a run folder again from its stored group results (nothing is
    trained or measured): after a change to the report, or once every shard of a sharded run is done. A
    missing group is a one-line LLJaxError naming it. `loss`: the run's loss, when it was a Python object."""
    out_dir = Path(out_dir)
    path = out_dir / "config.json"
    if not path.is_file():
        raise LLJaxError(f"{out_dir} holds no lljax run (no config.json)")
    import json

    config = Config.from_dict(json.loads(path.read_text()))
    loss = loss or config.loss_named(config.losses[0] if config.loss_is_knob else config.loss)
    groups = grids.group_members(grids.grid_members(config.knob_values(), config.seeds))
    epochs = tracking.tracked_epochs(config)[:-1]
    files = [out_dir / "groups" / f"group-{g.index}.npz" for g in groups]
    missing = [f"group-{g.index}" for g, f in zip(groups, files) if not f.exists()]
    if missing:
        raise LLJaxError(f"{out_dir} is not finished: {len(missing)} of {len(groups)} groups missing "
                         f"({', '.join(missing[:10])}{', ...' if len(missing) > 10 else ''})")
    group_metrics = [store.load_arrays(f) for f in files]
    trajectories = [{e: store.load_arrays(out_dir / "groups" / f"group-{g.index}.epoch-{e}.npz") for e in epochs}
                    for g in groups]
    seconds = float(sum(a.get("meta/seconds", 0.0) for a in group_metrics))
    results = make_results(config, loss, group_metrics, trajectories, seconds)
    from lljax import report

    report.write_all(results, out_dir)
    return results
