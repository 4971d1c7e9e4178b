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


def trained_mlps(n: int, width: int, epochs: int):
    """(MNIST-1D, the TrainSpec, the trained ensemble state) of n MLPs of `width` trained `epochs` by lljax (lr
    0.05, weight decay 5e-4, momentum 0.9, batch 64, the step schedule): the weights the side-by-side
    comparisons hand to the reference tools."""
    import jax
    import jax.numpy as jnp

    from lljax import data, models, train

    ds = data.mnist1d()
    spec = train.TrainSpec(models.ModelSpec("mlp", width), 64, epochs, len(ds.y_train), "step")
    hyper = train.Hyper(*(jnp.full((n,), v, jnp.float32) for v in (0.05, 5e-4, 0.9, 1.0, 0.0)))
    state, member = train.init_ensemble(spec, jax.random.split(jax.random.key(0), n), hyper, jnp.asarray(ds.y_train),
                                        ds.x_train.shape[1:])
    return ds, spec, train.train_ensemble(spec, state, member, jnp.asarray(ds.x_train), 0, epochs)
