"""Checkpoints of training state (orbax) and atomic writes of result files, so a killed run resumes.

Layout inside a run folder: `checkpoints/group-<g>/<epoch>/` holds the stacked `MemberState` of group g after
`epoch` epochs (only the latest is kept; the last one is the trained ensemble), or
`checkpoints/group-<g>/chunk-<c>/<epoch>/` when the group trains in memory-sized chunks; finished groups'
metrics live in `groups/group-<g>.npz`.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from lljax.errors import LLJaxError

# orbax logs every save at INFO level through absl; keep the run's terminal for the progress bar
logging.getLogger("absl").setLevel(logging.WARNING)


def _manager(path: Path) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=1, enable_async_checkpointing=False)
    return ocp.CheckpointManager(path.absolute(), options=options)


def latest_step(path: str | os.PathLike) -> int | None:
    """The newest complete checkpoint step under `path`, or None (incomplete ones are ignored by orbax)."""
    path = Path(path)
    if not path.is_dir():
        return None
    with _manager(path) as manager:
        return manager.latest_step()


def save(path: str | os.PathLike, step: int, tree: Any) -> None:
    """Save a pytree of arrays as checkpoint `step`, replacing older ones; committed atomically by orbax."""
    with _manager(Path(path)) as manager:
        manager.save(step, args=ocp.args.StandardSave(tree), force=True)
        manager.wait_until_finished()


def restore(path: str | os.PathLike, step: int, like: Any) -> Any:
    """Restore checkpoint `step` into the structure, shapes and dtypes of `like`; a damaged checkpoint is an
    LLJaxError naming the folder."""
    folder = Path(path) / str(step)
    try:
        with _manager(Path(path)) as manager:
            tree = manager.restore(step, args=ocp.args.StandardRestore(jax.eval_shape(lambda: like)))
    except Exception as e:
        raise LLJaxError(f"corrupted checkpoint {folder} ({type(e).__name__}); delete it to retrain that group")
    if jax.tree.structure(tree) != jax.tree.structure(like):
        raise LLJaxError(f"corrupted checkpoint {folder}: its structure does not match the model")
    return tree


def write_atomic(path: str | os.PathLike, text: str) -> None:
    """Write a text file so that readers see either the old or the complete new content."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_arrays(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    """np.savez a dict of arrays atomically."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def load_arrays(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Inverse of `save_arrays`; a damaged file is an LLJaxError naming it."""
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except Exception as e:
        raise LLJaxError(f"corrupted results file {path} ({type(e).__name__}); delete it to recompute that group")
