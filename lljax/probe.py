"""The timed probe behind `--conv auto`: which convolution strategy trains a group's ensemble fastest here.

`choose` answers from a JSON file beside the compilation cache (`cache_path()`), keyed by backend, device kind,
device count, JAX version, model, width, batch size, members per call, input shape, precision policy and map
chunk; only a key it has not seen is probed: every candidate strategy (`conv.CONCRETE`; `grouped` and `map`
for a model whose factory takes no `conv`, since im2col is the kernel of lljax's own `models.Conv`) trains the
group's first few batches after one untimed call that compiles it, and the fastest is stored. Probing costs a
compilation per candidate, once per machine and shape. With probing off, or by default on a CPU, `conv.rule`
decides instead.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from lljax import conv, data, models, sharding, train

MODES = ("accelerator", "on", "off")  # probe off a CPU only (default), always, never


def cache_path() -> Path:
    return data.default_cache_dir() / "conv_probe.json"


def _key(spec: train.TrainSpec, members: int, input_shape, mesh, map_chunk: int) -> str:
    device = jax.devices()[0]
    return "|".join(str(v) for v in (device.platform, device.device_kind, mesh.size, jax.__version__,
                                     spec.model.name, spec.model.width, spec.model.depth, spec.batch_size, members,
                                     tuple(input_shape), spec.precision, map_chunk))


def candidates(spec: train.TrainSpec) -> tuple[str, ...]:
    return conv.CONCRETE if models.takes(spec.model.model, "conv") else ("grouped", "map")


def measure(spec: train.TrainSpec, members: int, x_NX, labels_N, placement: sharding.Placement,
            map_chunk: int = 1, steps: int = 3, strategies: tuple[str, ...] | None = None) -> dict[str, float]:
    """Seconds per training step of `members` members (a multiple of the mesh size) for each strategy, on the
    first `steps` batches of the training set (one compiling call, then `steps` steps timed)."""
    whole = len(labels_N) if spec.full_batch else min(spec.batch_size * steps, len(labels_N))  # full: one step
    probe = dataclasses.replace(spec, epochs=1, num_train=whole, eval_every=0)
    steps = probe.steps_per_epoch
    x = sharding.replicate(jnp.asarray(x_NX[:probe.num_train]), placement.mesh)
    labels = jnp.asarray(labels_N[:probe.num_train])
    input_shape = tuple(x.shape[1:])
    keys = jax.random.split(jax.random.key(0), members)
    ones = jnp.ones((members,), jnp.float32)
    hyper = train.Hyper(ones * 1e-3, ones * 0, ones * 0.9, ones, ones * 0)
    initial = sharding.to_host(train.init_ensemble(probe, keys, hyper, labels, input_shape))  # any strategy's
    seconds = {}
    for strategy in strategies or candidates(spec):
        s = dataclasses.replace(probe, model=dataclasses.replace(spec.model, conv=strategy))
        state, member = sharding.shard_members(initial, placement.mesh)  # a fresh copy: training donates it
        passes = placement.passes_for(members, state.params, strategy, map_chunk)
        run = lambda st: train.train_ensemble(s, st, member, x, 0, 1, passes, placement.mesh)
        state = jax.block_until_ready(run(state))  # compiles
        start = time.perf_counter()
        jax.block_until_ready(run(state))
        seconds[strategy] = (time.perf_counter() - start) / steps
    return seconds


def choose(spec: train.TrainSpec, members: int, x_NX, labels_N, placement: sharding.Placement,
           mode: str = "accelerator", map_chunk: int = 1) -> str:
    """The strategy `auto` resolves to for this group: the rule (probing off, or a CPU in mode 'accelerator'),
    else the cached or newly measured fastest."""
    backend = jax.default_backend()
    if mode == "off" or (mode == "accelerator" and backend == "cpu"):
        return conv.rule(backend)
    path, key = cache_path(), _key(spec, members, x_NX.shape[1:], placement.mesh, map_chunk)
    known = json.loads(path.read_text()) if path.is_file() else {}
    if key not in known:
        seconds = measure(spec, members, x_NX, labels_N, placement, map_chunk)
        known = json.loads(path.read_text()) if path.is_file() else {}  # another process may have written
        known[key] = dict(best=min(seconds, key=seconds.get), seconds_per_step=seconds)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known, indent=1, sort_keys=True))
        os.replace(tmp, path)
    return known[key]["best"]
