"""What every benchmark prints about the machine it ran on."""
import os
import platform


def machine() -> dict:
    """CPU model, cores, JAX version, backend and devices (import JAX, with its flags set, before calling)."""
    import jax

    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": name, "cores": os.cpu_count(), "jax": jax.__version__, "backend": jax.default_backend(),
            "device": str(jax.devices()[0].device_kind), "devices": jax.device_count(),
            "xla_flags": os.environ.get("XLA_FLAGS", ""), "python": platform.python_version()}


def load_average() -> float | None:
    """The 1-minute load average (other work sharing the machine), or None where unknown."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None
