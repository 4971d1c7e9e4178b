"""Data amount (load: fewer examples is a lighter load) x learning rate (temperature), Yang et al. 2021
Section 4.

    python experiments/data_fraction_lr.py --preset quick --out runs/data_fraction_lr
    python experiments/data_fraction_lr.py --preset default --out runs/data_fraction_lr

Each model trains for the same number of steps per epoch on its subset (a small subset wraps around).
"""
import sys

from lljax import cli

PRESETS = {
    "quick": dict(model="mlp", widths=(128,), data_fractions=(0.1, 0.3, 1.0), lrs=(0.03, 0.1, 0.3), seeds=2,
                  epochs=40, curve_epochs=60, hessian_samples=500),
    "default": dict(model="mlp", widths=(128,), data_fractions=(0.05, 0.1, 0.2, 0.4, 0.7, 1.0),
                    lrs=(0.01, 0.03, 0.1, 0.3), seeds=3, epochs=60),
}

if __name__ == "__main__":
    sys.exit(cli.main(description=__doc__.splitlines()[0], presets=PRESETS))
