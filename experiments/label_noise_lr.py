"""Label noise (load) x learning rate (temperature), Yang et al. 2021 Section 4: corrupted labels make the
task harder for a fixed model, moving points from the fitted phases towards the under-fitted ones.

    python experiments/label_noise_lr.py --preset quick --out runs/label_noise_lr
    python experiments/label_noise_lr.py --preset default --out runs/label_noise_lr

Training metrics are on each model's own (noisy) labels; test metrics on the clean test set.
"""
import sys

from lljax import cli

PRESETS = {
    "quick": dict(model="mlp", widths=(128,), label_noise=(0.0, 0.2, 0.4), lrs=(0.03, 0.1, 0.3), seeds=2,
                  epochs=40, curve_epochs=60, hessian_samples=500),
    "default": dict(model="mlp", widths=(128,), label_noise=(0.0, 0.1, 0.2, 0.3, 0.4, 0.6),
                    lrs=(0.01, 0.03, 0.1, 0.3), seeds=3, epochs=60),
}

if __name__ == "__main__":
    sys.exit(cli.main(description=__doc__.splitlines()[0], presets=PRESETS))
