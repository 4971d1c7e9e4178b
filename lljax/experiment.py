"""A whole study from Python, as the command line runs it (the scripted-experiment entry point).

    from lljax import experiment
    experiment.run(experiment.Config(widths=(8, 32), lrs=(0.02, 0.1), seeds=2, epochs=20), "runs/api")
    experiment.run(config, "runs/mine", model=my_factory, dataset=data.Dataset.from_arrays(...), loss=losses.mse)

`Config` and `PRESETS` live in `lljax.config`, `run` in `lljax.pipeline`; this module gathers them.
"""
from lljax.config import PRESETS, Config, validate
from lljax.pipeline import run
from lljax.runtime import enable_compilation_cache, use_all_cpu_cores

__all__ = ["Config", "PRESETS", "validate", "run", "enable_compilation_cache", "use_all_cpu_cores"]
