"""The results folder: its creation and resume check, checkpoints of training state (orbax), atomic writes of
result files, so a killed run resumes and a folder is never left half-written or overwritten.

Layout inside a run folder: `config.json` (the resolved configuration); `checkpoints/group-<g>/<epoch>/` holds
the stacked `MemberState` of group g after `epoch` epochs (only the latest is kept; the last one is the trained
ensemble), or `checkpoints/group-<g>/chunk-<c>/<epoch>/` when the group trains in memory-sized chunks;
finished groups' metrics live in `groups/group-<g>.npz`.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from lljax import sharding
from lljax.errors import LLJaxError


@functools.cache
def _orbax():
    """orbax, imported on the first checkpoint (it takes a second to import)."""
    import orbax.checkpoint as ocp

    # orbax logs every save at INFO level through absl; keep the run's terminal for the progress bar
    logging.getLogger("absl").setLevel(logging.WARNING)
    return ocp


def _manager(path: Path, keep: int | None = 1):
    ocp = _orbax()
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=False)
    return ocp.CheckpointManager(path.absolute(), options=options)


def save_snapshot(path: str | os.PathLike, step: int, tree: Any) -> None:
    """Save a pytree as snapshot `step` beside the others (all are kept); committed atomically by orbax."""
    from lljax import timings

    with timings.section("checkpoint"), _manager(Path(path), keep=None) as manager:
        manager.save(step, args=_orbax().args.StandardSave(tree), force=True)
        manager.wait_until_finished()


def steps(path: str | os.PathLike) -> list[int]:
    """The complete checkpoint (or snapshot) steps under `path`."""
    path = Path(path)
    if not path.is_dir():
        return []
    with _manager(path, keep=None) as manager:
        return sorted(manager.all_steps())


def latest_step(path: str | os.PathLike) -> int | None:
    """The newest complete checkpoint step under `path`, or None (incomplete ones are ignored by orbax)."""
    path = Path(path)
    if not path.is_dir():
        return None
    with _manager(path) as manager:
        return manager.latest_step()


def save(path: str | os.PathLike, step: int, tree: Any) -> None:
    """Save a pytree of arrays as checkpoint `step`, replacing older ones; committed atomically by orbax."""
    from lljax import timings

    with timings.section("checkpoint"), _manager(Path(path)) as manager:
        manager.save(step, args=_orbax().args.StandardSave(tree), force=True)
        manager.wait_until_finished()


def restore(path: str | os.PathLike, step: int, like: Any) -> Any:
    """Restore checkpoint (or snapshot) `step` into the structure, shapes and dtypes of `like`; a damaged
    checkpoint is an LLJaxError naming the folder."""
    folder = Path(path) / str(step)
    try:
        with _manager(Path(path), keep=None) as manager:
            tree = manager.restore(step, args=_orbax().args.StandardRestore(jax.eval_shape(lambda: like)))
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


def load_arrays(path: str | os.PathLike, keys: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """Inverse of `save_arrays` (only `keys`, those present, if given); a damaged file is an LLJaxError naming
    it."""
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files if keys is None or k in keys}
    except Exception as e:
        raise LLJaxError(f"corrupted results file {path} ({type(e).__name__}); delete it to recompute that group")


# ------------------------------------------------------------------------------------------ the run folder

def _read_config(path: Path, config_type):
    return config_type.from_dict(json.loads(path.read_text()))


def prepare_out_dir(config, out_dir: Path, resolved: dict | None = None) -> None:
    """Create the results folder and write config.json, or accept an existing one holding the same
    configuration (to resume) or one that differs only in what is measured (`Config.training_differences`:
    other --metrics or family options; config.json is rewritten and the trained groups are measured again from
    their checkpoints); refuse a folder with another configuration or foreign content. `config` is an
    `lljax.config.Config`; `resolved` (what lljax read from the data and chose: inputs, targets, the CKA probe)
    is written under config.json's key 'resolved', which `Config.from_dict` ignores."""
    config_path = out_dir / "config.json"
    if out_dir.exists():
        if not out_dir.is_dir():
            raise LLJaxError(f"output path {out_dir} exists and is not a folder")
        if config_path.exists():
            try:
                previous = _read_config(config_path, type(config))
            except (ValueError, TypeError, LLJaxError) as e:
                raise LLJaxError(f"{config_path} is unreadable ({str(e).splitlines()[0]}); use a new --out folder")
            if previous.training_differences(config):
                raise LLJaxError(f"{out_dir} holds a run with a different configuration "
                                 f"({', '.join(previous.differences(config))} differ); use a new --out folder or "
                                 "the same settings to resume (only --metrics and the families' options may change)")
            if previous.same_run(config):
                return
        elif any(p.name != "jobs" for p in out_dir.iterdir()):  # jobs/: submitit's logs of a --launcher run
            raise LLJaxError(f"output folder {out_dir} is not empty and holds no lljax run; use a new --out folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    values = config.to_dict() | ({"resolved": resolved} if resolved else {})
    write_atomic(config_path, json.dumps(values, indent=2, sort_keys=True) + "\n")


def prepare_shared_out_dir(config, out_dir: Path, resolved: dict | None = None) -> None:
    """`prepare_out_dir` on process 0; with several processes, every other one then checks that it sees the
    same folder (storage shared by every host, as orbax's multi-host checkpoints need), and all of them raise
    when any check fails (no process is left waiting for the others)."""
    if jax.process_count() == 1:
        return prepare_out_dir(config, out_dir, resolved)
    error = None
    if sharding.is_lead_process():
        try:
            prepare_out_dir(config, out_dir, resolved)
        except LLJaxError as e:
            error = e
    if not sharding.agree(error is None):
        raise error or LLJaxError(f"process 0 refused the results folder {out_dir}; its error says why")
    try:
        seen = _read_config(out_dir / "config.json", type(config)).same_run(config)
    except (OSError, ValueError, TypeError, LLJaxError):
        seen = False
    if not sharding.agree(seen):
        where = "" if seen else f": process {jax.process_index()} does not find the config.json process 0 wrote"
        raise LLJaxError(f"the results folder {out_dir} is not the same folder on every host{where}; put --out "
                         "on storage every host shares")


# ------------------------------------------------------------------------------------------ group claims

CLAIM_STALE_SECONDS = 600.0  # a claim whose holder has not touched it for this long is taken over


def _claim_holder(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _stale(path: Path) -> bool:
    """A claim is stale when its holder (on this host) is gone, or nobody touched it for CLAIM_STALE_SECONDS."""
    import socket

    holder = _claim_holder(path)
    try:
        age = time.time() - path.stat().st_mtime
    except OSError:
        return False
    if holder and holder.get("host") == socket.gethostname():
        try:
            os.kill(int(holder["pid"]), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, ValueError, KeyError):
            pass
    return age > CLAIM_STALE_SECONDS


def claim(path: str | os.PathLike) -> bool:
    """Claim a unit of work (a group) for this process: True when it is now ours (created atomically, or taken
    over from a holder that died: the stale claim is renamed away first, so only one process can win it)."""
    import socket

    path = Path(path)
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            if not _stale(path):
                return False
            try:
                os.rename(path, path.with_name(f"{path.name}.stale.{os.getpid()}"))
            except OSError:
                return False  # another process took it over first
            continue
        with os.fdopen(fd, "w") as f:
            json.dump({"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}, f)
        return True
    return False


def heartbeat(path: str | os.PathLike) -> None:
    """Tell other workers that the claim's holder is alive (its modification time)."""
    try:
        os.utime(path)
    except OSError:
        pass


def release(path: str | os.PathLike) -> None:
    try:
        os.remove(path)
    except OSError:
        pass
