"""Tests of lljax.sharding: padding, chunk sizing, memory estimates and chunked maps in this process (one CPU
device); sharded == unsharded training on 4 virtual CPU devices, and a 2-process x 2-device global mesh over
loopback, each in fresh subprocesses (XLA's device count is fixed when JAX starts). The subprocesses run this
same file as a script (`python test_sharding.py single|multi ...`) and report what they measured as JSON."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.abspath(__file__)


# ------------------------------------------------------------------------------------------ helpers

def max_abs_diff(a_tree, b_tree) -> float:
    """Largest |a - b| over every leaf of two pytrees (bools and ints compared as numbers, keys by data)."""
    import jax

    def data(leaf):
        if hasattr(leaf, "dtype") and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        return np.asarray(leaf, np.float64)

    a_leaves, a_def = jax.tree.flatten(a_tree)
    b_leaves, b_def = jax.tree.flatten(b_tree)
    assert a_def == b_def, f"tree structures differ: {a_def} vs {b_def}"
    assert all(np.shape(a) == np.shape(b) for a, b in zip(a_leaves, b_leaves))
    return max(float(np.max(np.abs(data(a) - data(b)), initial=0.0)) for a, b in zip(a_leaves, b_leaves))


def tiny_training(members: int = 6, epochs: int = 2, model: str = "mlp", conv: str = "auto"):
    """A tiny MLP (or cnn, resnet18 with convolution strategy `conv`) ensemble on random data whose members
    differ in lr, data fraction and label noise: (spec, state, member, x_train)."""
    import jax
    import jax.numpy as jnp

    from lljax import models, train

    n, d = 192, 12
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = rng.integers(0, 10, n).astype(np.int32)
    spec = train.TrainSpec(models.ModelSpec(model, 16 if model == "mlp" else 4, conv=conv), 32, epochs, n, "step")
    ones = jnp.ones(members, jnp.float32)
    hyper = train.Hyper(jnp.linspace(0.02, 0.2, members), 5e-4 * ones, 0.9 * ones,
                        jnp.where(jnp.arange(members) % 2 == 0, 1.0, 0.6), jnp.linspace(0.0, 0.4, members))
    keys = jax.random.split(jax.random.key(7), members)
    state, member = train.init_ensemble(spec, keys, hyper, jnp.asarray(y), (d,))
    return spec, state, member, jnp.asarray(x)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def subprocess_env(device_count: int, extra: dict | None = None) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={device_count}")
    env.pop("LLJAX_DISTRIBUTED", None)
    env.pop("JAX_COORDINATOR_ADDRESS", None)
    env.update(extra or {})
    return env


def last_json(output: str) -> dict:
    lines = [line for line in output.splitlines() if line.startswith("RESULT ")]
    assert lines, f"subprocess printed no result:\n{output[-4000:]}"
    return json.loads(lines[-1][len("RESULT "):])


# ------------------------------------------------------------------------------------------ one device

def test_pad_unpad_roundtrip_with_keys_and_numpy():
    import jax
    import jax.numpy as jnp

    from lljax import sharding

    tree = {"w": jnp.arange(5 * 3, dtype=jnp.float32).reshape(5, 3), "key": jax.random.split(jax.random.key(0), 5),
            "host": np.arange(5, dtype=np.int32)}
    padded, n = sharding.pad_members(tree, 4)
    assert n == 5 and sharding.member_count(padded) == 8
    for i in range(5, 8):  # the padding repeats the last member
        assert max_abs_diff(jax.tree.map(lambda v: v[i], padded), jax.tree.map(lambda v: v[4], tree)) == 0
    assert max_abs_diff(sharding.unpad(padded, n), tree) == 0
    same, n_same = sharding.pad_members(tree, 5)
    assert same is tree and n_same == 5
    assert sharding.member_count(sharding.pad_members(tree, 1)[0]) == 5


def test_bad_ensemble_trees_raise():
    import jax.numpy as jnp

    from lljax import sharding
    from lljax.errors import LLJaxError

    with pytest.raises(LLJaxError, match="disagree"):
        sharding.member_count({"a": jnp.zeros(3), "b": jnp.zeros((4, 2))})
    with pytest.raises(LLJaxError, match="scalar"):
        sharding.member_count({"a": jnp.zeros(3), "b": jnp.zeros(())})
    with pytest.raises(LLJaxError, match="no arrays"):
        sharding.member_count({})
    with pytest.raises(LLJaxError, match="positive integer"):
        sharding.pad_members(jnp.zeros(3), 0)
    with pytest.raises(LLJaxError, match="cannot keep"):
        sharding.unpad(jnp.zeros(3), 4)


def test_chunk_size_fills_memory_and_respects_cap():
    from lljax import sharding
    from lljax.errors import LLJaxError

    assert sharding.chunk_size(10, device_memory=1000, safety=0.5) == 50
    assert sharding.chunk_size(10, device_memory=1000, safety=0.5, shared_bytes=200) == 30
    assert sharding.chunk_size(10, device_memory=1000, safety=0.5, num_devices=4) == 200
    assert sharding.chunk_size(600, device_memory=1000, safety=0.5) == 1  # fits only without the margin
    for cap in (1, 2, 3, 7, 8, 49, 50, 51, 1000):
        one = sharding.chunk_size(10, device_memory=1000, cap=cap)
        assert one == min(cap, 50)
        four = sharding.chunk_size(10, device_memory=1000, cap=cap, num_devices=4)
        assert four <= cap and (four % 4 == 0 or cap < 4)
        assert four == (cap if cap < 4 else min(200, cap - cap % 4))
    free = sharding.device_memory_bytes()
    assert 0 < free
    assert sharding.chunk_size(2 ** 20) == int(0.5 * free // 2 ** 20)
    with pytest.raises(LLJaxError, match="GiB"):
        sharding.chunk_size(2000, device_memory=1000)
    for bad in (dict(cap=0), dict(safety=0.0), dict(safety=1.5), dict(num_devices=0)):
        with pytest.raises(LLJaxError):
            sharding.chunk_size(10, device_memory=1000, **bad)


def test_device_memory_falls_back_to_host_memory_on_cpu():
    import jax
    import psutil

    from lljax import sharding

    device = jax.devices()[0]
    assert device.memory_stats() is None  # the CPU reports none, so the fallback is what is under test
    free = sharding.device_memory_bytes(device)
    assert 0 < free <= psutil.virtual_memory().total


def test_memory_estimate_grows_with_the_model_and_excludes_shared_inputs(monkeypatch):
    import functools

    import jax

    from lljax import sharding, train
    from lljax.errors import LLJaxError

    M = 4
    spec, state, member, x = tiny_training(members=M, epochs=1)
    fn = functools.partial(train.train_ensemble, spec)
    args, axes = (state, member, x, 0, 1), (0, 0, None, None, None)
    small = sharding.memory_estimate(fn, *args, in_axes=axes)
    assert small.source == "memory_analysis"
    assert small.shared == x.size * 4
    own = sum(8 * leaf.size if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key) else leaf.nbytes
              for leaf in jax.tree.leaves((state, member))) / M
    assert small.per_member >= own
    assert small.per_member < 100 * own  # the estimate is of the right order, not a bound from nowhere

    # a cheap ensemble function for the rest: abstract shapes suffice, and the heuristic without XLA's analysis
    product = jax.vmap(lambda w_DH, key, x_ND: x_ND @ w_DH + jax.random.normal(key), in_axes=(0, 0, None))
    inputs = (np.ones((M, 12, 64), np.float32), jax.random.split(jax.random.key(0), M), np.ones((100, 12), np.float32))
    exact = sharding.memory_estimate(product, *inputs, in_axes=(0, 0, None))
    abstract = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype), inputs)
    assert sharding.memory_estimate(product, *abstract, in_axes=(0, 0, None)) == exact
    assert exact.per_member >= 12 * 64 * 4 + 100 * 64 * 4  # its weights and its output
    wider = sharding.bytes_per_member_estimate(product, np.ones((M, 12, 1024), np.float32), *inputs[1:],
                                               in_axes=(0, 0, None))
    assert wider > 10 * exact.per_member  # 16x the weights and outputs
    monkeypatch.setattr(jax.stages.Compiled, "memory_analysis", lambda self: None)
    rough = sharding.memory_estimate(product, *inputs, in_axes=(0, 0, None))
    assert rough == (sharding.HEURISTIC_FACTOR * (12 * 64 * 4 + 8), 100 * 12 * 4, "heuristic")
    with pytest.raises(LLJaxError, match="in_axes"):
        sharding.memory_estimate(fn, *args, in_axes=(0, 0))


def test_cpu_passes_keep_a_slice_in_cache():
    from lljax import sharding

    mib = 2 ** 20
    assert sharding.cpu_passes(32, 91_000, mib) == 4  # width-128 MLPs: 11 fit, slices of 8
    assert sharding.cpu_passes(30, 91_000, mib) == 3  # slices of 10 (the largest divisor that fits)
    assert sharding.cpu_passes(32, 11_000, mib) == 1  # small models: all at once
    assert sharding.cpu_passes(32, 2 * mib, mib) == 32 // sharding.CPU_MIN_MEMBERS_PER_PASS  # never below the floor
    assert sharding.cpu_passes(31, 2 * mib, mib) == 1  # a prime count: one slice of 31 rather than 31 of 1
    assert sharding.cpu_passes(1, 2 * mib, mib) == 1


def test_cpu_cache_bytes_reads_sysfs(tmp_path):
    from lljax import sharding

    for index, level, kind, size in [(0, 1, "Data", "48K"), (1, 1, "Instruction", "32K"), (2, 2, "Unified", "2M")]:
        folder = tmp_path / f"index{index}"
        folder.mkdir()
        for name, value in (("level", level), ("type", kind), ("size", size)):
            (folder / name).write_text(f"{value}\n")
    assert sharding.cpu_cache_bytes(2, str(tmp_path)) == 2 * 2 ** 20
    assert sharding.cpu_cache_bytes(1, str(tmp_path)) == 48 * 2 ** 10
    assert sharding.cpu_cache_bytes(2, str(tmp_path / "missing")) == 2 ** 20  # unknown: 1 MiB


def test_map_chunks_equals_one_call_and_compiles_once():
    import jax
    import jax.numpy as jnp

    from lljax import sharding

    traces = []

    @jax.jit
    @jax.vmap
    def member_fn(key, w_D, scale):
        traces.append(1)
        noise_D = jax.random.normal(key, w_D.shape)
        return {"out": jnp.tanh(w_D * scale + noise_D), "norm": jnp.sum(w_D ** 2), "key": jax.random.split(key)[0]}

    M = 7
    args = (jax.random.split(jax.random.key(3), M), jax.random.normal(jax.random.key(4), (M, 5)),
            np.linspace(0.5, 2.0, M).astype(np.float32))
    whole = member_fn(*args)
    for chunk in (1, 2, 3, 7, 50):
        traces.clear()
        chunked = sharding.map_chunks(member_fn, args, chunk)
        assert len(traces) <= 1, f"chunk {chunk}: {len(traces)} compilations"
        assert isinstance(chunked["out"], np.ndarray)
        # XLA:CPU's vectorised tanh/erf loops round the tail of a shorter array differently: ~1 ulp, not 0
        assert max_abs_diff(chunked, whole) <= 2e-6
        assert max_abs_diff(chunked["key"], whole["key"]) == 0
    on_device = sharding.map_chunks(member_fn, args, 3, host=False)
    assert isinstance(on_device["out"], jax.Array) and max_abs_diff(on_device, whole) <= 2e-6


def test_initialize_distributed_reads_the_environment():
    from lljax import sharding
    from lljax.errors import LLJaxError

    assert sharding.initialize_distributed({}) is False
    with pytest.raises(LLJaxError, match="LLJAX_PROCESS_ID missing"):
        sharding.initialize_distributed({"LLJAX_COORDINATOR": "127.0.0.1:1", "LLJAX_NUM_PROCESSES": "2"})
    with pytest.raises(LLJaxError, match="integers"):
        sharding.initialize_distributed({"LLJAX_COORDINATOR": "127.0.0.1:1", "LLJAX_NUM_PROCESSES": "two",
                                         "LLJAX_PROCESS_ID": "0"})
    with pytest.raises(LLJaxError, match=r"\[0, 2\)"):
        sharding.initialize_distributed({"LLJAX_COORDINATOR": "127.0.0.1:1", "LLJAX_NUM_PROCESSES": "2",
                                         "LLJAX_PROCESS_ID": "2"})
    # this process already runs JAX, so joining a cluster now must be refused with a clear message
    with pytest.raises(LLJaxError, match="before any JAX computation"):
        sharding.initialize_distributed({"LLJAX_COORDINATOR": "127.0.0.1:1", "LLJAX_NUM_PROCESSES": "2",
                                         "LLJAX_PROCESS_ID": "0"})


def test_placing_device_arrays_over_cpu_devices_compiles_nothing_and_keeps_every_value():
    """`shard_members` of arrays on one CPU device (an initialised ensemble) goes through the host: no slicing
    program is compiled, and the values, keys included, are those of the arrays."""
    result = subprocess.run([sys.executable, HERE, "place"], env=subprocess_env(2), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    r = last_json(result.stdout)
    assert r["compiled"] == [] and r["diff"] == 0 and r["specs"] == [["members"]] * r["leaves"], r


# ------------------------------------------------------------------------------------------ several devices

@pytest.mark.slow
def test_sharded_training_equals_unsharded_on_4_devices():
    result = subprocess.run([sys.executable, HERE, "single"], env=subprocess_env(4), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    r = last_json(result.stdout)
    assert r["devices"] == 4
    assert r["shard_shapes"] == [[2, 16]] * 4, "the params are not split over the 4 devices"
    assert r["output_spec"] == ["members"]
    assert r["train_diff"] <= 1e-6, r  # float32 training, 2 epochs; the same programs per member
    assert r["eval_diff"] <= 1e-6, r
    # sequential slices of the sharded member axis: same numbers, still sharded, no data moved between devices
    assert r["passes_diff"] <= 1e-6 and r["passes_spec"] == ["members"] and r["passes_collectives"] == [], r
    assert r["chunked_train_diff"] <= 1e-6, r
    assert r["chunk_compilations"] == 1, r
    assert r["callback_vs_device_put"] == 0 and r["key_spec"] == ["members"]
    assert r["uneven_error"].startswith("6 members do not split evenly over 4 devices")
    # grouped convolutions of a sharded ResNet18 ensemble: the shard_map program moves nothing between devices
    assert r["shard_map_grouped"] and r["shard_map_collectives"] == [], r
    assert r["shard_map_diff"] <= 1e-10, r  # float64
    print("sharding propagation instead:", r["propagated_collectives"])


@pytest.mark.slow
def test_two_processes_form_one_global_mesh():
    """Two processes with 2 CPU devices each, joined over loopback by `initialize_distributed` from LLJAX_*
    variables, train a 6-member ensemble in two 4-member chunks, each sharded over the 4-device global mesh,
    and gather the results on both hosts."""
    port = free_port()
    procs = [subprocess.Popen([sys.executable, HERE, "multi"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, env=subprocess_env(2, {"LLJAX_COORDINATOR": f"127.0.0.1:{port}",
                                                                "LLJAX_NUM_PROCESSES": "2",
                                                                "LLJAX_PROCESS_ID": str(i)}))
             for i in range(2)]
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=300)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    text = "\n".join(outputs)
    unsupported = [line for line in text.splitlines() if "UNIMPLEMENTED" in line or "not supported" in line]
    if any(p.returncode for p in procs) and unsupported:
        pytest.skip(f"JAX's CPU backend cannot run this across processes here: {unsupported[0].strip()}")
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-4000:]
    results = [last_json(out) for out in outputs]
    for i, r in enumerate(results):
        assert r["process_index"] == i and r["process_count"] == 2
        assert r["global_devices"] == 4 and r["local_devices"] == 2
        # one member per device: this process's two devices hold rows 2i and 2i+1 of every 4-member chunk
        assert r["local_shard_rows"] == [[[2 * i, 2 * i + 1], [2 * i + 1, 2 * i + 2]]] * 2, r
        assert r["chunked_train_diff"] <= 1e-6, r


# ------------------------------------------------------------------------------------------ subprocess side

def _single_device_worker() -> dict:
    import jax
    import jax.numpy as jnp

    from lljax import sharding, train
    from lljax.errors import LLJaxError

    spec, state, member, x = tiny_training(members=6)
    reference = train.train_ensemble(spec, state, member, x, 0, spec.epochs)
    ref_eval = train.evaluate_ensemble(spec.model, reference.params, reference.batch_stats, x, member.view.labels,
                                       member.view.mask)

    mesh = sharding.member_mesh()
    _, state, member, _ = tiny_training(members=6)
    try:
        sharding.shard_members(state, mesh)
        uneven = "no error"
    except LLJaxError as e:
        uneven = str(e)
    (state8, member8), n = sharding.pad_members((state, member), mesh.size)
    state8, member8 = sharding.shard_members((state8, member8), mesh)
    x_all = sharding.replicate(x, mesh)
    trained = train.train_ensemble(spec, state8, member8, x_all, 0, spec.epochs)
    kernel = jax.tree.leaves(trained.params)[0]
    (state8, member8), _ = sharding.pad_members(tiny_training(members=6)[1:3], mesh.size)
    state8, member8 = sharding.shard_members((state8, member8), mesh)
    args = (spec, state8, member8, x_all, 0, spec.epochs, 2)  # two slices, each one member per device
    program = train.train_ensemble.lower(*args).compile().as_text()
    in_passes = train.train_ensemble(*args)
    evaluated = train.evaluate_ensemble(spec.model, trained.params, trained.batch_stats, x_all,
                                        member8.view.labels, member8.view.mask)

    _, state, member, _ = tiny_training(members=6)
    before = train.train_ensemble._cache_size()
    chunked = sharding.map_chunks(lambda s, m: train.train_ensemble(spec, s, m, x_all, 0, spec.epochs),
                                  (state, member), 4, mesh=mesh)
    compilations = train.train_ensemble._cache_size() - before

    keys = jax.random.split(jax.random.key(0), 8)
    values = jnp.arange(8 * 3.0).reshape(8, 3)
    member_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("members"))
    via_callback = (sharding._global_array(keys, member_sharding), sharding._global_array(values, member_sharding))
    via_put = sharding.shard_members((keys, values), mesh)
    return {"devices": jax.device_count(),
            "shard_shapes": [list(s.data.shape) for s in kernel.addressable_shards],
            "output_spec": list(kernel.sharding.spec),
            "train_diff": max_abs_diff(sharding.unpad(trained, n), reference),
            "eval_diff": max_abs_diff(sharding.unpad(evaluated, n), ref_eval),
            "passes_diff": max_abs_diff(sharding.unpad(in_passes, n), reference),
            "passes_spec": list(jax.tree.leaves(in_passes.params)[0].sharding.spec),
            "passes_collectives": [op for op in ("all-gather", "all-to-all", "collective-permute", "all-reduce")
                                   if op in program],
            "chunked_train_diff": max_abs_diff(chunked, reference),
            "chunk_compilations": compilations,
            "callback_vs_device_put": max_abs_diff(via_callback, via_put),
            "key_spec": list(via_put[0].sharding.spec),
            "uneven_error": uneven, **_grouped_convolutions(mesh)}


def _grouped_convolutions(mesh) -> dict:
    """A ResNet18 ensemble with grouped convolutions, 8 members in float64, trained on one device and sharded
    over the mesh by the shard_map program (`mesh=`) and by plain sharding propagation: each one's collectives
    and its largest difference from the one-device result. (In float32 a few steps of this tiny ResNet on
    random data amplify rounding differences between kernels to O(1); float64 shows the programs agree.)"""
    import jax
    import jax.numpy as jnp

    from lljax import sharding, train

    def fresh():
        spec, state, member, x = tiny_training(members=8, epochs=1, model="resnet18", conv="grouped")
        wide = lambda t: jax.tree.map(lambda a: a.astype(jnp.float64) if a.dtype == jnp.float32 else a, t)
        return spec, wide(state), member, wide(x)

    out = {}
    with jax.enable_x64(True):
        spec, state, member, x = fresh()
        reference = train.train_ensemble(spec, state, member, x, 0, 1)
        x_all = sharding.replicate(x, mesh)
        for name, with_mesh in (("shard_map", mesh), ("propagated", None)):
            args = sharding.shard_members(fresh()[1:3], mesh)
            lowered = train.train_ensemble.lower(spec, *args, x_all, 0, 1, 1, with_mesh)
            program = lowered.compile().as_text()
            out[f"{name}_collectives"] = [op for op in ("all-gather", "all-to-all", "collective-permute",
                                                        "all-reduce") if op in program]
            out[f"{name}_grouped"] = "feature_group_count = 2" in lowered.as_text()  # 2 members per device
            trained = train.train_ensemble(spec, *args, x_all, 0, 1, 1, with_mesh)
            out[f"{name}_diff"] = max_abs_diff(trained, reference)
    return out


def _multi_process_worker() -> dict:
    from lljax import sharding

    assert sharding.initialize_distributed() is True  # LLJAX_* variables from the parent
    import jax

    from lljax import train

    spec, state, member, x = tiny_training(members=6)
    reference = train.train_ensemble(spec, state, member, x, 0, spec.epochs)  # on this process's first device

    mesh = sharding.member_mesh()
    x_all = sharding.replicate(x, mesh)
    rows = []

    def train_chunk(state, member):
        trained = train.train_ensemble(spec, state, member, x_all, 0, spec.epochs)
        kernel = jax.tree.leaves(trained.params)[0]
        rows.append(sorted([s.index[0].start, s.index[0].stop] for s in kernel.addressable_shards))
        return trained

    # 6 members in chunks of 4 (the second padded from 2): each chunk one global array over 4 devices in 2
    # processes; the results are gathered from both processes onto each host
    _, state, member, _ = tiny_training(members=6)  # train_ensemble donated the first copy
    chunked = sharding.map_chunks(train_chunk, (state, member), 4, mesh=mesh)
    return {"process_index": jax.process_index(), "process_count": jax.process_count(),
            "global_devices": jax.device_count(), "local_devices": jax.local_device_count(),
            "local_shard_rows": rows, "chunked_train_diff": max_abs_diff(chunked, reference)}


def _placement_worker():
    import jax
    import jax.monitoring
    import jax.numpy as jnp

    from lljax import sharding

    tree = {"w": jnp.arange(4 * 3 * 2, dtype=jnp.float32).reshape(4, 3, 2), "n": jnp.arange(4),
            "key": jax.random.split(jax.random.key(1), 4), "host": np.ones(4, bool)}
    jax.block_until_ready(tree)
    compiled = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, duration, **kw: compiled.append(str(kw.get("fun_name")))
        if event == "/jax/core/compile/backend_compile_duration" else None)
    placed = sharding.shard_members(tree, sharding.member_mesh())
    jax.block_until_ready(placed)
    return {"compiled": compiled, "diff": max_abs_diff(placed, tree), "leaves": len(jax.tree.leaves(tree)),
            "specs": [list(leaf.sharding.spec) for leaf in jax.tree.leaves(placed)]}


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
    worker = {"single": _single_device_worker, "multi": _multi_process_worker,
              "place": _placement_worker}[sys.argv[1]]
    print("RESULT " + json.dumps(worker()), flush=True)
