"""Shared test set-up: a private cache folder (generated data never lands in the user's cache) and small
helpers. Numerical tests opt into float64 with `jax.enable_x64(True)` where they need it."""
import os
import tempfile

import pytest

os.environ.setdefault("LLJAX_CACHE", os.path.join(tempfile.gettempdir(), "lljax-test-cache"))
# JAX's persistent compilation cache, shared by the test workers and the subprocesses tests start (read by JAX
# from the environment at start-up): a program compiled once is not compiled again elsewhere in the run
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(os.environ["LLJAX_CACHE"], "jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")


# dtype-keyed tolerances for comparing a vmapped result with a loop of single results
TOLERANCES = {"float32": dict(rtol=1e-5, atol=1e-6), "float64": dict(rtol=1e-12, atol=1e-12)}


@pytest.fixture(scope="session")
def mnist1d():
    from lljax import data

    return data.mnist1d()


# Each XLA:CPU executable JAX keeps in memory holds about eight memory mappings: a test worker that kept every
# program it compiled passed the kernel's limit (vm.max_map_count, 65530) within one run, and its next compilation
# died with a segmentation fault. After a test that leaves more than this many mappings, JAX's in-memory caches
# are dropped (the persistent cache still spares most recompilation).
MAX_MAPPINGS = 40_000


def _mappings() -> int:
    try:
        with open("/proc/self/maps") as f:
            return sum(1 for _ in f)
    except OSError:  # not Linux
        return 0


@pytest.fixture(autouse=True)
def _release_compiled_programs():
    yield
    if _mappings() > MAX_MAPPINGS:
        import gc

        import jax

        jax.clear_caches()
        gc.collect()


# A test that hangs (e.g. a runtime deadlock inside XLA, which no Python signal can interrupt) must fail the run
# quickly instead of eating CI's time limit: dump every thread's stack and exit after this many seconds.
TEST_TIME_LIMIT_S = 600


@pytest.fixture(autouse=True)
def _watchdog():
    import faulthandler

    faulthandler.dump_traceback_later(TEST_TIME_LIMIT_S, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()
