"""Process set-up before a run: one JAX CPU device per core, and JAX's persistent compilation cache."""
from __future__ import annotations

import os

import jax

from lljax import data


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


def enable_compilation_cache() -> None:
    """JAX's persistent compilation cache in the user cache folder, so repeated runs skip compilation."""
    cache = data.default_cache_dir() / "jax"
    cache.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(cache))
    # every program, however quick to compile: a warm run then compiles nothing (28 of 31 programs of a small
    # study took under 0.5 s each and were compiled again by every process)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
