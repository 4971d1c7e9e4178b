"""The paper's main figure: width (load) x batch size (temperature), Yang et al. 2021 Figure 2.

    python experiments/width_batch_size.py --preset quick --out runs/width_batch_size      # a few minutes, CPU
    python experiments/width_batch_size.py --preset default --out runs/width_batch_size
    python experiments/width_batch_size.py --preset paper --data-dir DIR --out runs/paper  # GPUs and CIFAR-10

`paper` is the paper's ResNet18 / CIFAR-10 grid (13 widths 2..128 x 15 batch sizes 16..1024, 5 seeds, 100
epochs, every metric: 975 models); `DIR` holds `cifar-10-batches-py`. Expect the wide models at moderate batch
size to be fitted, connected and similar (IV-B) and the narrow ones to show barriers (I / III).
"""
import sys

from lljax import cli, experiment

PRESETS = {
    "quick": dict(model="mlp", widths=(8, 32, 128), batch_sizes=(16, 64, 256), lrs=(0.1,), seeds=2, epochs=40,
                  curve_epochs=60, hessian_samples=500),
    "default": dict(model="mlp", widths=(4, 8, 16, 32, 64, 128), batch_sizes=(16, 32, 64, 128, 256, 512),
                    lrs=(0.1,), seeds=3, epochs=60),
    "paper": experiment.PRESETS["paper"],
}

if __name__ == "__main__":
    sys.exit(cli.main(description=__doc__.splitlines()[0], presets=PRESETS))
