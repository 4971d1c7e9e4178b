"""Whole grids as independent jobs: shards of the groups, local worker processes, SLURM job arrays (submitit).

A grid is many independent groups, so its scale-out needs no collective: `--shard I/N` runs shard I of N (a
deterministic assignment balanced by each group's estimated cost, longest first onto the least-loaded shard)
into a shared `--out`; every group is claimed before it is computed (`store.claim`: an atomic file, taken over
when its holder died), so any number of shards or workers may run at once and none computes a group twice. Each
finished group lands atomically in groups/; whoever finishes the last group writes the tables and the report,
which `lljax report --out DIR` also does (or names the missing groups). `--workers K` runs K shards as local
processes with a share of the machine each; `--launcher slurm` submits the shards as a SLURM job array through
submitit (`--launcher local`: submitit's local executor, the same code path, for testing). Workers and jobs get
the study as the command resolved it and call the pipeline (`run_shard`), not the command line. See
docs/distributed.md for when to use these and when `jax.distributed`.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lljax import pipeline, runtime
from lljax.config import Config
from lljax.errors import LLJaxError, exit_status
from lljax.shards import parse_shard


def _gpu_count() -> int:
    """GPUs on this machine (nvidia-smi), without starting JAX in the parent."""
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
        return sum(line.startswith("GPU ") for line in out.stdout.splitlines()) if out.returncode == 0 else 0
    except (OSError, subprocess.SubprocessError):
        return 0


def worker_environments(workers: int) -> list[tuple[dict, list[int] | None]]:
    """(environment, CPU cores) of each local worker: one GPU each where there are several, a share of the one
    GPU's memory (XLA_PYTHON_CLIENT_MEM_FRACTION) where there is one, else a share of the CPU cores with as many
    JAX devices as one process has, so its groups compute exactly what one process computes."""
    gpus = _gpu_count()
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    out = []
    for w in range(workers):
        env = dict(os.environ)
        if gpus > 1:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in range(gpus) if g % workers == w)
            out.append((env, None))
        elif gpus == 1:
            env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{0.9 / workers:.3f}"
            out.append((env, None))
        else:
            # on its share of the cores a worker keeps the JAX devices a single process would have (one per core
            # of the machine, or what XLA_FLAGS / JAX_NUM_CPU_DEVICES ask): each group is then the same program,
            # member for member, as in one process, and gives the same numbers
            env["JAX_PLATFORMS"] = "cpu"
            out.append((env, cores[w::workers] or cores[:1]))
    return out


CORES_ENV = "LLJAX_WORKER_CORES"  # a local worker's CPU cores ('0,2'), set by `run_workers`, applied by `main`


def progress_file(out_dir: str | os.PathLike, shard: int) -> Path:
    return Path(out_dir) / "groups" / ".progress" / f"shard-{shard}.json"


def worker_command(config: Config, out_dir: str | os.PathLike, shard: int, shards: int) -> list[str]:
    """The command of one local worker: this module's `main`, given the study as resolved (so a script's own
    presets reach the workers) and its shard."""
    return [sys.executable, "-m", "lljax.jobs", "--config", json.dumps(config.to_dict()), "--out", str(out_dir),
            "--shard", f"{shard}/{shards}"]


def run_workers(config: Config, workers: int, out_dir: str | os.PathLike, show_progress: bool = True) -> int:
    """Run `workers` shards of the study as local processes (`worker_command`), one progress bar over all of
    them; Ctrl-C stops them all (everything stays resumable). Returns the exit status."""
    from lljax.progress import Progress

    procs = []
    for w, (env, cores) in enumerate(worker_environments(workers)):
        env["LLJAX_PROGRESS_FILE"] = str(progress_file(out_dir, w))
        if cores:  # the worker pins itself (`main`): no Python between fork and exec in this threaded process
            env[CORES_ENV] = ",".join(map(str, cores))
        procs.append(subprocess.Popen(worker_command(config, out_dir, w, workers), env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    bar = Progress(1.0, enabled=show_progress)
    try:
        while any(p.poll() is None for p in procs):
            time.sleep(1.0)
            fractions = []
            for w in range(workers):
                try:
                    state = json.loads(progress_file(out_dir, w).read_text())
                    fractions.append(state["done"] / max(state["total"], 1e-9))
                except (OSError, ValueError, KeyError):
                    fractions.append(0.0)
            bar.update(float(np.mean(fractions)) - bar.done, f"{workers} workers, "
                       f"{sum(p.poll() is not None for p in procs)} finished")
    except KeyboardInterrupt:
        for p in procs:
            p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        bar.close()
        print("\ninterrupted: run the same command again to resume", file=sys.stderr)
        return 130
    bar.close()
    outputs = [p.communicate() for p in procs]
    failed = [(w, p.returncode, err) for w, (p, (_, err)) in enumerate(zip(procs, outputs)) if p.returncode]
    for w, code, err in failed:
        last = [line for line in err.strip().splitlines() if line.strip()][-1:] or [f"exit status {code}"]
        print(f"worker {w}: {last[0]}", file=sys.stderr)
    if failed:
        return 2 if all(code == 2 for _, code, _ in failed) else 1
    summary = [line for out, _ in outputs for line in out.splitlines() if line.startswith(("lljax:", "best mean"))]
    print("\n".join(summary[-2:]) if summary else f"{workers} workers finished")
    return 0


def run_shard(config: dict[str, Any], out_dir: str | os.PathLike, shard: int, shards: int) -> None:
    """Shard `shard` of `shards` of the study `config` (`Config.to_dict`) into `out_dir`: the pipeline itself,
    in a process of its own (a local worker, a job of an array); raises LLJaxError for bad input."""
    runtime.use_all_cpu_cores()
    runtime.enable_compilation_cache()
    pipeline.run(Config.from_dict(config), out_dir, progress=False, shard=(shard, shards))


def shard_job(config: dict[str, Any], out_dir: str, shard: int, shards: int) -> None:
    """One job of a job array (what submitit runs on a node): `run_shard`, its bad input as an 'error: ' line
    on stderr (what `submit` reports) before the job fails."""
    try:
        run_shard(config, out_dir, shard, shards)
    except LLJaxError as e:
        print(f"error: {e}", file=sys.stderr)
        raise


def submit(config: Config, out_dir: str | os.PathLike, shards: int, launcher: str, slurm: dict,
           wait: bool = False) -> int:
    """Submit `shards` shards of the study as a job array through submitit ('slurm', or 'local' for its
    local executor); jobs requeue on preemption and time-out (submitit's checkpointing of the call). With `wait`
    (always for 'local'), wait for every job and report failures."""
    try:
        import submitit
    except ImportError:
        raise LLJaxError("--launcher needs submitit: pip install submitit") from None
    folder = Path(out_dir) / "jobs"
    executor = submitit.AutoExecutor(folder=folder, cluster=None if launcher == "slurm" else "local")
    parameters = {"timeout_min": int(slurm.get("time") or 60)}
    if launcher == "slurm":
        wanted = (("slurm_partition", "partition"), ("gpus_per_node", "gpus_per_task"),
                  ("cpus_per_task", "cpus_per_task"), ("mem_gb", "mem_gb"),
                  ("slurm_array_parallelism", "array_parallelism"))
        parameters.update({name: slurm[key] for name, key in wanted if slurm.get(key) is not None})
    executor.update_parameters(name="lljax", **parameters)
    where = str(Path(out_dir).resolve())  # a job may start in another folder than this command
    jobs = executor.map_array(shard_job, [config.to_dict()] * shards, [where] * shards, list(range(shards)),
                              [shards] * shards)
    print(f"submitted {len(jobs)} jobs ({launcher}): {', '.join(str(j.job_id) for j in jobs[:5])}"
          f"{', ...' if len(jobs) > 5 else ''}; logs in {folder}")
    if not (wait or launcher == "local"):
        return 0
    codes = []
    for job in jobs:
        try:
            job.result()
            codes.append(0)
        except Exception:  # noqa: BLE001 -- a job's failure, reported in one line from its log
            try:
                lines = Path(job.paths.stderr).read_text().splitlines()
            except OSError:
                lines = []
            errors = [line for line in lines if line.startswith("error: ")]
            codes.append(2 if errors else 1)
            print(f"job {job.job_id}: {errors[0] if errors else 'failed; see ' + str(job.paths.stderr)}",
                  file=sys.stderr)
    return max(codes, default=0)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m lljax.jobs --config JSON --out DIR --shard I/N`: a local worker (`worker_command`); bad input
    is one 'error: ' line and exit status 2."""
    p = argparse.ArgumentParser(prog="python -m lljax.jobs", description="One shard of a study (a local worker).")
    p.add_argument("--config", required=True, help="the study, as JSON (Config.to_dict)")
    p.add_argument("--out", required=True)
    p.add_argument("--shard", required=True, help="I/N")
    args = p.parse_args(argv)
    cores = os.environ.get(CORES_ENV)
    if cores and hasattr(os, "sched_setaffinity"):  # before JAX's backend starts its threads
        os.sched_setaffinity(0, [int(c) for c in cores.split(",")])

    def command():
        try:
            config = json.loads(args.config)
        except ValueError as e:
            raise LLJaxError(f"--config is not JSON: {e}") from None
        run_shard(config, args.out, *parse_shard(args.shard))

    return exit_status(command)


if __name__ == "__main__":
    sys.exit(main())
