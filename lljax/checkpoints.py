"""Saved models read one weight at a time, with no data and no model code: an lljax run folder (every member), an
orbax checkpoint, a Flax msgpack file (as Flax models are saved for the model hubs), a safetensors file, an .npz
of named arrays. `open_models(path)` lists what a checkpoint holds (names, shapes, dtypes) before any array is
read; `Tensor.load()` reads one array.

| format      | recognised by                                        | read                                       |
|-------------|------------------------------------------------------|--------------------------------------------|
| run         | a folder with config.json and checkpoints/           | orbax, one group's last checkpoint at a time |
| orbax       | a folder of orbax metadata (a step, or the manager's  | `orbax.checkpoint`, the newest step, whole  |
|             | root: its newest step)                                |                                            |
| safetensors | 8-byte little-endian header size, then a JSON header  | the header parsed; each tensor memory-mapped |
| npz         | a zip archive (PK) with .npy members                  | `np.load`, one member at a time            |
| msgpack     | a msgpack map (first byte 0x80-0x8f, 0xde or 0xdf)    | `flax.serialization.msgpack_restore`, whole |

The format is told by content (the file's first bytes, the folder's files), not by its extension. Names are the
tensors' own (safetensors, npz) or the pytree paths joined with '/' (msgpack, orbax, run folders). A file
that is damaged (a truncated header, offsets past its end, a broken archive) is a one-line LLJaxError.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import struct
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from lljax.errors import LLJaxError

FORMATS = ("run", "orbax", "safetensors", "npz", "msgpack")
# the layout a format's weights are in when their names do not say (`lljax.checkpoint_spectra`'s rule)
DEFAULT_LAYOUTS = {"run": "flax", "orbax": "flax", "msgpack": "flax", "safetensors": "torch", "npz": "flax"}
_SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
                       "I16": np.int16, "I8": np.int8, "U8": np.uint8, "U16": np.uint16, "U32": np.uint32,
                       "U64": np.uint64, "BOOL": np.bool_}
_MAX_HEADER = 100_000_000  # safetensors' own limit on the JSON header


@dataclasses.dataclass(frozen=True)
class Tensor:
    """One stored array: its name, shape and dtype (known before reading), and `load()` -> np.ndarray."""

    name: str
    shape: tuple
    dtype: np.dtype
    load: Callable[[], np.ndarray] = dataclasses.field(repr=False, compare=False)


@dataclasses.dataclass(frozen=True)
class Model:
    """The arrays of one saved model; `info` labels it (a run folder's member: its index and knobs), else {}."""

    tensors: list
    info: dict = dataclasses.field(default_factory=dict)


def _is_orbax_folder(path: Path) -> bool:
    markers = ("_CHECKPOINT_METADATA", "_METADATA", "manifest.ocdbt", "checkpoint", "commit_success.txt")
    if any((path / m).exists() for m in markers):
        return True
    steps = [p for p in path.iterdir() if p.is_dir() and p.name.isdigit()]
    return any(_is_orbax_folder(p) for p in steps)


def detect(path: str | os.PathLike) -> str:
    """The format of a checkpoint (module docstring), from its content; one-line LLJaxError if unknown."""
    path = Path(path)
    if not path.exists():
        raise LLJaxError(f"no such file or folder: {path}")
    if path.is_dir():
        if (path / "config.json").is_file() and (path / "checkpoints").is_dir():
            return "run"
        if _is_orbax_folder(path):
            return "orbax"
        raise LLJaxError(f"{path} is a folder but neither an lljax run folder nor an orbax checkpoint")
    with open(path, "rb") as f:
        head = f.read(16)
    if head[:4] == b"PK\x03\x04" or head[:4] == b"PK\x05\x06":
        return "npz"
    if len(head) >= 9:
        size = struct.unpack("<Q", head[:8])[0]
        if 2 <= size <= min(_MAX_HEADER, path.stat().st_size - 8) and head[8:9] == b"{":
            return "safetensors"
    if head[:1] and (0x80 <= head[0] <= 0x8F or head[0] in (0xDE, 0xDF)):
        return "msgpack"
    if path.suffix == ".safetensors":
        raise LLJaxError(f"corrupted safetensors file {path}: its header is truncated or not JSON")
    raise LLJaxError(f"unknown checkpoint format: {path} (lljax reads {', '.join(FORMATS)})")


def open_models(path: str | os.PathLike) -> tuple[str, list[Model]]:
    """(format, the models it holds): one for a file or an orbax checkpoint, one per member for a run folder.
    Nothing but headers and metadata is read yet."""
    fmt = detect(path)
    path = Path(path)
    reader = {"run": _run_folder, "orbax": _orbax_models, "safetensors": _safetensors_models, "npz": _npz_models,
              "msgpack": _msgpack_models}[fmt]
    return fmt, reader(path)


# ------------------------------------------------------------------------------------------ safetensors

def safetensors_header(path: Path) -> tuple[int, dict]:
    """(the data's offset in the file, the header's tensor entries) of a safetensors file, checked against its
    size."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise LLJaxError(f"corrupted safetensors file {path}: shorter than its 8-byte header size")
        n = struct.unpack("<Q", head)[0]
        if n > min(_MAX_HEADER, size - 8):
            raise LLJaxError(f"corrupted safetensors file {path}: a header of {n} bytes in a file of {size}")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise LLJaxError(f"corrupted safetensors file {path}: its header is not JSON") from None
    if not isinstance(header, dict):
        raise LLJaxError(f"corrupted safetensors file {path}: its header is not a JSON object")
    header.pop("__metadata__", None)
    start = 8 + n
    for name, entry in header.items():
        try:
            begin, end = (int(v) for v in entry["data_offsets"])
            shape = tuple(int(d) for d in entry["shape"])
            dtype = entry["dtype"]
        except (KeyError, TypeError, ValueError):
            raise LLJaxError(f"corrupted safetensors file {path}: a bad header entry for {name!r}") from None
        itemsize = 2 if dtype == "BF16" else np.dtype(_SAFETENSORS_DTYPES.get(dtype, np.uint8)).itemsize
        if not 0 <= begin <= end <= size - start or end - begin != math.prod(shape) * itemsize:
            raise LLJaxError(f"corrupted safetensors file {path}: tensor {name!r} lies outside the file or its "
                             "size does not match its shape (a truncated file?)")
    return start, header


def _safetensors_models(path: Path) -> list[Model]:
    start, header = safetensors_header(path)
    tensors = []
    for name, entry in sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]):
        shape, code = tuple(entry["shape"]), entry["dtype"]
        if code == "BF16":
            import ml_dtypes

            dtype = np.dtype(ml_dtypes.bfloat16)
        elif code in _SAFETENSORS_DTYPES:
            dtype = np.dtype(_SAFETENSORS_DTYPES[code])
        else:
            continue  # float8 and other exotic types: not read
        offset = start + entry["data_offsets"][0]

        def load(offset=offset, dtype=dtype, shape=shape):
            if math.prod(shape) == 0:
                return np.zeros(shape, dtype)
            return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)

        tensors.append(Tensor(name, shape, dtype, load))
    return [Model(tensors)]


# ------------------------------------------------------------------------------------------ npz

def _npz_models(path: Path) -> list[Model]:
    try:
        archive = np.load(path, allow_pickle=False)
        names = list(archive.files)
        tensors = []
        for name in names:  # shapes from each member's .npy header, without reading its data
            with archive.zip.open(f"{name}.npy") as f:
                version = np.lib.format.read_magic(f)
                read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                    np.lib.format.read_array_header_2_0
                shape, _, dtype = read_header(f)
            tensors.append(Tensor(name, tuple(shape), np.dtype(dtype), lambda name=name: archive[name]))
    except (zipfile.BadZipFile, ValueError, OSError, KeyError, EOFError) as e:
        raise LLJaxError(f"corrupted npz file {path} ({type(e).__name__})") from None
    return [Model(tensors)]


# ------------------------------------------------------------------------------------------ pytrees

def _flatten(tree: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(path 'a/b/c', leaf) of every array of a nested dict/list pytree."""
    if isinstance(tree, dict):
        return [item for k, v in tree.items() for item in _flatten(v, f"{prefix}{k}/")]
    if isinstance(tree, (list, tuple)):
        return [item for i, v in enumerate(tree) for item in _flatten(v, f"{prefix}{i}/")]
    if tree is None or not hasattr(tree, "shape"):
        return []
    return [(prefix[:-1], tree)]


def _tree_model(tree: Any, info: dict | None = None) -> Model:
    return Model([Tensor(name, tuple(np.shape(leaf)), np.dtype(leaf.dtype), lambda leaf=leaf: np.asarray(leaf))
                  for name, leaf in _flatten(tree)], info or {})


def _msgpack_models(path: Path) -> list[Model]:
    from flax import serialization

    try:
        tree = serialization.msgpack_restore(path.read_bytes())
    except Exception as e:  # noqa: BLE001 -- msgpack's errors have no common base
        raise LLJaxError(f"corrupted msgpack file {path} ({type(e).__name__})") from None
    if not isinstance(tree, dict):
        raise LLJaxError(f"{path} is a msgpack file but not a Flax state dict")
    return [_tree_model(tree)]


def _orbax():
    import logging

    from lljax import store

    ocp = store._orbax()
    logging.getLogger("absl").setLevel(logging.ERROR)  # orbax warns of metadata files a bare item lacks
    return ocp


def _orbax_item(path: Path) -> Path:
    """The item folder of an orbax checkpoint given as an item folder, a step folder holding one item
    ('default'), or a CheckpointManager's root (its newest step)."""
    steps = sorted((int(p.name), p) for p in path.iterdir() if p.is_dir() and p.name.isdigit())
    if steps and not (path / "_METADATA").exists():
        path = steps[-1][1]
    items = [p for p in path.iterdir() if p.is_dir() and (p / "_METADATA").exists()]
    if not (path / "_METADATA").exists() and len(items) == 1:
        path = items[0]
    return path


def _orbax_call(path: Path, fn: Callable) -> Any:
    try:
        with _orbax().PyTreeCheckpointer() as checkpointer:
            return fn(checkpointer, path.absolute())
    except Exception as e:  # noqa: BLE001 -- orbax and tensorstore raise many types
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise LLJaxError(f"unreadable orbax checkpoint {path} ({type(e).__name__}: {first})") from None


def _orbax_metadata(item: Path) -> Any:
    """The pytree of an orbax item's array metadata (shape, dtype), nothing restored."""
    def read(checkpointer, path):
        tree = checkpointer.metadata(path)
        tree = getattr(tree, "item_metadata", tree)
        return getattr(tree, "tree", tree)

    return _orbax_call(item, read)


def _orbax_restore(item: Path) -> Any:
    """An orbax item as a pytree of numpy arrays."""
    import jax

    ocp = _orbax()
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), _orbax_metadata(item))
    return _orbax_call(item, lambda c, path: c.restore(path, args=ocp.args.PyTreeRestore(restore_args=restore_args)))


def _orbax_models(path: Path) -> list[Model]:
    """An orbax checkpoint: shapes from its metadata; the whole tree restored when the first array is read."""
    item = _orbax_item(path)
    cache: dict = {}

    def leaf(name):
        if "tree" not in cache:
            cache["tree"] = dict(_flatten(_orbax_restore(item)))
        return cache["tree"][name]

    return [Model([Tensor(name, tuple(meta.shape), np.dtype(meta.dtype), lambda name=name: leaf(name))
                   for name, meta in _flatten(_orbax_metadata(item))])]


# ------------------------------------------------------------------------------------------ lljax run folders

def _run_folder(path: Path) -> list[Model]:
    """Every trained member of a run folder: each group's last checkpoint (`lljax.store`), the member axis split,
    `params` only. A group's checkpoint is restored when its first member is read."""
    from lljax import grid as grids
    from lljax.config import Config

    try:
        config = Config.from_dict(json.loads((path / "config.json").read_text()))
    except (OSError, ValueError, TypeError, LLJaxError) as e:
        raise LLJaxError(f"{path / 'config.json'} is unreadable ({str(e).splitlines()[0] if str(e) else e})")
    members = grids.grid_members(config.knob_values(), config.seeds)
    models, cache = [], {}
    for group in grids.group_members(members):
        folder = path / "checkpoints" / f"group-{group.index}"
        chunks = sorted((p for p in folder.glob("chunk-*") if p.is_dir()), key=lambda p: int(p.name[6:]))
        sources = chunks or [folder]
        if not any(_latest(s) is not None for s in sources):
            continue  # an unfinished run: this group is not trained yet
        items = []
        for source in sources:
            step = _latest(source)
            if step is None:
                raise LLJaxError(f"{source} holds no finished checkpoint (an unfinished run?)")
            items.append(_orbax_item(source / str(step)))
        shapes = _flatten(_orbax_metadata(items[0])["params"])
        size = int(shapes[0][1].shape[0]) if chunks else None  # members per (padded) chunk
        for j, index in enumerate(group.members):
            c, i = (j // size, j % size) if size else (0, j)
            member = members[index]
            info = {"member": index, **grids.knob_row(member), "seed": member.seed}
            tensors = [Tensor(name, tuple(meta.shape)[1:], np.dtype(meta.dtype),
                              lambda name=name, item=items[c], i=i: np.asarray(_params(item, cache)[name][i]))
                       for name, meta in shapes]
            models.append(Model(tensors, info))
    if not models:
        raise LLJaxError(f"{path} holds no trained checkpoint (checkpoints/group-*/<epoch>/)")
    return models


def _params(item: Path, cache: dict) -> dict:
    """The stacked params of one checkpoint (name -> array), one checkpoint in memory at a time."""
    if item not in cache:
        cache.clear()
        cache[item] = dict(_flatten(_orbax_restore(item)["params"]))
    return cache[item]


def _latest(folder: Path) -> int | None:
    from lljax import store

    return store.latest_step(folder)
