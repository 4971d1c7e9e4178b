"""Robustness along paths (Zhao et al., ICLR 2020) across the width x learning-rate phase diagram on MNIST-1D:
adversarial accuracy and the input-Hessian eigenvalue per model, and the robustness barrier (mode connectivity of
the adversarial test error along each pair's fitted Bezier curve) beside the clean phases.

    python experiments/robustness.py --preset quick --out runs/robustness      # under a minute on a 2-core CPU
    python experiments/robustness.py --preset default --out runs/robustness    # about 6 minutes

Both presets run 'loss', 'curves', 'cka', 'l2' (the phases) and 'robust' (and with it 'robust_curves'): an
L-infinity PGD attack of radius 0.1 (MNIST-1D is standardised: 0.1 standard deviations per feature), 10 steps of
0.025, from a random start, on the first test examples. What it showed on this machine: README "Robustness along
paths".
"""
import sys

from lljax import cli

COMMON = dict(model="mlp", batch_sizes=(64,), metrics=("loss", "curves", "cka", "l2", "robust"),
              robust_epsilon=0.1, robust_steps=10, robust_norm="linf")

PRESETS = {
    # <= 2 minutes: 3 widths x 3 learning rates x 2 seeds, short curve fits, 11 points along t
    "quick": dict(COMMON, widths=(8, 32, 128), lrs=(0.03, 0.1, 0.3), seeds=2, epochs=30, curve_epochs=30,
                  curve_points=11, cka_samples=256, robust_samples=128, robust_hessian_steps=10),
    # <= 10 minutes: 5 widths x 4 learning rates x 2 seeds, the width_lr quick preset's training and curve fits
    "default": dict(COMMON, widths=(4, 8, 32, 128, 256), lrs=(0.01, 0.03, 0.1, 0.3), seeds=2, epochs=40,
                    curve_epochs=60, curve_points=11, cka_samples=256, robust_samples=256, robust_hessian_steps=20),
}

if __name__ == "__main__":
    sys.exit(cli.main(description=__doc__.splitlines()[0], presets=PRESETS))
