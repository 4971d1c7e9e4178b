"""Scaling ensembles out: the member axis sharded over devices and hosts, and split into chunks that fit memory.

Every ensemble program in lljax is `jax.jit(jax.vmap(f))` over a leading member axis, and members never talk to
each other, so scaling out needs no collective: put the member axis of every per-member input on a one-axis mesh
(`NamedSharding(mesh, P('members'))`), replicate the shared inputs (the dataset) with `P()`, and call the same
jitted function; XLA's sharding propagation runs each device's members on that device and leaves the outputs
sharded the same way. No `pmap`, no home-made scheduler.

    mesh = sharding.member_mesh()                        # all (global) devices
    (state, member), n = sharding.pad_members((state, member), mesh.size)
    state, member = sharding.shard_members((state, member), mesh)
    x_train = sharding.replicate(x_train, mesh)
    state = train.train_ensemble(spec, state, member, x_train, 0, epochs)
    state = sharding.unpad(state, n)

Multi-host: call `initialize_distributed()` first thing (before any JAX computation) on every host, run the
same command everywhere; `member_mesh()` then spans every host's devices, and `shard_members`/`replicate` build
each global array from the identical host-side copy every process holds (`jax.make_array_from_callback`), so
each process only uploads its own devices' members.

Memory: `map_chunks` runs an ensemble function over equal-size member chunks (the last one padded, so one
compiled program serves every chunk); `chunk_size` picks the chunk from the device's free memory and a
per-member estimate (`bytes_per_member_estimate`, from XLA's compiled memory analysis), honouring a user cap.
"""
from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from lljax import conv
from lljax.errors import LLJaxError

MEMBER_AXIS = "members"
# Heuristic when XLA gives no memory analysis: a member costs this many times the bytes of its own inputs
# (parameters, their gradients, optimiser state, the updated copy) -- activations are not covered, which is
# what the safety factor of `chunk_size` is for.
HEURISTIC_FACTOR = 4


# ------------------------------------------------------------------------------------------ distribution

def initialize_distributed(env: Mapping[str, str] | None = None) -> bool:
    """Join a multi-process JAX run when the environment asks for one; a no-op otherwise. Must run before any
    JAX computation (it raises LLJaxError if the backend is already up). Returns whether JAX's distributed
    runtime is active afterwards.

    The environment (`env`, default `os.environ`) asks for a distributed run in one of two ways:
      - explicit: LLJAX_COORDINATOR=host:port (process 0's address, reachable from every host),
        LLJAX_NUM_PROCESSES=n and LLJAX_PROCESS_ID=i (0..n-1), the same coordinator on every host;
      - automatic: LLJAX_DISTRIBUTED=auto, or JAX's own JAX_COORDINATOR_ADDRESS set: `jax.distributed.initialize()`
        with no arguments, i.e. JAX's cluster auto-detection (Slurm, Open MPI, Cloud TPU, Kubernetes, and
        JAX_COORDINATOR_ADDRESS / JAX_LOCAL_DEVICE_IDS).
    Neither present: nothing happens, and the run uses this process's devices only.
    """
    env = os.environ if env is None else env
    if jax.distributed.is_initialized():
        return True
    names = ("LLJAX_COORDINATOR", "LLJAX_NUM_PROCESSES", "LLJAX_PROCESS_ID")
    given = [n for n in names if env.get(n)]
    auto = env.get("LLJAX_DISTRIBUTED", "").lower() in ("1", "auto", "true") or bool(env.get("JAX_COORDINATOR_ADDRESS"))
    if not given and not auto:
        return False
    if given and len(given) < len(names):
        missing = [n for n in names if n not in given]
        raise LLJaxError(f"distributed run half-configured: {', '.join(given)} set but {', '.join(missing)} missing")
    kwargs: dict[str, Any] = {}
    if given:
        try:
            num_processes, process_id = int(env["LLJAX_NUM_PROCESSES"]), int(env["LLJAX_PROCESS_ID"])
        except ValueError:
            raise LLJaxError("LLJAX_NUM_PROCESSES and LLJAX_PROCESS_ID must be integers, got "
                             f"{env['LLJAX_NUM_PROCESSES']!r} and {env['LLJAX_PROCESS_ID']!r}") from None
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise LLJaxError(f"LLJAX_PROCESS_ID must be in [0, {num_processes}) and LLJAX_NUM_PROCESSES >= 1, "
                             f"got {process_id} of {num_processes}")
        kwargs = dict(coordinator_address=env["LLJAX_COORDINATOR"], num_processes=num_processes,
                      process_id=process_id)
    try:
        jax.distributed.initialize(**kwargs)
    except RuntimeError as e:
        if "must be called before" in str(e):
            raise LLJaxError("initialize_distributed() must run before any JAX computation or jax.devices() call"
                             ) from None
        raise
    return True


def is_lead_process() -> bool:
    """Whether this process is the one that writes a run's files and prints (process 0; always, alone)."""
    return jax.process_index() == 0


def agree(ok: bool) -> bool:
    """Whether `ok` holds on every process: a collective every process must call (with one process, `ok`)."""
    if jax.process_count() == 1:
        return bool(ok)
    from jax.experimental import multihost_utils
    return bool(np.all(multihost_utils.process_allgather(np.asarray(bool(ok)))))


def from_lead(values: np.ndarray) -> np.ndarray:
    """Process 0's `values` (an array of the same shape and dtype on every process) on every process, so
    decisions read from files (what is done, where to resume) are the same everywhere; a collective."""
    if jax.process_count() == 1:
        return np.asarray(values)
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.broadcast_one_to_all(np.asarray(values)))


def member_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A one-axis mesh named 'members' over `devices` (default: every device of every process)."""
    devices = jax.devices() if devices is None else list(devices)
    if len(devices) == 0:
        raise LLJaxError("member_mesh needs at least one device")
    return Mesh(np.asarray(devices, dtype=object), (MEMBER_AXIS,))


def _is_key(leaf) -> bool:
    return hasattr(leaf, "dtype") and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def _global_array(leaf, sharding: NamedSharding) -> jax.Array:
    """One global array with `sharding` from a value every process holds whole: each process supplies only the
    slices its own devices need (works across hosts, unlike `device_put`). Typed keys go through their data."""
    if _is_key(leaf):
        data = _global_array(jax.random.key_data(leaf), sharding)  # trailing key-data axes stay replicated
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(leaf))
    host = np.asarray(leaf)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def _place(tree, sharding: NamedSharding):
    if jax.process_count() == 1:
        if jax.default_backend() == "cpu":
            tree = jax.tree.map(lambda leaf: _via_host(leaf, sharding), tree)
        return jax.device_put(tree, sharding)
    return jax.tree.map(lambda leaf: _global_array(leaf, sharding), tree)


def _via_host(leaf, sharding: NamedSharding):
    """A CPU array that is not yet placed so, as a host array (a PRNG key array: its key data, placed and wrapped
    again): splitting a device array over several devices compiles a slicing program per shape (11 programs,
    ~1 s, for an MLP ensemble's state); numpy is split without one, to the same values."""
    if not isinstance(leaf, jax.Array) or leaf.sharding.is_equivalent_to(sharding, leaf.ndim):
        return leaf
    if _is_key(leaf):
        return jax.random.wrap_key_data(jax.device_put(np.asarray(jax.random.key_data(leaf)), sharding),
                                        impl=jax.random.key_impl(leaf))
    return np.asarray(leaf)


def per_device(fn: Callable, mesh: Mesh | None, in_axes: Sequence[int | None]) -> Callable:
    """`fn` (an ensemble function: outputs with a member axis) as a `shard_map` over the mesh's member axis:
    arguments with in_axes 0 split over the devices, None replicated; each device runs `fn` on its own members
    and nothing moves between devices (XLA's sharding propagation instead all-gathers the grouped
    convolutions of a vmapped conv net). `fn` itself without a mesh or with one device."""
    if mesh is None or mesh.size == 1:
        return fn
    specs = tuple(P(MEMBER_AXIS) if axis == 0 else P() for axis in in_axes)
    return jax.shard_map(fn, mesh=mesh, in_specs=specs, out_specs=P(MEMBER_AXIS), check_vma=False)


def member_count(tree) -> int:
    """The length M of the leading member axis shared by every leaf of an ensemble pytree."""
    leaves = jax.tree.leaves(tree)
    if not leaves:
        raise LLJaxError("ensemble pytree has no arrays")
    counts = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in leaves}
    if None in counts:
        raise LLJaxError("every leaf of an ensemble pytree needs a leading member axis; found a scalar leaf")
    if len(counts) != 1:
        raise LLJaxError(f"leaves disagree on the number of members: {sorted(counts)}")
    return counts.pop()


def shard_members(tree, mesh: Mesh):
    """Every leaf (all with a leading member axis M, a multiple of the mesh size: see `pad_members`) split
    along that axis over the mesh's 'members' axis. Numeric arrays and typed PRNG key arrays alike."""
    if MEMBER_AXIS not in mesh.axis_names:
        raise LLJaxError(f"mesh has no {MEMBER_AXIS!r} axis (axes: {', '.join(mesh.axis_names)})")
    count, devices = member_count(tree), mesh.shape[MEMBER_AXIS]
    if count % devices:
        raise LLJaxError(f"{count} members do not split evenly over {devices} devices; pad them first "
                         "(sharding.pad_members)")
    return _place(tree, NamedSharding(mesh, P(MEMBER_AXIS)))


def replicate(tree, mesh: Mesh):
    """Every leaf copied whole to every device of the mesh (shared inputs: the dataset, probes)."""
    return _place(tree, NamedSharding(mesh, P()))


def pad_members(tree, multiple: int):
    """(tree with M' = M rounded up to a multiple of `multiple` members, M): the extra members repeat the last
    one, so they compute something valid; drop them again with `unpad(result, M)`."""
    if int(multiple) != multiple or multiple < 1:
        raise LLJaxError(f"pad multiple must be a positive integer, got {multiple}")
    count = member_count(tree)
    target = -(-count // multiple) * multiple
    if target == count:
        return tree, count
    index = np.minimum(np.arange(target), count - 1)
    return jax.tree.map(lambda leaf: leaf[index], tree), count


def unpad(tree, n_real: int):
    """The first `n_real` members of every leaf."""
    count = member_count(tree)
    if not 0 < n_real <= count:
        raise LLJaxError(f"cannot keep {n_real} of {count} members")
    return tree if n_real == count else jax.tree.map(lambda leaf: leaf[:n_real], tree)


def to_host(tree):
    """Every leaf as a host numpy array holding all members; arrays spread over several processes are gathered
    (every process must call this). Typed PRNG key arrays stay JAX arrays (numpy has no key type), gathered
    whole onto this process's default device."""
    from jax.experimental import multihost_utils

    def one(leaf):
        if not isinstance(leaf, jax.Array):
            return np.asarray(leaf)
        if _is_key(leaf):
            if leaf.is_fully_addressable:
                return leaf
            return jax.random.wrap_key_data(jnp.asarray(one(jax.random.key_data(leaf))),
                                            impl=jax.random.key_impl(leaf))
        if leaf.is_fully_addressable:
            return np.asarray(leaf)
        return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))

    return jax.tree.map(one, tree)


# ------------------------------------------------------------------------------------------ memory

def device_memory_bytes(device: jax.Device | None = None) -> int:
    """Bytes free for new arrays on `device` (default: this process's first device).

    GPU/TPU: `memory_stats()['bytes_limit'] - ['bytes_in_use']` (the allocator's limit, less what live arrays
    already hold, such as the dataset). CPU reports no memory stats: the host's available physical memory
    (psutil, else `os.sysconf`), divided among this process's CPU devices, which share it."""
    device = jax.local_devices()[0] if device is None else device
    try:
        stats = device.memory_stats()
    except Exception:  # some backends raise instead of returning None  # noqa: BLE001
        stats = None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    try:
        import psutil

        available = psutil.virtual_memory().available
    except ImportError:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    sharing = sum(d.platform == device.platform for d in jax.local_devices())
    return int(available // max(1, sharing))


class MemoryEstimate(NamedTuple):
    per_member: int  # bytes one member adds (its inputs, outputs and temporaries)
    shared: int  # bytes of the shared (in_axes None) inputs, paid once per device
    source: str  # 'memory_analysis' (XLA's compiled buffer sizes) or 'heuristic'


def _abstract(leaf):
    return jax.ShapeDtypeStruct(np.shape(leaf), leaf.dtype) if hasattr(leaf, "dtype") else leaf


def nbytes(tree) -> int:
    """Bytes of every array in a pytree (typed PRNG keys as their two uint32 words)."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        if _is_key(leaf):
            total += int(np.prod(leaf.shape)) * 8  # two uint32 words per threefry key
        elif hasattr(leaf, "dtype"):
            total += int(np.prod(np.shape(leaf))) * np.dtype(leaf.dtype).itemsize
    return total


def memory_estimate(fn: Callable, *example_args, in_axes: int | None | Sequence[int | None] = 0) -> MemoryEstimate:
    """Memory of the ensemble function `fn(*args)` per member, from compiling it once for the example
    arguments' shapes (nothing runs; arrays or `jax.ShapeDtypeStruct`s both do). `in_axes` says, as for
    `jax.vmap`, which arguments carry the member axis (0) and which are shared (None); bind static arguments
    with `functools.partial`. per_member = (arguments + outputs - donated + temporaries - shared inputs) / M,
    which charges temporaries to the members (an over-estimate, the safe side); without XLA's memory analysis,
    `HEURISTIC_FACTOR` x the member's own input bytes."""
    axes = list(in_axes) if isinstance(in_axes, (list, tuple)) else [in_axes] * len(example_args)
    if len(axes) != len(example_args):
        raise LLJaxError(f"in_axes has {len(axes)} entries for {len(example_args)} arguments")
    if any(a not in (0, None) for a in axes):
        raise LLJaxError(f"in_axes entries must be 0 (member axis) or None (shared), got {axes}")
    member_args = [a for a, ax in zip(example_args, axes) if ax == 0]
    count = member_count(member_args)
    shared = sum(nbytes(a) for a, ax in zip(example_args, axes) if ax is None)
    own = nbytes(member_args)
    compiled = jax.jit(fn).lower(*jax.tree.map(_abstract, example_args)).compile()
    try:
        stats = compiled.memory_analysis()
    except (NotImplementedError, RuntimeError):
        stats = None
    if stats is None:
        return MemoryEstimate(math.ceil(HEURISTIC_FACTOR * own / count), shared, "heuristic")
    total = (stats.argument_size_in_bytes + stats.output_size_in_bytes - stats.alias_size_in_bytes
             + stats.temp_size_in_bytes)
    return MemoryEstimate(math.ceil(max(total - shared, own) / count), shared, "memory_analysis")


def bytes_per_member_estimate(fn: Callable, *example_args, in_axes: int | None | Sequence[int | None] = 0) -> int:
    """Bytes one member of the ensemble function `fn` needs on a device (see `memory_estimate`)."""
    return memory_estimate(fn, *example_args, in_axes=in_axes).per_member


def chunk_size(bytes_per_member: int, device_memory: int | None = None, cap: int | None = None,
               safety: float = 0.5, num_devices: int = 1, shared_bytes: int = 0) -> int:
    """Members per chunk: as many as fill `safety` x `device_memory` (default: `device_memory_bytes()`) after
    the shared inputs, on each of `num_devices` devices the chunk is sharded over; at most `cap`. When the cap
    allows more than one member per device the chunk is a multiple of `num_devices` (no padding). Raises
    LLJaxError when a single member cannot fit even with the whole memory."""
    if bytes_per_member <= 0:
        raise LLJaxError(f"bytes per member must be positive, got {bytes_per_member}")
    if not 0 < safety <= 1:
        raise LLJaxError(f"memory safety factor must be in (0, 1], got {safety}")
    if cap is not None and (int(cap) != cap or cap < 1):
        raise LLJaxError(f"chunk cap must be a positive integer, got {cap}")
    if num_devices < 1:
        raise LLJaxError(f"number of devices must be positive, got {num_devices}")
    memory = device_memory_bytes() if device_memory is None else device_memory
    if bytes_per_member + shared_bytes > memory:
        raise LLJaxError(f"one member needs about {(bytes_per_member + shared_bytes) / 2**30:.2f} GiB but the "
                         f"device has {memory / 2**30:.2f} GiB free; use a smaller model or batch size")
    per_device = max(1, int((safety * memory - shared_bytes) // bytes_per_member))
    chunk = per_device * num_devices
    if cap is not None and cap < chunk:
        chunk = cap if cap < num_devices else cap - cap % num_devices
    return int(chunk)


# ------------------------------------------------------------------------------------------ CPU cache

CPU_MIN_MEMBERS_PER_PASS = 2  # a slice of one member loses the vmapped program's amortised per-op overhead


def cpu_cache_bytes(level: int = 2, root: str = "/sys/devices/system/cpu/cpu0/cache") -> int:
    """One core's level-`level` data cache in bytes, read from Linux sysfs; 1 MiB where unknown."""
    try:
        for folder in sorted(Path(root).glob("index*")):
            read = lambda name: (folder / name).read_text().strip()
            if read("level") == str(level) and read("type") in ("Data", "Unified"):
                size = read("size")
                scale = {"K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30}.get(size[-1:].upper(), 1)
                return int(size.rstrip("KMGkmg")) * scale
    except (OSError, ValueError):
        pass
    return 2 ** 20


def cpu_passes(per_device: int, param_bytes: int, cache_bytes: int | None = None) -> int:
    """In how many slices one after another (`train.train_ensemble(passes=...)`) a CPU device should train its
    `per_device` members of `param_bytes` parameters each: slices as large as possible while their members'
    parameters fit one core's L2 cache (`cache_bytes`, default `cpu_cache_bytes()`), never smaller than
    `CPU_MIN_MEMBERS_PER_PASS` (else as close to it as the divisors of `per_device` allow). On a 2-core EPYC
    with 32 MLPs per device this cuts training time at width 128 by ~20% (slices of 8) and at widths 256 and 512
    by ~40% (2), and leaves widths up to 64 in one pass (benchmarks/RESULTS.md)."""
    cache_bytes = cpu_cache_bytes() if cache_bytes is None else cache_bytes
    most = max(CPU_MIN_MEMBERS_PER_PASS, cache_bytes // max(1, param_bytes))
    sizes = [size for size in range(CPU_MIN_MEMBERS_PER_PASS, per_device + 1) if per_device % size == 0]
    if not sizes:
        return 1
    fitting = [size for size in sizes if size <= most]
    return per_device // (max(fitting) if fitting else min(sizes))


def _concatenate(parts):
    if all(isinstance(p, np.ndarray) for p in parts):
        return np.concatenate(parts)
    return jnp.concatenate(parts)


def map_chunks(fn: Callable, tree_args: Sequence, chunk: int, mesh: Mesh | None = None,
               host: bool = True):
    """`fn(*tree_args)` computed `chunk` members at a time: every argument of the ensemble function `fn` has a
    leading member axis M (bind shared inputs and static arguments beforehand, e.g. with a lambda; put shared
    arrays on the mesh with `replicate`). Every chunk has the same size (the last is padded by repeating its
    last member, the chunk rounded up to a multiple of the mesh size), so a jitted `fn` compiles once. With a
    mesh, each chunk is sharded over it. The outputs (every leaf with a member axis) are cut back to the real
    members and concatenated: as host numpy arrays when `host` (device memory then holds one chunk at a time;
    typed keys stay JAX arrays), else as JAX arrays. Equals `fn(*tree_args)` member for member."""
    args = tuple(tree_args)
    count = member_count(args)
    if int(chunk) != chunk or chunk < 1:
        raise LLJaxError(f"chunk size must be a positive integer, got {chunk}")
    multiple = 1 if mesh is None else mesh.shape[MEMBER_AXIS]
    size = -(-min(int(chunk), count) // multiple) * multiple
    outputs = []
    for start in range(0, count, size):
        piece, real = pad_members(jax.tree.map(lambda leaf: leaf[start:start + size], args), size)
        if mesh is not None:
            piece = shard_members(piece, mesh)
        out = fn(*piece)
        outputs.append(unpad(to_host(out), real) if host else unpad(out, real))
    if len(outputs) == 1:
        return outputs[0]
    return jax.tree.map(lambda *parts: _concatenate(parts), *outputs)


# ------------------------------------------------------------------------------------------ placement

@dataclasses.dataclass(frozen=True)
class Placement:
    """Where a group's ensemble programs run: the member (or pair) axis sharded over `mesh`, at most `cap`
    members per call (None: as many as memory allows, see `chunk_for`)."""

    mesh: Mesh
    cap: int | None = None

    @classmethod
    def default(cls, cap: int | None = None) -> "Placement":
        return cls(member_mesh(), cap)

    def chunk_for(self, count: int, estimate: Callable[[], int] | None = None) -> int:
        """Members per call for `count` members. With no user cap: all of them on a CPU (host memory is large
        and shared), else as many as `chunk_size` fits in device memory by `estimate()`, the bytes one member
        needs."""
        if self.cap is not None:
            return min(self.cap, count)
        if estimate is None or jax.default_backend() == "cpu":
            return count
        return min(count, chunk_size(estimate(), num_devices=self.mesh.size))

    def passes_for(self, count: int, params, strategy: str = "auto", map_chunk: int = 1) -> int:
        """Sequential slices for `train.train_ensemble` when training `count` members (a multiple of the mesh
        size) with parameters `params` (leaves (M, ...)): slices of `map_chunk` members for the `map`
        convolution strategy, else cache-sized slices on a CPU and one pass elsewhere."""
        per_device = count // self.mesh.size
        mapped = conv.passes(strategy, per_device, map_chunk)
        if mapped is not None:
            return mapped
        if jax.default_backend() != "cpu":
            return 1
        return cpu_passes(per_device, nbytes(params) // count)

    def map(self, fn: Callable, *member_args, chunk: int | None = None):
        """`fn(*member_args)` (every argument with a leading member axis; bind shared inputs in `fn`) over
        chunks of members sharded on the mesh; host numpy outputs, member for member equal to one call."""
        count = member_count(member_args)
        return map_chunks(fn, member_args, chunk or self.chunk_for(count), self.mesh)
