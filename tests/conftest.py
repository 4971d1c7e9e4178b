"""Shared test set-up: a private cache folder (generated data never lands in the user's cache) and small
helpers. Numerical tests opt into float64 with `jax.enable_x64(True)` where they need it."""
import os
import tempfile

import pytest

os.environ.setdefault("LLJAX_CACHE", os.path.join(tempfile.gettempdir(), "lljax-test-cache"))
# JAX's persistent compilation cache, one per test worker and shared with the subprocesses its tests start (read
# by JAX from the environment at start-up): a program compiled once is not compiled again by that worker. Not
# shared between workers: JAX writes an entry in place, without a lock, and a worker that read another's
# half-written entry crashed the run (a segmentation fault in two workers of one CI run).
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    os.environ["LLJAX_CACHE"], "jax-" + os.environ.get("PYTEST_XDIST_WORKER", "main")))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")


# dtype-keyed tolerances for comparing a vmapped result with a loop of single results
TOLERANCES = {"float32": dict(rtol=1e-5, atol=1e-6), "float64": dict(rtol=1e-12, atol=1e-12)}


@pytest.fixture(scope="session")
def mnist1d():
    from lljax import data

    return data.mnist1d()


# A test that hangs (e.g. a runtime deadlock inside XLA, which no Python signal can interrupt) must fail the run
# quickly instead of eating CI's time limit: dump every thread's stack and exit after this many seconds.
TEST_TIME_LIMIT_S = 600


@pytest.fixture(autouse=True)
def _watchdog():
    import faulthandler

    faulthandler.dump_traceback_later(TEST_TIME_LIMIT_S, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()
