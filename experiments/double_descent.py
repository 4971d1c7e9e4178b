"""Double descent in width with label noise: test error against width, one curve per label-noise level
(figures/double_descent.png), with the phases and metrics beneath it (Yang et al. 2021 Section 5).

    python experiments/double_descent.py --preset quick --out runs/double_descent
    python experiments/double_descent.py --preset default --out runs/double_descent

With noisy labels the test error of a long-trained model peaks near the width where it can just fit its
training labels (the interpolation threshold), then falls again.
"""
import sys

from lljax import cli

PRESETS = {
    "quick": dict(model="mlp", widths=(2, 4, 8, 16, 32, 64, 128), label_noise=(0.0, 0.2), lrs=(0.05,), seeds=2,
                  epochs=30, schedule="constant", hessian_samples=500, metrics=("loss", "hessian", "cka", "l2")),
    "default": dict(model="mlp", widths=(2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 256),
                    label_noise=(0.0, 0.1, 0.2), lrs=(0.05,), seeds=3, epochs=120, schedule="constant"),
}

if __name__ == "__main__":
    sys.exit(cli.main(description=__doc__.splitlines()[0], presets=PRESETS))
